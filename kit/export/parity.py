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
from kit.gate import check, verdict
from kit.recipe.schema import ParityGates

PARENT = {"student": "teacher", "onnx": "student", "onnx-int8": "onnx", "tensorrt-fp16": "onnx", "tensorrt-int8": "onnx"}
WORST_N = 5


@dataclass
class Rung:
    name: str
    runtime: str  # what ran it: "torch (cpu)", "ONNX Runtime (CPUExecutionProvider)", ...
    probabilities: np.ndarray


def _decisions(p: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    top = p.argmax(axis=1)
    abstain = p.max(axis=1) < threshold if threshold is not None else np.zeros(len(p), bool)
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
        if teacher is not None and rung is not teacher:
            row["vs_teacher"] = compare(teacher.probabilities, rung.probabilities, paths, threshold)
        rows.append(row)
    result = verdict(checks)
    return {"test_images": len(labels), "operating_threshold": threshold, "rungs": rows, "gate": result,
            "passed": result["passed"]}
