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
