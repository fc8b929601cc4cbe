"""The operating confidence threshold: below it a part goes to a person.

Chosen on the validation split as the lowest threshold that meets the recipe's target (the
most automation the target allows), then reported on the test split: automation rate
(coverage), abstain rate, accuracy of the decisions taken alone, and escapes (defective parts
auto-accepted as good).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from kit.errors import ArgumentError, RecipeError
from kit.recipe.schema import ThresholdTarget


def operating_point(probabilities: np.ndarray, labels: np.ndarray, threshold: float | None,
                    ok_index: int | None = None) -> dict[str, Any]:
    conf = probabilities.max(axis=1)
    pred = probabilities.argmax(axis=1)
    accepted = conf >= threshold if threshold is not None else np.ones(len(conf), bool)
    n = len(labels)
    n_acc = int(accepted.sum())
    out: dict[str, Any] = {
        "threshold": threshold, "images": n,
        "automation_rate": n_acc / n if n else 0.0,
        "abstain_rate": 1.0 - n_acc / n if n else 0.0,
        "accepted_accuracy": float((pred[accepted] == labels[accepted]).mean()) if n_acc else None,
        "overall_accuracy": float((pred == labels).mean()) if n else 0.0,
    }
    if ok_index is not None:
        defective = labels != ok_index
        escapes = accepted & defective & (pred == ok_index)
        out["escape_rate"] = float(escapes.sum() / defective.sum()) if defective.any() else 0.0
        out["escapes"] = int(escapes.sum())
        out["defective_parts"] = int(defective.sum())
    return out


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray, points: int = 41) -> list[dict[str, Any]]:
    """Automation rate vs accuracy of accepted decisions as the threshold rises (for the report's chart)."""
    conf = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    thresholds = np.unique(np.quantile(conf, np.linspace(0, 1, points))) if len(conf) else np.array([])
    rows = []
    for t in thresholds:
        accepted = conf >= t
        rows.append({"threshold": float(t), "automation_rate": float(accepted.mean()),
                     "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None})
    return rows


def _meets(point: dict[str, Any], target: ThresholdTarget) -> bool:
    if target.accepted_accuracy is not None:
        return point["accepted_accuracy"] is not None and point["accepted_accuracy"] >= target.accepted_accuracy - 1e-12
    return point["escape_rate"] <= target.max_escape_rate + 1e-12


def ok_class_index(target: ThresholdTarget | None, classes: list[str]) -> int | None:
    """The good-part class: the target's ``ok_class``, else a class literally named ``ok``."""
    name = target.ok_class if target is not None and target.ok_class else ("ok" if "ok" in classes else None)
    if name is None:
        return None
    if name not in classes:
        raise RecipeError(f"verify.threshold.ok_class: {name!r} is not a class of this line ({', '.join(classes)})")
    return classes.index(name)


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: ThresholdTarget,
                     classes: list[str]) -> dict[str, Any]:
    """Scan every distinct confidence (ascending) and keep the first that meets the target."""
    ok_index = ok_class_index(target, classes)
    candidates = np.unique(np.concatenate([[0.0], probabilities.max(axis=1)]))
    for t in candidates:
        point = operating_point(probabilities, labels, float(t), ok_index)
        if point["automation_rate"] > 0 and _meets(point, target):
            return {"threshold": float(t), "reached": True, "val": point}
    # Unreachable even on the most confident images: every part goes to a person.
    return {"threshold": 1.0, "reached": False, "val": operating_point(probabilities, labels, 1.0, ok_index)}


def describe_target(target: ThresholdTarget) -> str:
    if target.accepted_accuracy is not None:
        return f"accepted_accuracy >= {target.accepted_accuracy:g}"
    return f"escape_rate <= {target.max_escape_rate:g} (ok class {target.ok_class!r})"


def parse_target(text: str, ok_class: str | None = None) -> ThresholdTarget:
    """``accepted_accuracy=0.995`` or ``max_escape_rate=0.001`` (with ``ok_class``) -> a target."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in ("accepted_accuracy", "max_escape_rate"):
        raise ArgumentError("target", f"expected accepted_accuracy=VALUE or max_escape_rate=VALUE (got {text!r})")
    try:
        number = float(value)
    except ValueError:
        raise ArgumentError("target", f"{value.strip()!r} is not a number") from None
    try:
        return ThresholdTarget(**{key: number, "ok_class": ok_class})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ArgumentError("target", f"{text}: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}") from None
