"""The quality engineer's box: the deployed model as an appraiser in AIAG attribute-agreement terms (effectiveness,
miss rate, false-alarm rate, each k of n with its two-sided 95 % interval, Cohen's kappa against the reference labels),
the AIAG levels beside them, the parts each level needs, and how AIAG's miss-rate limit compares with the recipe's
escape limit. From ``kpi.json`` ``operating.appraiser`` (``kit.verify.appraiser``)."""

from __future__ import annotations

from typing import Any, Callable

from kit.report.format import format_ci, format_pct
from kit.verify.record import KpiRecord

MEASURES = ("effectiveness", "miss_rate", "false_alarm_rate")


def _escape_limit(kpi: KpiRecord) -> float | None:
    """The recipe's escape limit per defect class (the strictest, when per class)."""
    limits = [c.limit for c in kpi.gate.gated if c.target.startswith("kpi.max_class_escape_rate") and c.limit is not None]
    return min(limits) if limits else None


def quality_box(kpi: KpiRecord, t: Callable[..., str]) -> dict[str, Any] | None:
    box = kpi.operating.appraiser
    if not box:
        return None
    rows = []
    for measure in MEASURES:
        r, (acceptable, marginal, direction) = box[measure], (box["levels"][measure]["acceptable"],
                                                              box["levels"][measure]["marginal"],
                                                              box["levels"][measure]["direction"])
        sign = "≥" if direction == "at least" else "≤"
        needed = (box["parts_needed"].get(measure) or {}) if measure != "effectiveness" else {}
        rows.append({"measure": t("qe_" + measure), "k": r["k"], "n": r["n"], "rate": format_pct(r["rate"]),
                     "ci": format_ci(r, t), "acceptable": f"{sign} {format_pct(acceptable, 0)}",
                     "marginal": f"{sign} {format_pct(marginal, 0)}",
                     "level": t("qe_level_" + r["aiag"]) if r.get("aiag") else "–",
                     "needed": t("qe_needed", n=needed["acceptable"], parts=t("qe_parts_" + needed["parts"]))
                     if needed.get("acceptable") else "–"})
    kappa = box["kappa"]
    kappa_text = "–" if kappa["kappa"] is None else t("qe_kappa_value", kappa=f"{kappa['kappa']:.3f}",
                                                       low=f"{kappa['low']:.3f}", high=f"{kappa['high']:.3f}", n=kappa["n"])
    sentences = [t("qe_intro", n=box["parts"], defective=box["defective"], good=box["good"], ok=box["good_call"],
                   thr="–" if box["threshold"] is None else f"{box['threshold']:.6g}")]
    limit = _escape_limit(kpi)
    miss_acceptable = box["levels"]["miss_rate"]["acceptable"]
    if limit is not None and limit > 0:
        key = "qe_vs_recipe_stricter" if limit > miss_acceptable else "qe_vs_recipe_looser"
        sentences.append(t(key, aiag=format_pct(miss_acceptable, 0), limit=f"{100 * limit:g} %",
                           x=f"{limit / miss_acceptable:.1f}"))
    sentences.append(t("qe_overall", level=t("qe_level_" + box["aiag"]) if box.get("aiag") else "–"))
    return {"rows": rows, "kappa": kappa_text, "sentences": sentences, "reference": box["reference"]}
