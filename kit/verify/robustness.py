"""The robustness suite: every scorer on the same corrupted test images, family x severity.

Per scorer it reports accuracy per cell, the mean corruption accuracy, relative robustness
(mean corruption accuracy / clean accuracy), the flip rate (prediction changed versus the same
scorer on the clean image) and agreement with the teacher under the same corruption, overall
and separately for in-recipe and held-out families.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from deploy.preprocess import PreprocessSpec, to_tensor
from kit.views.corruptions import corrupt_images, get_corruption, severity_table
from kit.scorers import Scorer

REFERENCE = "teacher"


def run_suite(scorers: list[Scorer], images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
              families: list[str], coverage: dict[str, str], run_seed: int,
              severities: dict[str, list[float]] | None = None, clean_preds: dict[str, np.ndarray] | None = None,
              log: Callable[[str], None] = lambda m: None,
              decisions: tuple[str, Callable[[np.ndarray], dict[str, Any]]] | None = None,
              images_at: dict[PreprocessSpec, np.ndarray] | None = None) -> dict[str, Any]:
    """``images``: the test split as prepared uint8 NxHxWxC (what views and corruptions act on).

    ``decisions``: (scorer name, logits -> operating figures) for the deployed model: escapes and false
    rejects under every corruption cell (``cells`` in the result), at the operating threshold.
    ``images_at``: the same images prepared for a scorer with its own input size (``Scorer.spec``, a teacher
    reading larger images); it sees each corruption at its own size, with the same values in its own pixels
    (a blur of 2 px is milder on a 256 px input than on a 128 px one: the teacher's rows are not a like-for-like
    comparison of robustness, the students' rows are)."""
    images_at = {spec: images, **(images_at or {})}

    def own(s: Scorer) -> PreprocessSpec:
        return s.input_spec(spec)

    clean_preds = dict(clean_preds or {})
    for s in scorers:
        if s.name not in clean_preds:
            clean_preds[s.name] = s.predict(to_tensor(images_at[own(s)], own(s)))
    rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    for family in families:
        fam = get_corruption(family)
        for severity, value in enumerate(severity_table(family, severities), start=1):
            x = {size: to_tensor(corrupt_images(batch, family, value, run_seed), size)
                 for size, batch in images_at.items() if any(own(s) == size for s in scorers)}
            preds = {}
            for s in scorers:
                if decisions is not None and s.name == decisions[0]:
                    logits = s.logits(x[own(s)])
                    preds[s.name] = logits.argmax(1)
                    cells.append({"family": family, "severity": severity, "value": value, **decisions[1](logits)})
                else:
                    preds[s.name] = s.predict(x[own(s)])
            for s in scorers:
                p = preds[s.name]
                rows.append({
                    "model": s.name, "family": family, "group": fam.group, "coverage": coverage[family],
                    "severity": severity, "value": value,
                    "accuracy": float(np.mean(p == labels)),
                    "flip_rate": float(np.mean(p != clean_preds[s.name])),
                    "teacher_agreement": float(np.mean(p == preds[REFERENCE])) if REFERENCE in preds and s.name != REFERENCE else None,
                })
        log(f"robustness: {family} done")
    summary = {s.name: summarize(rows, s.name, float(np.mean(clean_preds[s.name] == labels))) for s in scorers}
    return {"images": int(len(labels)), "families": {f: {"group": get_corruption(f).group, "coverage": coverage[f],
                                                         "unit": get_corruption(f).unit,
                                                         "severities": severity_table(f, severities)} for f in families},
            "rows": rows, "summary": summary, "decisions": _decision_cells(decisions, cells)}


def _decision_cells(decisions: tuple[str, Any] | None, cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Operating figures per corruption cell, and the cell with the most escapes (rate, then upper bound)."""
    if decisions is None:
        return None
    scored = [c for c in cells if c.get("escape_rate") is not None]
    worst = max(scored, key=lambda c: (c["escape_rate"]["rate"], c["escape_rate"]["high"])) if scored else None
    return {"model": decisions[0], "cells": cells,
            "worst": None if worst is None else {"family": worst["family"], "severity": worst["severity"],
                                                 "escape_rate": worst["escape_rate"]}}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict[str, Any]], model: str, clean_accuracy: float) -> dict[str, Any]:
    mine = [r for r in rows if r["model"] == model]
    out: dict[str, Any] = {"clean_accuracy": clean_accuracy}
    for part, selected in (("all", mine), ("in_recipe", [r for r in mine if r["coverage"] == "in-recipe"]),
                           ("held_out", [r for r in mine if r["coverage"] == "held-out"])):
        acc = _mean([r["accuracy"] for r in selected])
        agreements = [r["teacher_agreement"] for r in selected if r["teacher_agreement"] is not None]
        out[part] = {
            "families": sorted({r["family"] for r in selected}),
            "mean_accuracy": acc,
            "relative_robustness": acc / clean_accuracy if acc is not None and clean_accuracy > 0 else None,
            "flip_rate": _mean([r["flip_rate"] for r in selected]),
            "teacher_agreement": _mean(agreements),
        }
    out["per_family"] = {f: _mean([r["accuracy"] for r in mine if r["family"] == f]) for f in dict.fromkeys(r["family"] for r in mine)}
    return out
