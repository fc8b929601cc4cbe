"""The machine that measured: recorded by ``kit verify`` in ``kpi.json`` so the report describes the
hardware behind the latency figures, not the machine that happens to render the report."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measuring_machine(device: Any = None) -> dict[str, str]:
    out = {"cpu": cpu_name(), "cores": str(os.cpu_count()), "system": f"{platform.system()} {platform.release()}",
           "python": platform.python_version(), "host": platform.node()}
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a base dependency
        pass
    return out
