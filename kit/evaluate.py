"""Classification metrics on the line's splits: accuracy, macro-F1, per-class recall, agreement.

Inputs are the clean evaluation tensors produced by ``deploy.preprocess``, so what is measured
here is what the edge runtime will be fed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


EVAL_BATCH = 128  # images per forward pass when a run evaluates its models


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Eval-mode logits for a preprocessed NxCxHxW tensor, on the CPU, float32.

    The model is moved to ``device`` here: a checkpoint just loaded sits on the CPU, and a CUDA
    run evaluates it on the GPU (the first CUDA run found that gap)."""
    model.to(device).eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size].to(device, non_blocking=True)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(model(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct top-1 decisions; the one definition every table of the kit uses."""
    return float(np.mean(np.asarray(y_pred) == np.asarray(y_true))) if len(y_true) else 0.0


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (classes absent from both truth and prediction are left out), per class."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support + predicted) > 0
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        # mean recall over the classes that occur: a model that calls everything the majority class scores 1/k
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class": {
            name: {"recall": float(recall[i]), "precision": float(precision[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of images on which two models give the same top-1 class."""
    return float(np.mean(np.asarray(pred_a) == np.asarray(pred_b))) if len(pred_a) else 0.0


def evaluate_models(models: dict[str, nn.Module], inputs: torch.Tensor | dict[str, torch.Tensor], labels: np.ndarray,
                    classes: list[str], device: torch.device) -> dict[str, Any]:
    """``inputs``: one batch for every model, or one per model name (a teacher reading larger images)."""
    def batch(name: str) -> torch.Tensor:
        return inputs[name] if isinstance(inputs, dict) else inputs

    preds = {name: predict_logits(m, batch(name), device).argmax(1).numpy() for name, m in models.items()}
    out: dict[str, Any] = {name: classification_metrics(labels, p, classes) for name, p in preds.items()}
    if "teacher" in preds and "student" in preds:
        out["agreement"] = agreement(preds["teacher"], preds["student"])
        out["accuracy_gap"] = out["teacher"]["accuracy"] - out["student"]["accuracy"]
    out["classes"] = classes
    return out


def run_evaluate_stage(ctx: Any) -> dict[str, Any]:
    """The run's stage: teacher, student and comparison students on the held-back test split ->
    ``metrics.json``; the per-epoch resume state is removed, training being over."""
    import shutil

    from kit.io import read_json, write_json_atomic
    from kit.rundir import METRICS_NAME, TEACHER_CHECK_NAME, comparison_role

    recipe, data, device = ctx.recipe, ctx.data, ctx.setup.device
    test = data.splits["test"]
    student_inputs = test.tensors(data.spec)
    test_inputs = {"student": student_inputs, "teacher": data.teacher_splits["test"].tensors(data.teacher_spec)
                   if data.teacher_spec != data.spec else student_inputs}
    teacher, student = ctx.teacher, ctx.load_role("student")
    metrics = evaluate_models({"teacher": teacher, "student": student}, test_inputs, test.labels, data.classes, device)
    for method in recipe.compare:
        m = evaluate_models({"teacher": teacher, "student": ctx.load_role(comparison_role(method))}, test_inputs,
                            test.labels, data.classes, device)
        metrics.setdefault("compare", {})[method] = {**m["student"], "agreement": m["agreement"], "accuracy_gap": m["accuracy_gap"]}
    metrics["line"] = recipe.line.name
    metrics["distill_method"] = recipe.distill.method
    metrics["split_sizes"] = data.counts
    metrics["recipe_hash"] = ctx.state["recipe_hash"]
    metrics["stage_seconds"] = {k: v.get("seconds") for k, v in ctx.state.get("stages", {}).items()}
    check_path = ctx.run_dir / TEACHER_CHECK_NAME
    metrics["teacher_check"] = read_json(check_path) if check_path.is_file() else None
    metrics["warnings"] = training_warnings(metrics)
    write_json_atomic(ctx.run_dir / METRICS_NAME, metrics)
    for warning in metrics["warnings"]:
        ctx.log(f"warning: {warning}")
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    t, s = metrics["teacher"], metrics["student"]
    ctx.log(f"test: teacher acc {t['accuracy']:.3f} / macro-F1 {t['macro_f1']:.3f}; student acc {s['accuracy']:.3f} / "
            f"macro-F1 {s['macro_f1']:.3f}; agreement {metrics['agreement']:.3f}")
    return {}


def training_warnings(metrics: dict[str, Any]) -> list[str]:
    """What the report must say about the teacher: the teacher check's warnings, and a teacher below the
    student trained alone (``compare: [none]``), which distillation can only pull the student toward."""
    warnings = list((metrics.get("teacher_check") or {}).get("warnings", []))
    alone = metrics.get("compare", {}).get("none")
    teacher = metrics["teacher"]
    if alone is not None and teacher["macro_f1"] < alone["macro_f1"]:
        warnings.append(f"the teacher (test macro-F1 {teacher['macro_f1']:.3f}, accuracy {teacher['accuracy']:.3f}) is "
                        f"below the student trained alone ({alone['macro_f1']:.3f}, {alone['accuracy']:.3f}): distillation "
                        "pulls the student toward a weaker model; strengthen the teacher (epochs, image size, "
                        "teacher.pretrained, teacher.ensemble) or compare against `none` before going live")
    return warnings
