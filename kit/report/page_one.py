"""Page one's figures beyond the verdict: the line's own mix, net economics and the paired differences, each as
sentences that say which data mix they use (the conditions that break the model: ``kit.report.breaking``)."""

from __future__ import annotations

from typing import Any, Callable

from kit.report.economics import net_savings
from kit.report.format import format_number, format_pct
from kit.verify.record import KpiRecord


def _range_pct(x: dict[str, Any], digits: int = 1) -> str:
    return f"{format_pct(x['low'], digits)}–{format_pct(x['high'], digits)}"


def production_sentences(kpi: KpiRecord, recipe: Any, t: Callable[..., str]) -> list[str]:
    """The production-mix figures, or the statement that figures use the test mix."""
    op = kpi.operating
    prod = op.production
    if prod is None:
        if op.ok_class is None:
            return []
        return [t("mix_test_only")]
    out = []
    rate = recipe.line.defect_rate
    if isinstance(rate, dict):
        mix = t("sep").join(f"{c} {format_pct(v, 2)}" for c, v in rate.items())
    else:
        mix = format_pct(rate, 2)
    out.append(t("mix_production", mix=mix, ok=op.ok_class, ok_share=format_pct(prod["weights"][op.ok_class], 2)))
    auto, esc, fr = prod["automation_rate"], prod["escapes_per_million"], prod["false_rejects_per_million"]
    if auto.get("rate") is None:
        return out + [t("mix_missing_class", classes=", ".join(auto.get("missing_classes", [])))]
    out.append(t("mix_figures", auto=format_pct(auto["rate"]), auto_range=_range_pct(auto),
                 esc=format_number(esc["rate"], 0), esc_low=format_number(esc["low"], 0), esc_high=format_number(esc["high"], 0),
                 fr=format_number(fr["rate"], 0), fr_low=format_number(fr["low"], 0), fr_high=format_number(fr["high"], 0)))
    return out


def net_context(kpi: KpiRecord, recipe: Any, t: Callable[..., str]) -> dict[str, Any] | None:
    """Net savings per month (production mix where the recipe gives one, else the test mix) and its sentences."""
    op = kpi.operating
    production = op.production
    if production is not None and production["automation_rate"].get("rate") is not None:
        figures, mix = {k: production[k] for k in ("automation_rate", "escapes_per_part", "false_rejects_per_part")}, "production"
    else:
        figures, mix = op.test_mix, "test"
    net = net_savings(figures, recipe.economics, mix)
    if net is None:
        return None
    cur = net["currency"]
    p = net["point"]
    lines = [t("net_line", net=format_number(p["net"], 0), cur=cur, low=format_number(net["low"]["net"], 0),
               high=format_number(net["high"]["net"], 0), mix=t("mix_name_" + mix)),
             t("net_parts", labour=format_number(p["labour_today"], 0), review=format_number(p["review_labour"], 0),
               escapes=format_number(p["escapes"], 1), esc_cost=format_number(p["escape_cost"], 0),
               rejects=format_number(p["false_rejects"], 1), fr_cost=format_number(p["false_reject_cost"], 0), cur=cur,
               parts=format_number(net["parts_per_month"], 0))]
    if net["unpriced"]:
        lines.append(t("net_unpriced", fields=t("sep").join(f"economics.{f}" for f in net["unpriced"])))
    lines.append(t("net_assumption"))
    return {**net, "lines": lines}


def difference_rows(kpi: KpiRecord, labels: dict[str, str], t: Callable[..., str]) -> list[dict[str, str]]:
    """Paired differences in test accuracy (a - b), each with its bootstrap interval, in words."""
    rows = []
    for d in kpi.differences:
        if d["diff"] is None:
            continue
        pts = 100 * d["diff"]
        word = "diff_better" if pts > 0.05 else "diff_worse" if pts < -0.05 else "diff_same"
        rows.append({"a": labels.get(d["a"], d["a"]), "b": labels.get(d["b"], d["b"]),
                     "text": t(word, pts=f"{abs(pts):.1f}"),
                     "ci": t("diff_ci", low=f"{100 * d['low']:+.1f}", high=f"{100 * d['high']:+.1f}", n=d["n"]),
                     "significant": d["low"] > 0 or d["high"] < 0})
    return rows
