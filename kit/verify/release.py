"""The release verdict, computed once from the KPI gate by ``kit verify`` (and ``kit threshold``) and stored in
``kpi.json`` (``release``): GO, GO AFTER A SHADOW PERIOD, NO-GO, or NO VERDICT when the recipe sets no target.

- NO-GO: a gated target is missed on the value the gate used (``kpi.gate_on``).
- GO AFTER A SHADOW PERIOD: every target is met on its value, but at least one only there: the pessimistic end of its
  interval is past the limit (``point_only``). The certified operating target's confirmation on the test split
  (``verify.threshold.test``) is such a check, so a certificate the test split does not confirm never reads as GO.
- GO: every gated target met, each at the pessimistic end of its interval as well.

Every reader (``kit run``, ``kit verify``, ``kit report``, ``run.log``, the Python results, page one) prints this stored
verdict; none recomputes its own.
"""

from __future__ import annotations

from typing import Any

from kit.verdict import GO, NO_GO, NONE, SHADOW, Check, Verdict, release

TOLERANCE = 1e-12


def point_only(check: Check) -> bool:
    """A gated check met on its value while the pessimistic end of its interval is past the limit."""
    if not check.gated or not check.passed or check.bound is None or (check.gated_on or "point") != "point":
        return False
    return not (check.bound <= check.limit + TOLERANCE if check.op == "<=" else check.bound >= check.limit - TOLERANCE)


def release_verdict(gate: Verdict | dict[str, Any]) -> dict[str, Any]:
    """The run's one verdict from its gate (``kit.verdict.release`` dict)."""
    gate = gate if isinstance(gate, Verdict) else Verdict.model_validate(gate)
    checks = gate.gated
    if not checks:
        return release(NONE)
    failed = [c.target for c in checks if not c.passed]
    if failed:
        return release(NO_GO, failed, [f"missed: {c.target} ({c.description})" for c in checks if not c.passed])
    thin = [c for c in checks if point_only(c)]
    if thin:
        return release(SHADOW, [c.target for c in thin],
                       [f"met on its value only: {c.target} ({c.description}; pessimistic end {c.bound:.4g}, limit {c.op} "
                        f"{c.limit:g})" for c in thin])
    return release(GO)


def describe_release(rel: Any) -> str:
    """The verdict in one line, as every command and the log print it: ``GO AFTER A SHADOW PERIOD (kpi.x, kpi.y)``."""
    return rel.label + (f" ({', '.join(rel.reasons)})" if rel.reasons else "")
