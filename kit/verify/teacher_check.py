"""Is the teacher worth distilling? Checked on the validation split right after the teacher stage.

A teacher trained on a line with mostly good parts can learn to call every part good: its accuracy
equals the good-part share and looks fine, and CRLD's confidence masks then switch most of the
distillation signal off. Balanced accuracy (mean recall over classes) exposes it: calling everything
the majority class scores 1/k. A teacher that recovers less than ``DEGENERATE_GAIN`` of the way from
that chance level to perfect stops the run before any student is trained (``teacher.check: stop``),
with one line naming the remedies. Poor calibration is a warning: the distillation losses read the
teacher's raw probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deploy.predictor import softmax
from kit.errors import KitError
from kit.evaluate import classification_metrics
from kit.io import write_json_atomic
from kit.rundir import TEACHER_CHECK_NAME

DEGENERATE_GAIN = 0.25  # share of the way from chance (1/k) to perfect balanced accuracy a usable teacher covers
POOR_ECE = 0.15  # expected calibration error above which distillation reads misleading teacher confidences


class TeacherError(KitError):
    """The teacher is no better than calling every part the majority class."""


def assess_teacher(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Validation scores of the teacher against the majority-class baseline; ``degenerate`` and warnings."""
    from kit.verify.calibration import expected_calibration_error

    probabilities = softmax(logits)
    m = classification_metrics(labels, probabilities.argmax(1), classes)
    counts = np.bincount(labels, minlength=len(classes))
    majority = int(counts.argmax())
    baseline = classification_metrics(labels, np.full(len(labels), majority), classes)
    chance = 1.0 / max(1, int((counts > 0).sum()))
    floor = chance + DEGENERATE_GAIN * (1.0 - chance)
    ece = expected_calibration_error(probabilities, labels)
    result = {
        "val_images": int(len(labels)), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
        "balanced_accuracy": m["balanced_accuracy"], "ece": ece,
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        "majority_baseline": {"class": classes[majority], "share": float(counts[majority] / max(1, len(labels))),
                              "accuracy": baseline["accuracy"], "macro_f1": baseline["macro_f1"],
                              "balanced_accuracy": baseline["balanced_accuracy"]},
        "balanced_accuracy_floor": floor, "degenerate": bool(m["balanced_accuracy"] < floor), "warnings": [],
    }
    if ece > POOR_ECE:
        result["warnings"].append(f"the teacher is poorly calibrated (validation ECE {ece:.3f} > {POOR_ECE}): its "
                                  "confidences steer CRLD's masks and the KD targets; consider teacher.label_smoothing "
                                  "or more teacher.epochs")
    return result


def degenerate_message(result: dict[str, Any]) -> str:
    base = result["majority_baseline"]
    recalls = ", ".join(f"{c} {r:.2f}" for c, r in result["recall"].items())
    return (f"teacher: validation balanced accuracy {result['balanced_accuracy']:.2f} (accuracy {result['accuracy']:.2f}) "
            f"is no better than calling every part {base['class']!r} ({base['share']:.0%} of the validation images; "
            f"at least {result['balanced_accuracy_floor']:.2f} needed; recall per class: {recalls}); fix the teacher "
            "before distilling: teacher.balance: sampler or loss, a larger data.image_size (small defects vanish in "
            "the resize), more teacher.epochs or another teacher.lr, published weights (teacher.pretrained: true); "
            "teacher.check: warn continues anyway")


def run_teacher_check_stage(ctx: Any) -> dict[str, Any]:
    """The run's stage after the teacher: ``teacher_check.json``, the log, and a stop when degenerate."""
    result = assess_teacher(ctx.teacher_val_logits, ctx.data.splits["val"].labels, ctx.data.classes)
    stop = result["degenerate"] and ctx.recipe.teacher.check == "stop"
    if result["degenerate"] and not stop:
        result["warnings"].insert(0, degenerate_message(result).removeprefix("teacher: "))
    if ctx.is_main:
        write_json_atomic(ctx.run_dir / TEACHER_CHECK_NAME, result)
    base = result["majority_baseline"]
    ctx.log(f"teacher check: validation balanced accuracy {result['balanced_accuracy']:.3f} (floor "
            f"{result['balanced_accuracy_floor']:.3f}), macro-F1 {result['macro_f1']:.3f} (majority class "
            f"{base['class']!r}: {base['macro_f1']:.3f}), ECE {result['ece']:.3f}")
    if stop:
        raise TeacherError(degenerate_message(result))
    for warning in result["warnings"]:
        ctx.log(f"warning: {warning}")
    return {"degenerate": result["degenerate"], "balanced_accuracy": round(result["balanced_accuracy"], 4)}
