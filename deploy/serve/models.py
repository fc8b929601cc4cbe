"""The model side of ``deploy serve``: a loaded and warmed-up model with its micro-batcher, and the
host that swaps models atomically (``POST /v1/reload``, SIGHUP).

A request ``acquire``s the serving model once and uses it to the end, so a swap never changes the
model under a request; the old model's batcher stops when the last request that holds it is answered.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.errors import DeployError
from deploy.manifest import model_id
from deploy.predictor import Predictor
from deploy.serve.batching import MicroBatcher
from deploy.serve.config import ServeConfig


@dataclass
class LoadedModel:
    predictor: Predictor
    model_id: str
    bundle_dir: Path
    batcher: MicroBatcher
    warmup_ms: float
    loaded_at: str
    inflight: int = 0
    retired: bool = False

    def summary(self) -> dict[str, Any]:
        m = self.predictor.manifest
        return {
            "model_id": self.model_id, "bundle": str(self.bundle_dir), "line": m.extra.get("line"), "task": m.task,
            "classes": m.classes, "threshold": m.operating_threshold, "temperature": m.temperature,
            "decision": m.decision_dict(), "runtime": self.predictor.runtime.name,
            "providers": self.predictor.describe(), "preprocess": m.preprocess.to_dict(),
            "artefacts": {fmt: {"file": e["file"], "sha256": e["sha256"]} for fmt, e in m.artefacts.items()},
            "created_at": m.extra.get("created_at"), "loaded_at": self.loaded_at, "warmup_ms": round(self.warmup_ms, 2),
        }


def model_changes(old: LoadedModel, new: LoadedModel) -> dict[str, dict[str, Any]]:
    """What a reload changed, ``{field: {"old": ..., "new": ...}}`` for each that differs among what decides
    a part: model id, task, classes, threshold, ok_class, per-class thresholds, temperature, runtime; for an anomaly
    bundle its band (accept_below, reject_at) and kind radii too."""
    def facts(model: LoadedModel) -> dict[str, Any]:
        m, rule = model.predictor.manifest, model.predictor.manifest.anomaly
        return {"model_id": model.model_id, "task": m.task, "classes": list(m.classes), "threshold": m.operating_threshold,
                "ok_class": m.ok_class, "class_thresholds": dict(m.class_thresholds), "temperature": m.temperature,
                "accept_below": rule and rule.accept_below, "reject_at": rule and rule.reject_at,
                "kind_radius": rule and dict(rule.kind_radius), "runtime": model.predictor.runtime.name}

    before, after = facts(old), facts(new)
    return {k: {"old": before[k], "new": after[k]} for k in before if before[k] != after[k]}


def line_and_class_changes(old: LoadedModel, new: LoadedModel) -> dict[str, dict[str, Any]]:
    """What the reload guard looks at: the line a bundle was made for and its set of classes (order aside).
    A bundle of another line, or one that adds or drops a class, is refused unless the reload says ``force``."""
    def facts(model: LoadedModel) -> dict[str, Any]:
        m = model.predictor.manifest
        return {"line": m.extra.get("line"), "classes": list(m.classes)}

    before, after = facts(old), facts(new)
    differs = {}
    if before["line"] != after["line"]:
        differs["line"] = {"old": before["line"], "new": after["line"]}
    if set(before["classes"]) != set(after["classes"]):
        differs["classes"] = {"old": before["classes"], "new": after["classes"]}
    return differs


def load_model(bundle_dir: str | Path, config: ServeConfig, on_batch: Callable[[int, float], None] | None = None) -> LoadedModel:
    """Load (every artefact's sha256 checked by ``Predictor.from_bundle``), warm up at batch 1 and
    ``max_batch`` (the first runs allocate memory and pick kernels), then start its batcher."""
    bundle_dir = Path(bundle_dir).resolve()
    # idle ONNX Runtime threads sleep: spinning between batches takes the CPU the event loop needs
    predictor = Predictor.from_bundle(bundle_dir, config.runtime, intra_op_threads=config.threads, allow_spinning=False)
    identity = model_id(bundle_dir)
    spec = predictor.manifest.preprocess
    started = time.perf_counter()
    for batch in (1, config.max_batch, 1):
        predictor.outputs(np.zeros((batch, spec.num_channels, *spec.image_size), np.float32))
    warmup_ms = (time.perf_counter() - started) * 1000.0
    batcher = MicroBatcher(predictor, config.max_batch, config.max_wait_ms, config.max_queue, on_batch,
                           name=f"batcher-{identity[:8]}")
    return LoadedModel(predictor, identity, bundle_dir, batcher, warmup_ms,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"))


class ReloadError(DeployError):
    """A reload failed; the old model keeps serving."""


class ReloadForbidden(ReloadError):
    """The requested bundle is outside the folder reloads may read from."""


class ReloadBadPath(ReloadError):
    """The requested bundle is a path the OS refuses: a NUL byte, a name or path over the system's limits."""


def bundle_path_in(bundle: str, root: Path) -> Path:
    """``bundle`` as a real path inside ``root``; ``ReloadBadPath`` for a path the OS refuses (a NUL byte made
    ``realpath`` raise, a 500), ``ReloadForbidden`` for one outside ``root``. The OS is asked about the path only
    once it is known to lie inside ``root``."""
    try:
        real = Path(os.path.realpath(bundle))
    except (ValueError, OSError) as exc:
        raise ReloadBadPath(f'reload: "bundle" is not a path this system takes ({exc}): send the bundle folder\'s '
                            "path") from None
    if not real.is_relative_to(root):
        raise ReloadForbidden(f"reload: the bundle must be a folder inside {root} (deploy serve --reload-root)")
    try:
        os.stat(real)
    except (ValueError, OSError) as exc:
        if isinstance(exc, ValueError) or exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise ReloadBadPath(f'reload: "bundle" is not a path this system takes ({exc.strerror or exc} for a path '
                                f"of {len(bundle)} characters): send the bundle folder's path") from None
    return real


class ReloadRefused(ReloadError):
    """The bundle loads, but is of another line or class set, and the reload did not say ``force``."""

    def __init__(self, message: str, differs: dict[str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.differs = differs


def refusal_message(target: Path, serving: LoadedModel, differs: dict[str, dict[str, Any]]) -> str:
    def shown(value: Any) -> str:
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    what = " and ".join(f"the {k} ({shown(v['old'])} -> {shown(v['new'])})" for k, v in differs.items())
    return (f"reload of {target} refused: it changes {what}; still serving {serving.model_id[:12]}. To switch anyway, "
            'send {"bundle": ..., "force": true}')


class ModelHost:
    """The serving model and its atomic swap. A request ``acquire``s the model once and uses it to
    the end, so a swap never changes the model under a request."""

    def __init__(self, model: LoadedModel, config: ServeConfig, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.config, self.on_batch = config, on_batch
        self._model = model
        self._lock = threading.Lock()  # guards _model and every model's inflight count
        self._reload_lock = threading.Lock()  # one reload at a time

    @property
    def current(self) -> LoadedModel:
        return self._model

    def acquire(self) -> LoadedModel:
        with self._lock:
            model = self._model
            model.inflight += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.inflight -= 1
            last = model.retired and model.inflight == 0
        if last:
            model.batcher.close()

    def reload(self, bundle: str | Path | None = None, force: bool = False) -> tuple[LoadedModel, LoadedModel]:
        """(new, old). Raises ``ReloadError`` with the reason; the old model then keeps serving. A bundle of another
        line or class set is ``ReloadRefused`` unless ``force``."""
        target = Path(bundle) if bundle is not None else self._model.bundle_dir
        if bundle is not None:
            try:
                bundle_path_in(str(bundle), self.config.allowed_root())
            except ReloadError as exc:
                raise type(exc)(f"{exc}; still serving {self._model.model_id[:12]}") from None
        with self._reload_lock:
            try:
                new = load_model(target, self.config, self.on_batch)
            except DeployError as exc:
                raise ReloadError(f"reload of {target} failed, still serving {self._model.model_id[:12]}: {exc}") from None
            except Exception as exc:  # a damaged model file can fail inside the runtime
                raise ReloadError(f"reload of {target} failed, still serving {self._model.model_id[:12]}: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}") from None
            differs = line_and_class_changes(self._model, new)
            if differs and not force:
                new.batcher.close()
                raise ReloadRefused(refusal_message(target, self._model, differs), differs)
            with self._lock:
                old, self._model = self._model, new
                old.retired = True
                idle = old.inflight == 0
            if idle:
                old.batcher.close()
            return new, old

    def close(self) -> None:
        with self._lock:
            self._model.retired = True
        self._model.batcher.close(wait=True)
