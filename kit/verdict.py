"""One gate for the whole kit: measured values against limits.

A *check* is one value against one limit (or reported without a limit: information, never
gated); a *verdict* is a list of checks and whether every gated one passed. The parity ladder
(``kit export``) and the KPI gate (``kit verify``) both produce verdicts of this shape, so one
printer, one report table and one tolerance serve both.
"""

from __future__ import annotations

from typing import Any

TOLERANCE = 1e-12  # float noise at the limit never decides a release


def check(target: str, measure: str, description: str, value: float | None, limit: float | None, op: str,
          **extra: Any) -> dict[str, Any]:
    """``target``: the recipe field that sets the limit; ``op``: ``<=`` or ``>=``. A gated target
    that could not be measured (``value`` None) is not met."""
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=' (got {op!r})")
    gated = limit is not None
    if not gated:
        passed = None
    elif value is None:
        passed = False
    else:
        passed = bool(value <= limit + TOLERANCE if op == "<=" else value >= limit - TOLERANCE)
    return {"target": target, "measure": measure, "description": description, "value": value,
            "op": op, "limit": limit, "gated": gated, "passed": passed, **extra}


def verdict(checks: list[dict[str, Any]]) -> dict[str, Any]:
    gated = [c for c in checks if c["gated"]]
    return {"passed": all(c["passed"] for c in gated), "checks": checks,
            "failed": [c["target"] for c in gated if not c["passed"]]}


def describe_failures(result: dict[str, Any]) -> str:
    """The failed checks of a verdict in one line: ``target = value (limit op limit)``."""
    return "; ".join(f"{c['target']} = {'unmeasured' if c['value'] is None else format(c['value'], '.6g')} "
                     f"(limit {c['op']} {c['limit']:g})" for c in result["checks"] if c["gated"] and not c["passed"])
