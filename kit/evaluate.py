"""Classification metrics on the line's splits: accuracy, macro-F1, per-class recall, agreement.

Inputs are the clean evaluation tensors produced by ``deploy.preprocess``, so what is measured
here is what the edge runtime will be fed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
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
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"recall": float(recall[i]), "precision": float(precision[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of images on which two models give the same top-1 class."""
    return float(np.mean(np.asarray(pred_a) == np.asarray(pred_b))) if len(pred_a) else 0.0
