"""Temperature scaling (Guo et al., 2017) and expected calibration error.

A single temperature divides the logits; it changes confidences, never the predicted class,
so it is fitted on the validation split and stored in the manifest for every runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deploy.predictor import softmax

ECE_BINS = 15
RELIABILITY_BINS = 10


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature minimising validation NLL (LBFGS on log T, so T stays positive)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean()) if len(labels) else 0.0


def reliability_table(probabilities: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins: count, mean confidence, accuracy (empty bins kept, count 0)."""
    conf = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        rows.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "count": n,
                     "confidence": float(conf[sel].mean()) if n else None,
                     "accuracy": float(correct[sel].mean()) if n else None})
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of images."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"])
                     for r in reliability_table(probabilities, labels, bins) if r["count"]))


def calibration_report(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                       test_labels: np.ndarray, fit: bool = True) -> dict[str, Any]:
    """Temperature (fitted on val, or 1), ECE and NLL before/after on both splits, reliability on test."""
    temperature = fit_temperature(val_logits, val_labels) if fit and len(val_labels) else 1.0
    out: dict[str, Any] = {"temperature": temperature, "fitted_on": "val" if fit else None, "ece_bins": ECE_BINS}
    for split, logits, labels in (("val", val_logits, val_labels), ("test", test_logits, test_labels)):
        before, after = softmax(logits), softmax(logits, temperature)
        out[split] = {"ece_before": expected_calibration_error(before, labels), "ece_after": expected_calibration_error(after, labels),
                      "nll_before": nll(before, labels), "nll_after": nll(after, labels)}
    out["reliability_test_before"] = reliability_table(softmax(test_logits), test_labels)
    out["reliability_test"] = reliability_table(softmax(test_logits, temperature), test_labels)
    return out
