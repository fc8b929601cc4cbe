"""Device choice and mixed-precision settings, decided once per run."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch

from kit.errors import RecipeError


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision (CPU)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype is torch.float16

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"{self.device} ({name}, AMP {str(self.amp_dtype).removeprefix('torch.')}, channels_last)"
        return f"cpu ({torch.get_num_threads()} threads, float32)"


def resolve_workers(num_workers: int | str, setup: DeviceSetup) -> int:
    if num_workers != "auto":
        return int(num_workers)
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if setup.device.type == "cuda" else 0


def resolve_device(spec: str) -> DeviceSetup:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error, not a fallback."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(f"device: {spec!r} asked for, but torch sees no CUDA device; use device: auto or cpu")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RecipeError(f"device: {spec!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DeviceSetup(device, amp)
    return DeviceSetup(torch.device("cpu"), None)
