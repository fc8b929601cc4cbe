"""Inference backends behind one interface, one file per backend.

A runtime takes the preprocessed float32 NCHW batch and returns float32 outputs; everything
before (preprocessing) and after (softmax, temperature, threshold, the anomaly rule) lives in
``Predictor``, so backends cannot disagree on anything but arithmetic. ``run`` gives a classifier's
logits; ``run_named`` every output by name in one pass (an anomaly bundle's ``score``, ``anomaly_map``
and ``kind_distance``). Backends also expose ``output_names``, ``output_shapes`` (declared, None for a
dynamic dimension) and ``run_with_heatmap`` (logits and the bundle's in-graph ``heatmap`` output in one
pass, issue 16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from deploy.manifest import Manifest


class Runtime(Protocol):
    name: str  # the bundle format it runs: onnx, onnx-int8, tensorrt-fp16, tensorrt-int8

    def run(self, images: np.ndarray) -> np.ndarray: ...

    def run_named(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> str: ...


RuntimeFactory = Callable[[Path, Manifest, dict], Runtime]
_RUNTIMES: dict[str, RuntimeFactory] = {}
_BUILTINS_LOADED = False


def register_runtime(name: str, factory: RuntimeFactory) -> None:
    if name in _RUNTIMES:
        raise ValueError(f"runtime {name!r} is registered twice")
    _RUNTIMES[name] = factory


def get_runtime(name: str) -> RuntimeFactory:
    _ensure_registered()
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise KeyError(f"unknown runtime {name!r}; choose from {', '.join(list_runtimes())}") from None


def list_runtimes() -> list[str]:
    _ensure_registered()
    return list(_RUNTIMES)


def _ensure_registered() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from deploy.runtimes import onnxruntime_backend, tensorrt_backend

        for backend in (onnxruntime_backend, tensorrt_backend):
            for name, factory in backend.RUNTIMES.items():
                register_runtime(name, factory)
