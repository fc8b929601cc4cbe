"""Small ``KpiRecord``s for unit tests of the report: a complete minimal ``kpi.json`` with the sections a test
gives merged over it (dicts merged key by key, anything else replaced)."""

from __future__ import annotations

import copy
from typing import Any

from kit.verify.record import KpiRecord, Operating
from kit.verify.stats import rate


def minimal_kpi() -> dict[str, Any]:
    """The fewest fields ``KpiRecord`` accepts, with empty measurements."""
    return {
        "schema_version": 1, "line": "tiny_line", "run_dir": "runs/tiny_line/r1", "run_id": "r1", "recipe_hash": "0" * 16,
        "created_at": "2026-12-01T00:00:00+00:00", "classes": ["crack", "ok", "scratch"], "test_images": 0, "val_images": 0,
        "deployed_runtime": "onnx", "distill_method": "crld", "models": {}, "calibration": {},
        "operating": {"runtime": "onnx", "temperature": 1.0, "threshold": None, "val": {}, "test": {}},
        "robustness": {}, "latency": {},
        "measured": {k: None for k in ("accuracy", "macro_f1", "teacher_accuracy", "accuracy_gap", "agreement",
                                       "relative_robustness", "heldout_relative_robustness", "latency_p95_ms", "ece",
                                       "automation_rate", "accepted_accuracy")},
        "intervals": {"accuracy": rate(0, 0), "automation_rate": rate(0, 0), "accepted_accuracy": rate(0, 0)},
        "gate": {"passed": True, "checks": [], "failed": []},
    }


def _merge(base: dict[str, Any], parts: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in parts.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def kpi_record(parts: dict[str, Any]) -> KpiRecord:
    return KpiRecord.model_validate(_merge(minimal_kpi(), copy.deepcopy(parts)))


def operating_record(parts: dict[str, Any]) -> Operating:
    return Operating.model_validate(_merge(minimal_kpi()["operating"], copy.deepcopy(parts)))
