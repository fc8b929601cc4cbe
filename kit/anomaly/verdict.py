"""The one verdict of an anomaly run (``task: anomaly``), computed once by ``kit verify`` and stored in
``verify/anomaly.json`` (``release``), the same ``kit.verdict.Release`` a classifier run stores in ``kpi.json``:

- **NO-GO**: the operating point is not certified, or a measured target is missed.
- **GO AFTER A SHADOW PERIOD**: every measured target is met, but an escape target is unmeasured or not yet
  certified (too few defective parts): the reasons say how many defective parts the shadow period must bring.
- **GO**: every target met and every defect class's escapes certified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kit.anomaly.record import DEFAULT_ESCAPE_LIMIT, AnomalyRecord
from kit.verdict import GO as GO_KIND, NO_GO as NO_GO_KIND, RELEASE_LABELS, SHADOW as SHADOW_KIND, Release, release
from kit.verify.stats import zero_failure_sample_size

GO, SHADOW, NO_GO = RELEASE_LABELS[GO_KIND], RELEASE_LABELS[SHADOW_KIND], RELEASE_LABELS[NO_GO_KIND]
_KINDS = {GO: GO_KIND, SHADOW: SHADOW_KIND, NO_GO: NO_GO_KIND}


@dataclass(frozen=True)
class Recommendation:
    verdict: str
    reasons: list[str]
    tampered: tuple[str, ...] = ()  # files or figures changed after `kit verify` (``kit report``: TAMPERED, exit 4)


def _escape_limit(record: AnomalyRecord) -> float:
    """The gated escape limit (the strictest, when per class), else the default an unmeasured class is sized for."""
    limits = [c.limit for c in record.gate.checks if c.target == "kpi.max_class_escape_rate" and c.limit is not None]
    return min(limits) if limits else DEFAULT_ESCAPE_LIMIT


def recommend(record: AnomalyRecord) -> Recommendation:
    """The verdict from the record's figures (``kit verify`` stores it; readers use ``release_of``)."""
    reasons, waiting = [], []
    cert = record.certificate
    if not cert["certified"]:
        reasons.append(f"the operating point is not certified: {cert['message']}")
    for c in record.gate.gated:
        if c.passed:
            continue
        if c.value is None:
            waiting.append(f"{c.measure} is unmeasured ({c.description}): limit {c.op} {c.limit:g}")
        else:
            reasons.append(f"{c.target} ({c.measure}) = {c.value:.4g}, limit {c.op} {c.limit:g}")
    for name, row in record.escapes.items():
        if row["status"] != "certified":
            have = f"{row.get('k', 0)} escapes of {row.get('n', 0)}" if row["status"] != "unmeasured" else "no validation image"
            waiting.append(f"{name}: escapes <= {row['limit']:.0%} not yet certified ({have}); "
                           f"{row['needed_defective_parts']} defective parts of it with at most {row.get('k', 0)} "
                           "accepted would certify it")
    if not record.escapes:  # a line of good parts alone: no defect class to measure escapes on
        limit = _escape_limit(record)
        needed = max(1, zero_failure_sample_size(limit) or 1)
        waiting.append(f"no defective part in this line's data: escapes are unmeasured; the shadow period must bring at "
                       f"least {needed} defective parts, none accepted, to show escapes <= {limit:.0%} at 95 % confidence")
    if reasons:
        return Recommendation(NO_GO, reasons + waiting)
    if waiting:
        return Recommendation(SHADOW, waiting)
    return Recommendation(GO, [])


def anomaly_release(record: AnomalyRecord) -> dict[str, Any]:
    """``recommend`` as the ``Release`` dict ``anomaly.json`` stores."""
    rec = recommend(record)
    gated = {c.target for c in record.gate.gated if not c.passed}
    return release(_KINDS[rec.verdict], sorted(gated), rec.reasons)


def release_of(record: AnomalyRecord) -> Release:
    """The stored verdict; for a record written before it was stored, the same function's answer."""
    return record.release if record.release is not None else Release.model_validate(anomaly_release(record))
