"""A model change, from ``POST /v1/reload`` or SIGHUP, and its audit record: who asked (the key's name, ``anonymous``
without ``--tokens``, ``SIGHUP``), from which address, old and new model id, line and classes, ``force``, the result.
Every attempt is audited, the refused ones too (``--no-reload``, a wrong media type, a bundle outside
``--reload-root``, the line/class guard, a bundle that fails its checks); the record is on disk before the answer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from deploy.serve.audit import AuditLog
from deploy.serve.models import (LoadedModel, ReloadBadPath, ReloadError, ReloadForbidden, ReloadRefused,
                                 model_changes)
from deploy.serve.state import StationState


@dataclass(frozen=True)
class Actor:
    who: str  # the API key's name, "anonymous" (no --tokens) or "SIGHUP"
    address: str | None = None
    request_id: str | None = None


@dataclass
class ReloadOutcome:
    status: int
    result: str  # ok | the error kind
    message: str = ""
    answer: dict[str, Any] | None = None  # a switch's answer
    extra: dict[str, Any] | None = None  # an error's fields beside error and message


def describe(model: LoadedModel) -> dict[str, Any]:
    m = model.predictor.manifest
    return {"model_id": model.model_id, "line": m.extra.get("line"), "classes": list(m.classes),
            "bundle": str(model.bundle_dir)}


def audit_reload(audit: AuditLog, station: StationState, actor: Actor, outcome: ReloadOutcome, bundle: str | None,
                 force: bool, new: LoadedModel | None = None) -> None:
    audit.append({"event": "reload", "result": outcome.result, "status": outcome.status, "who": actor.who,
                  "address": actor.address, "request_id": actor.request_id, "bundle": bundle, "force": force,
                  "old": describe(station.host.current) if new is None else None,
                  "new": describe(new) if new is not None else None, "reason": outcome.message or None,
                  **({"changes": outcome.answer["changes"]} if outcome.answer else {}),
                  **({"differs": outcome.extra["differs"]} if outcome.extra and "differs" in outcome.extra else {})})


def refuse(audit: AuditLog, station: StationState, actor: Actor, kind: str, message: str, status: int,
           bundle: str | None = None, force: bool = False) -> ReloadOutcome:
    """A reload refused before any bundle was read, audited."""
    outcome = ReloadOutcome(status, kind, message, extra={"model_id": station.host.current.model_id})
    audit_reload(audit, station, actor, outcome, bundle, force)
    return outcome


def reload_and_audit(station: StationState, audit: AuditLog, actor: Actor, bundle: str | None,
                     force: bool = False) -> ReloadOutcome:
    """Load, check, warm up and switch (``StationState.reload``), then audit what happened. Runs in a thread."""
    serving = station.host.current
    try:
        new, old = station.reload(bundle, force)
    except ReloadError as exc:
        station.metrics.reloads.labels("failed").inc()
        kind, status = (("reload_forbidden", 403) if isinstance(exc, ReloadForbidden) else
                        ("bad_request", 400) if isinstance(exc, ReloadBadPath) else
                        ("line_or_classes_differ", 409) if isinstance(exc, ReloadRefused) else ("reload_failed", 409))
        extra = {"model_id": serving.model_id, **({"differs": exc.differs} if isinstance(exc, ReloadRefused) else {})}
        outcome = ReloadOutcome(status, kind, str(exc), extra=extra)
        audit_reload(audit, station, actor, outcome, bundle, force)
        return outcome
    answer = {"model_id": new.model_id, "previous_model_id": old.model_id, "bundle": str(new.bundle_dir),
              "warmup_ms": round(new.warmup_ms, 2), "changes": model_changes(old, new), "forced": force}
    outcome = ReloadOutcome(200, "ok", answer=answer)
    audit.append({"event": "reload", "result": "ok", "status": 200, "who": actor.who, "address": actor.address,
                  "request_id": actor.request_id, "bundle": bundle, "force": force, "old": describe(old),
                  "new": describe(new), "changes": answer["changes"]})
    return outcome


def reload_on_signal(station: StationState, audit: AuditLog) -> None:
    """SIGHUP: reload the serving folder (the line/class guard applies; there is no ``force``); nobody to answer,
    so it is said on stderr, and audited."""
    outcome = reload_and_audit(station, audit, Actor("SIGHUP"), None)
    if outcome.answer is None:
        print(f"error: {outcome.message}", file=sys.stderr, flush=True)
        return
    a = outcome.answer
    changed = "; ".join(f"{k} {v['old']} -> {v['new']}" for k, v in a["changes"].items() if k != "model_id")
    print(f"# reload: {a['previous_model_id'][:12]} -> {a['model_id'][:12]} ({a['bundle']})"
          f"{'; ' + changed if changed else ''}", file=sys.stderr, flush=True)
