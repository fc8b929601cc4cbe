"""The parity ladder: the same test images through every rung, compared at decision level.

teacher (torch) -> student (torch) -> ONNX FP32 -> ONNX INT8 / TensorRT FP16 / TensorRT INT8.
Each rung is compared with its parent (student <- teacher, ONNX FP32 <- student, every other
artefact <- ONNX FP32) and with the teacher: top-1 agreement, max and mean |delta p|, decisions
flipped at the operating threshold, and the images that moved most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kit.evaluate import accuracy
from kit.recipe.schema import ParityGates
from kit.verdict import check, verdict

PARENT = {"student": "teacher", "onnx": "student", "onnx-int8": "onnx", "tensorrt-fp16": "onnx", "tensorrt-int8": "onnx"}
WORST_N = 5


@dataclass
class Rung:
    name: str
    runtime: str  # what ran it: "torch (cpu)", "ONNX Runtime (CPUExecutionProvider)", ...
    probabilities: np.ndarray
    heatmaps: np.ndarray | None = None  # the in-graph heatmap output (N x classes x h x w), where the rung has it


def _decisions(p: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    top = p.argmax(axis=1)
    # float64: numpy 2 would compare float32 confidences with a Python float in float32
    abstain = p.max(axis=1).astype(np.float64) < threshold if threshold is not None else np.zeros(len(p), bool)
    return top, abstain


def compare(a: np.ndarray, b: np.ndarray, paths: list[str], threshold: float | None) -> dict[str, Any]:
    """How far rung ``b`` moved from rung ``a`` on the same images."""
    delta = np.abs(a - b).max(axis=1)
    top_a, abstain_a = _decisions(a, threshold)
    top_b, abstain_b = _decisions(b, threshold)
    flipped = (top_a != top_b) | (abstain_a != abstain_b)
    worst = np.argsort(-delta, kind="stable")[:WORST_N]
    return {
        "agreement": float(np.mean(top_a == top_b)),
        "max_abs_delta_p": float(delta.max()) if len(delta) else 0.0,
        "mean_abs_delta_p": float(np.abs(a - b).mean()) if len(delta) else 0.0,
        "decisions_flipped": int(flipped.sum()),
        "worst": [{"path": paths[i], "delta_p": float(delta[i])} for i in worst],
    }


def compare_heatmaps(a: np.ndarray, b: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    """How far rung ``b``'s heatmaps moved from rung ``a``'s, for the class rung ``a`` predicted: each map
    min-max normalised to [0, 1] as ``deploy.heatmap`` shows it, then max / mean |delta| and the share of
    images whose peak cell is the same."""
    rows = np.arange(len(classes))
    a, b = (m[rows, classes].reshape(len(classes), -1).astype(np.float64) for m in (a, b))
    a, b = (_unit(m) for m in (a, b))
    delta = np.abs(a - b)
    return {"peak_agreement": float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else 1.0,
            "max_abs_delta": float(delta.max()) if delta.size else 0.0,
            "mean_abs_delta": float(delta.mean()) if delta.size else 0.0}


def _unit(maps: np.ndarray) -> np.ndarray:
    low, span = maps.min(1, keepdims=True), np.ptp(maps, axis=1, keepdims=True)
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


# rung -> the recipe's ``export.parity`` limits it is held to: (field, measure, op, description)
GATES: dict[str, list[tuple[str, str, str, str]]] = {
    "onnx": [("onnx_min_agreement", "agreement", ">=", "ONNX FP32 top-1 agreement with the torch student"),
             ("onnx_max_abs_prob_delta", "max_abs_delta_p", "<=", "ONNX FP32 max |delta p| against the torch student")],
    "onnx-int8": [("int8_min_agreement", "agreement", ">=", "ONNX INT8 top-1 agreement with ONNX FP32")],
    "tensorrt-fp16": [("tensorrt_fp16_min_agreement", "agreement", ">=", "TensorRT FP16 top-1 agreement with ONNX FP32")],
    "tensorrt-int8": [("tensorrt_int8_min_agreement", "agreement", ">=", "TensorRT INT8 top-1 agreement with ONNX FP32")],
}


def gate_checks(name: str, vs_parent: dict[str, Any], gates: ParityGates) -> list[dict[str, Any]]:
    return [check(f"export.parity.{field}", measure, description, vs_parent[measure], getattr(gates, field), op, rung=name)
            for field, measure, op, description in GATES.get(name, [])]


# rung -> the heatmap limits it is held to (same shape as GATES); a rung with no field here is reported, not gated.
HEATMAP_GATES: dict[str, list[tuple[str, str, str, str]]] = {
    "onnx": [("heatmap_onnx_max_abs_delta", "max_abs_delta", "<=", "ONNX FP32 heatmap max |delta| against the torch student")],
    "onnx-int8": [("heatmap_int8_max_mean_abs_delta", "mean_abs_delta", "<=", "ONNX INT8 heatmap mean |delta| against ONNX FP32")],
}


def heatmap_checks(name: str, vs_parent: dict[str, Any], gates: ParityGates) -> list[dict[str, Any]]:
    return [check(f"export.parity.{field}", measure, description, vs_parent[measure], getattr(gates, field, None), op, rung=name)
            for field, measure, op, description in HEATMAP_GATES.get(name, [])]


def run_ladder(rungs: list[Rung], labels: np.ndarray, paths: list[str], threshold: float | None,
               gates: ParityGates) -> dict[str, Any]:
    by_name = {r.name: r for r in rungs}
    teacher = by_name.get("teacher")
    rows, checks = [], []
    for rung in rungs:
        row: dict[str, Any] = {"rung": rung.name, "runtime": rung.runtime,
                               "accuracy": accuracy(labels, rung.probabilities.argmax(1))}
        parent = PARENT.get(rung.name)
        if parent in by_name:
            row["parent"] = parent
            row["vs_parent"] = compare(by_name[parent].probabilities, rung.probabilities, paths, threshold)
            checks += gate_checks(rung.name, row["vs_parent"], gates)
            if rung.heatmaps is not None and by_name[parent].heatmaps is not None:
                row["heatmap_vs_parent"] = compare_heatmaps(by_name[parent].heatmaps, rung.heatmaps,
                                                            by_name[parent].probabilities.argmax(1))
                checks += heatmap_checks(rung.name, row["heatmap_vs_parent"], gates)
        if teacher is not None and rung is not teacher:
            row["vs_teacher"] = compare(teacher.probabilities, rung.probabilities, paths, threshold)
        rows.append(row)
    result = verdict(checks)
    return {"test_images": len(labels), "operating_threshold": threshold, "rungs": rows, "gate": result,
            "passed": result["passed"]}
