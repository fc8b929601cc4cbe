"""One gate for the whole kit: measured values against limits.

A *check* is one value against one limit (or reported without a limit: information, never
gated); a *verdict* is a list of checks and whether every gated one passed. The parity ladder
(``kit export``) and the KPI gate (``kit verify``) both produce verdicts of this shape, so one
printer, one report table and one tolerance serve both.

``check`` and ``verdict`` build plain dicts (what ``parity.json`` and ``kpi.json`` hold); ``Check`` and
``Verdict`` are their typed form, for readers: ``Verdict.model_validate(d)`` reads one, ``to_dict()``
gives back exactly the dict it was read from.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator

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


def _number(value: Any) -> Any:
    """A measured figure as it was written: an int stays an int and a float a float (pydantic would turn
    ``1`` into ``1.0`` and change the file); a bool or a string is not a number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"expected a number, got {value!r}")
    return value


# A number kept exactly as written (int or float); records built by ``kit verify`` dump back to the same JSON.
Number = Annotated[float, PlainValidator(_number), PlainSerializer(lambda v: v)]


class Record(BaseModel):
    """Base of the kit's typed file records: unknown keys refused, and ``to_dict()`` writes back the keys that were
    read or set (a key the file did not have is not invented, so an old file stays as it was)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_unset=True, by_alias=True)


class Check(Record):
    """One value against one limit (``check``); ``point``/``bound``/``gated_on``: the KPI gate's interval
    (``kit.verify.gate``); ``rung``: the parity ladder's rung (``kit.export.parity``)."""

    target: str
    measure: str
    description: str
    value: Optional[Number]
    op: Literal["<=", ">="]
    limit: Optional[Number]
    gated: bool
    passed: Optional[bool]  # None: reported without a limit
    point: Optional[Number] = None
    bound: Optional[Number] = None
    gated_on: Optional[Literal["point", "bound"]] = None
    rung: Optional[str] = None


class Verdict(Record):
    """Checks and whether every gated one passed (``verdict``); ``gate_on``: the KPI gate's ``kpi.gate_on``."""

    passed: bool
    checks: list[Check]
    failed: list[str]
    gate_on: Optional[Literal["point", "bound"]] = None

    @property
    def gated(self) -> list[Check]:
        return [c for c in self.checks if c.gated]
