"""Escapes and false rejects per class: what a line pays for the model's mistakes.

An *escape* is a defective part the model accepts (confidence at or above the operating
threshold) as the good-part class: it ships. A *false reject* is a good part the model accepts
as a defect: it is scrapped or re-inspected. Parts below the threshold go to a person and are
neither. Each rate carries its k, n and a two-sided Clopper-Pearson interval, in ppm too, so a
"0 escapes" on 30 test parts reads as what it is: at most about 11.6 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kit.verify.stats import ppm, rate
from kit.verify.threshold import accepted_mask


def escape_table(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], ok_index: int | None,
                 threshold: float | None, confidence: float = 0.95, floors: np.ndarray | None = None) -> dict[str, Any] | None:
    """Per class: escapes (defect classes) or false rejects (the ok class); None for a line without an
    ok class. ``worst`` names the defect class with the highest escape rate."""
    if ok_index is None:
        return None
    pred = probabilities.argmax(axis=1)
    accepted = accepted_mask(probabilities, threshold, floors)
    rows: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(classes):
        members = labels == i
        if i == ok_index:
            k = int((members & accepted & (pred != ok_index)).sum())
            kind = "false_reject"
        else:
            k = int((members & accepted & (pred == ok_index)).sum())
            kind = "escape"
        r = rate(k, int(members.sum()), confidence)
        rows[name] = {"kind": kind, **r, "ppm": ppm(r["rate"]), "ppm_high": ppm(r["high"])}
    defects = {c: v for c, v in rows.items() if v["kind"] == "escape" and v["n"] > 0}
    worst = max(defects, key=lambda c: (defects[c]["rate"], defects[c]["high"])) if defects else None
    return {"ok_class": classes[ok_index], "threshold": threshold, "classes": rows, "worst": worst,
            "worst_rate": defects[worst]["rate"] if worst else None}
