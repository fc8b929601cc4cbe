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


def gate_checks(name: str, vs_parent: dict[str, Any], gates: ParityGates) -> list[dict[str, Any]]:
    checks: list[tuple[str, float, float, str]] = []
    if name == "onnx":
        checks += [("agreement vs student", vs_parent["agreement"], gates.onnx_min_agreement, ">="),
                   ("max |delta p| vs student", vs_parent["max_abs_delta_p"], gates.onnx_max_abs_prob_delta, "<=")]
    elif name == "onnx-int8":
        checks.append(("agreement vs ONNX FP32", vs_parent["agreement"], gates.int8_min_agreement, ">="))
    elif name == "tensorrt-fp16":
        checks.append(("agreement vs ONNX FP32", vs_parent["agreement"], gates.tensorrt_fp16_min_agreement, ">="))
    elif name == "tensorrt-int8":
        checks.append(("agreement vs ONNX FP32", vs_parent["agreement"], gates.tensorrt_int8_min_agreement, ">="))
    return [
        {"rung": name, "check": label, "value": value, "limit": limit, "op": op,
         "passed": bool(value >= limit if op == ">=" else value <= limit)}
        for label, value, limit, op in checks
    ]


def run_ladder(rungs: list[Rung], labels: np.ndarray, paths: list[str], threshold: float | None,
               gates: ParityGates) -> dict[str, Any]:
    by_name = {r.name: r for r in rungs}
    teacher = by_name.get("teacher")
    rows, checks = [], []
    for rung in rungs:
        row: dict[str, Any] = {"rung": rung.name, "runtime": rung.runtime,
                               "accuracy": float(np.mean(rung.probabilities.argmax(1) == labels))}
        parent = PARENT.get(rung.name)
        if parent in by_name:
            row["parent"] = parent
            row["vs_parent"] = compare(by_name[parent].probabilities, rung.probabilities, paths, threshold)
            checks += gate_checks(rung.name, row["vs_parent"], gates)
        if teacher is not None and rung is not teacher:
            row["vs_teacher"] = compare(teacher.probabilities, rung.probabilities, paths, threshold)
        rows.append(row)
    return {"test_images": len(labels), "operating_threshold": threshold, "rungs": rows, "gates": checks,
            "passed": all(c["passed"] for c in checks)}
