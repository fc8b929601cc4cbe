"""Figures in the line's own mix of parts, not the test split's.

A test split is usually rich in defects (so each defect class can be measured at all); a line
produces a few percent. Rates that depend on the mix (automation, escapes and false rejects per
part *produced*) are re-weighted from per-class rates measured on test:

    figure = sum over classes c of  w_c * rate_c

with ``w_c`` the class's share of production: ``line.defect_rate`` (one number, spread over the
defect classes in their test proportions, or one number per defect class) and the good-part class
taking the rest. Per-class rates do not depend on the mix; only their weights do.

Interval: each class's rate has its own 95 % Clopper-Pearson interval from its own test parts;
the bounds given are ``sum w_c * low_c`` and ``sum w_c * high_c``, every class at its own
pessimistic (or optimistic) end at once. That is conservative (wider than a joint 95 %
interval) and never collapses to zero width when a class had no event, which a bootstrap would.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from kit.verify.stats import ppm, rate
from kit.verify.escapes import escape_table
from kit.verify.threshold import accepted_mask

METHOD = "per-class 95 % Clopper-Pearson bounds, weighted by the production mix (conservative)"


def class_weights(classes: list[str], counts: Mapping[str, int], ok_class: str,
                  defect_rate: float | Mapping[str, float]) -> dict[str, float]:
    """Production share of every class. One number: spread over the defect classes in their test proportions."""
    defects = [c for c in classes if c != ok_class]
    if isinstance(defect_rate, Mapping):
        weights = {c: float(defect_rate.get(c, 0.0)) for c in defects}
    else:
        total = sum(counts[c] for c in defects)
        weights = {c: float(defect_rate) * (counts[c] / total if total else 1.0 / len(defects)) for c in defects}
    weights[ok_class] = 1.0 - sum(weights.values())
    return {c: weights[c] for c in classes}


def _weighted(weights: Mapping[str, float], rows: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    used = [c for c in rows if weights.get(c, 0.0) > 0]
    missing = [c for c in used if rows[c]["n"] == 0]
    if missing:  # a class the line produces but the test split does not hold: no figure, say which
        return {"rate": None, "low": None, "high": None, "missing_classes": missing}
    return {"rate": sum(weights[c] * rows[c]["rate"] for c in used),
            "low": sum(weights[c] * rows[c]["low"] for c in used),
            "high": sum(weights[c] * rows[c]["high"] for c in used)}


def production_figures(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], ok_index: int | None,
                       threshold: float | None, floors: np.ndarray | None,
                       defect_rate: float | Mapping[str, float] | None) -> dict[str, Any] | None:
    """Automation rate, escapes and false rejects per million parts produced, in the production mix;
    None without ``line.defect_rate`` or without a good-part class (the report then says figures use
    the test mix)."""
    if defect_rate is None or ok_index is None:
        return None
    ok = classes[ok_index]
    accepted = accepted_mask(probabilities, threshold, floors)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    weights = class_weights(classes, counts, ok, defect_rate)
    auto = {c: rate(int(((labels == i) & accepted).sum()), counts[c]) for i, c in enumerate(classes)}
    # per-class escapes and false rejects are the escapes table's own counts (one definition of each)
    table = escape_table(probabilities, labels, classes, ok_index, threshold, floors=floors)["classes"]
    esc = {c: row for c, row in table.items() if row["kind"] == "escape"}
    fr = {c: row for c, row in table.items() if row["kind"] == "false_reject"}
    escapes, false_rejects = _weighted(weights, esc), _weighted(weights, fr)
    per_million = {k: (None if v is None else ppm(v)) for k, v in escapes.items() if k in ("rate", "low", "high")}
    fr_per_million = {k: (None if v is None else ppm(v)) for k, v in false_rejects.items() if k in ("rate", "low", "high")}
    return {
        "defect_rate": defect_rate, "weights": weights, "method": METHOD,
        "automation_rate": _weighted(weights, auto),
        "escapes_per_part": escapes, "false_rejects_per_part": false_rejects,
        "escapes_per_million": per_million, "false_rejects_per_million": fr_per_million,
        "per_class": {c: {"weight": weights[c], "automation_rate": auto[c], **({"escape_rate": esc[c]} if c in esc else {}),
                          **({"false_reject_rate": fr[c]} if c in fr else {})} for c in classes},
    }


def split_mix_figures(point: dict[str, Any]) -> dict[str, Any] | None:
    """The same per-part figures on the test mix (what the report uses without ``line.defect_rate``):
    escapes and false rejects per test part, each with its Clopper-Pearson interval."""
    if "escapes" not in point:
        return None
    n = point["images"]
    return {"automation_rate": rate(point["accepted"], n), "escapes_per_part": rate(point["escapes"], n),
            "false_rejects_per_part": rate(point["false_rejects"], n)}
