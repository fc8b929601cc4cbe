"""Automation rate -> hours of manual inspection saved and their cost, with every assumption shown."""

from __future__ import annotations

from typing import Any

from kit.recipe.schema import EconomicsConfig


def savings(automation_rate: float, econ: EconomicsConfig) -> dict[str, Any]:
    """Per day and per month. Missing inputs are listed instead of guessed."""
    missing = [f for f in ("parts_per_day", "manual_seconds_per_part", "labour_cost_per_hour") if getattr(econ, f) is None]
    out: dict[str, Any] = {
        "automation_rate": automation_rate, "currency": econ.currency, "missing": missing, "computed": not missing,
        "assumptions": {"parts_per_day": econ.parts_per_day, "manual_seconds_per_part": econ.manual_seconds_per_part,
                        "labour_cost_per_hour": econ.labour_cost_per_hour, "working_days_per_month": econ.working_days_per_month,
                        "escape_cost": econ.escape_cost, "false_reject_cost": econ.false_reject_cost,
                        "currency": econ.currency},
    }
    if missing:
        return out
    assert econ.parts_per_day is not None and econ.manual_seconds_per_part is not None and econ.labour_cost_per_hour is not None
    automated_per_day = econ.parts_per_day * automation_rate
    hours_per_day = automated_per_day * econ.manual_seconds_per_part / 3600.0
    hours_per_month = hours_per_day * econ.working_days_per_month
    out.update(automated_parts_per_day=automated_per_day, manual_parts_per_day=econ.parts_per_day - automated_per_day,
               hours_saved_per_day=hours_per_day, hours_saved_per_month=hours_per_month,
               cost_saved_per_month=hours_per_month * econ.labour_cost_per_hour)
    return out


def net_savings(figures: dict[str, Any] | None, econ: EconomicsConfig, mix: str) -> dict[str, Any] | None:
    """Net savings per month against inspecting every part by hand, with its interval carried through.

    labour today (every part by hand) - labour still needed (parts the model sends to a person)
    - expected escapes x ``escape_cost`` - expected false rejects x ``false_reject_cost``.
    ``figures``: automation rate, escapes and false rejects per part, each with low/high (the
    production mix when ``line.defect_rate`` is set, else the test mix: ``mix`` says which). The low
    end takes the low automation and the high escape and false-reject rates together, the high end
    the opposite, so the range is conservative. People are assumed to make no inspection mistakes;
    costs left unset count as zero and are listed in ``unpriced``. None when the labour inputs are missing.
    """
    if figures is None or any(getattr(econ, f) is None for f in ("parts_per_day", "manual_seconds_per_part", "labour_cost_per_hour")):
        return None
    assert econ.parts_per_day is not None and econ.manual_seconds_per_part is not None and econ.labour_cost_per_hour is not None
    parts = econ.parts_per_day * econ.working_days_per_month
    per_part_labour = econ.manual_seconds_per_part / 3600.0 * econ.labour_cost_per_hour
    escape_cost, fr_cost = econ.escape_cost or 0.0, econ.false_reject_cost or 0.0

    def net(auto: float, esc: float, fr: float) -> dict[str, float]:
        labour_today = parts * per_part_labour
        review = parts * (1.0 - auto) * per_part_labour
        escapes, rejects = parts * esc, parts * fr
        return {"labour_today": labour_today, "review_labour": review, "escapes": escapes, "false_rejects": rejects,
                "escape_cost": escapes * escape_cost, "false_reject_cost": rejects * fr_cost,
                "net": labour_today - review - escapes * escape_cost - rejects * fr_cost}

    a, e, f = figures["automation_rate"], figures["escapes_per_part"], figures["false_rejects_per_part"]
    if any(x.get("rate") is None for x in (a, e, f)):
        return None
    return {"mix": mix, "parts_per_month": parts, "currency": econ.currency, "point": net(a["rate"], e["rate"], f["rate"]),
            "low": net(a["low"], e["high"], f["high"]), "high": net(a["high"], e["low"], f["low"]),
            "unpriced": [k for k in ("escape_cost", "false_reject_cost") if getattr(econ, k) is None]}
