"""How the report writes numbers: percentages, counts, intervals, recipe values (one place, both languages)."""

from __future__ import annotations

from typing import Any, Callable


def format_pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def format_number(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def format_exact(v: Any) -> str:
    """A recipe value exactly as the recipe has it (1.5 stays 1.5, 115200.0 is 115,200): no rounding, no
    exponent. Assumptions are printed with this, so what the page says is what the figures used."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{int(v):,}" if float(v).is_integer() else f"{v:,}"


def level(interval: dict[str, Any]) -> str:
    return f"{100 * interval.get('confidence', 0.95):g} %"


def format_ci(interval: dict[str, Any], t: Callable[..., str]) -> str:
    """``95 % CI 92.4–99.2 %, n = 132`` (two-sided Clopper-Pearson, as ``kit verify`` computed it)."""
    return t("ci", level=level(interval), low=f"{100 * interval['low']:.1f}", high=format_pct(interval["high"]), n=interval["n"])


def format_rate_ci(interval: dict[str, Any], t: Callable[..., str]) -> str:
    """``97.0 % (95 % CI 92.4–99.2 %, n = 132)``."""
    return t("rate_ci", rate=format_pct(interval["rate"]), ci=format_ci(interval, t))
