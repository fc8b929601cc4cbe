"""What a shadow period must show before the model decides alone, and the assumptions its length rests on.

Exit criteria (page one, with GO AFTER A SHADOW PERIOD):

- per defect class, the defective parts to inspect with no escape, in the line's production mix (parts produced, and
  hours at ``line.parts_per_minute``), and the good parts with no false reject;
- at least one full production day (``economics.parts_per_day``), every shift, every lighting state of the line, so
  a few hours of one shift never stand for the line;
- an escape during the shadow period stops it: NO-GO until the model is retrained with the escaped parts and certified
  again.

The counts are zero-failure sample sizes at the gate's bound (the upper end of a two-sided 95 % interval: one-sided
97.5 %), so a clean shadow period clears exactly the bound the test split could not.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from kit.report.format import format_number, format_pct
from kit.report.recommendation import other_shadow_needs
from kit.verify.record import KpiRecord
from kit.verify.stats import zero_failure_sample_size

GATE_BOUND_CONFIDENCE = 0.975  # one-sided level of the upper end of a two-sided 95 % interval


def _class_limits(kpi: KpiRecord) -> dict[str, float]:
    """Each defect class's gated escape limit (one limit for all, or one per class)."""
    ok = kpi.operating.ok_class
    classes = [c for c in (kpi.operating.escapes_test or {}).get("classes", {}) if c != ok]
    out: dict[str, float] = {}
    for c in kpi.gate.gated:
        if c.target == "kpi.max_class_escape_rate" and c.limit is not None:
            out.update({cls: c.limit for cls in classes if cls not in out})
        elif c.target.startswith("kpi.max_class_escape_rate[") and c.limit is not None:
            out[c.target[c.target.index("[") + 1:-1]] = c.limit
    return out


def exit_criteria(kpi: KpiRecord, recipe: Any, t: Callable[..., str]) -> list[str]:
    """The shadow period's exit criteria in sentences (empty unless the verdict is GO AFTER A SHADOW PERIOD)."""
    if kpi.verdict.verdict != "shadow":
        return []
    weights = (kpi.operating.production or {}).get("weights") or {}
    per_minute = recipe.line.parts_per_minute
    out, longest = other_shadow_needs(kpi, t), 0
    groups: dict[tuple[Any, ...], list[str]] = {}  # classes with the same limit and share read as one sentence
    for cls, limit in _class_limits(kpi).items():
        groups.setdefault((limit, weights.get(cls)), []).append(cls)
    for (limit, share), classes in groups.items():
        needed = zero_failure_sample_size(limit, GATE_BOUND_CONFIDENCE) if limit > 0 else None
        cls = t("sep").join(classes) if len(classes) == 1 else t("exit_each", classes=t("sep").join(classes))
        if needed is None:
            out.append(t("shadow_zero_limit", cls=cls))
            continue
        if share:
            parts = math.ceil(needed / share)
            longest = max(longest, parts)
            hours = t("exit_hours", hours=format_number(parts / per_minute / 60, 1)) if per_minute else ""
            out.append(t("exit_class_mix", n=needed, cls=cls, limit=f"{100 * limit:g} %", share=format_pct(share, 2),
                         parts=f"{parts:,}", hours=hours))
        else:
            out.append(t("exit_class", n=needed, cls=cls, limit=f"{100 * limit:g} %"))
    fr = next((c for c in kpi.gate.gated if c.target == "kpi.max_false_reject_rate" and c.limit), None)
    if fr is not None and kpi.operating.ok_class:
        out.append(t("exit_good", n=zero_failure_sample_size(fr.limit, GATE_BOUND_CONFIDENCE), ok=kpi.operating.ok_class,
                     limit=f"{100 * fr.limit:g} %"))
    per_day = recipe.economics.parts_per_day
    days = max(1, math.ceil(longest / per_day)) if per_day else 1
    out.append(t("exit_duration", days=days, per_day=format_number(per_day, 0)))
    out.append(t("exit_escape", ok=kpi.operating.ok_class or "–"))
    return out


def mix_assumption(kpi: KpiRecord, recipe: Any, t: Callable[..., str]) -> str | None:
    """The assumption a single ``line.defect_rate`` hides: how it is split over the defect classes."""
    rate, production = recipe.line.defect_rate, kpi.operating.production
    if rate is None or isinstance(rate, dict) or not production:
        return None
    ok = kpi.operating.ok_class
    shares = {c: w for c, w in production["weights"].items() if c != ok}
    equal = len({round(w, 12) for w in shares.values()}) == 1
    split = t("sep").join(f"{c} {format_pct(w, 2)}" for c, w in shares.items())
    return t("mix_assumed_equal" if equal else "mix_assumed_test", rate=format_pct(rate, 2), n=len(shares), split=split)


def net_downside(net: dict[str, Any] | None, t: Callable[..., str]) -> str | None:
    """When the pessimistic end of the net savings is a loss: said next to the headline, not in small print."""
    if not net or net["low"]["net"] >= 0:
        return None
    gain, loss = net["point"]["net"], -net["low"]["net"]
    times = t("net_times", x=format_number(loss / gain, 0)) if gain > 0 else ""
    return t("net_downside", loss=format_number(loss, 0), cur=net["currency"], times=times)
