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


# -- the release verdict: one answer for a script, a log reader and a manager -----------------------------

GO, SHADOW, NO_GO, NONE = "go", "shadow", "no_go", "none"
RELEASE_LABELS = {GO: "GO", SHADOW: "GO AFTER A SHADOW PERIOD", NO_GO: "NO-GO", NONE: "NO VERDICT"}
# The exit status of `kit run`, `kit verify` and `kit report` (docs/verify-and-report.md): 0 the model may decide alone
# (or the recipe sets no target), 1 NO-GO (and every user error), 3 only beside the inspectors for now, 4 the run's
# files changed after `kit verify` (the report says which). 2 is left to usage errors and `deploy monitor`'s drift.
EXIT_CODES = {GO: 0, NONE: 0, NO_GO: 1, SHADOW: 3}
TAMPERED_EXIT = 4


class Release(Record):
    """The one release verdict of a run, computed once by ``kit verify`` (``kit.verify.release`` for classifier runs,
    ``kit.anomaly.verdict`` for anomaly runs) and stored in its record; every command, the log and page one print it.

    ``reasons``: the gate targets behind a NO-GO (missed) or a shadow period (met on the value only, or not confirmed
    on test); ``notes``: the same in words (the anomaly page prints them)."""

    verdict: Literal["go", "shadow", "no_go", "none"]
    label: str
    reasons: list[str] = []
    notes: list[str] = []

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def release(kind: str, reasons: list[str] | None = None, notes: list[str] | None = None) -> dict[str, Any]:
    """A ``Release`` as the dict a record stores."""
    return {"verdict": kind, "label": RELEASE_LABELS[kind], "reasons": list(reasons or []), "notes": list(notes or [])}
