"""Verification of the exported bundle: accuracy and agreement, robustness, calibration,
operating threshold, latency, and the KPI gate (``kit verify`` writes ``verify/kpi.json``).

The public names load lazily: ``kit shadow`` uses the statistics (``kit.verify.stats``,
``kit.verify.threshold``) without importing torch, timm and albumentations, which ``kit.verify.kpi`` needs."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VerifyResult": "kit.verify.kpi", "retune_threshold": "kit.verify.kpi", "verify_run": "kit.verify.kpi",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
