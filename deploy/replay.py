"""Replay a folder of images through a bundle into a decision log (``deploy.decision_log``).

What a station would have written had it seen these images: the same ``Predictor``, the same
decision rule, the same record format. Used to simulate a shadow period on held-back images, to
backfill a log for images inspected before the station ran, and in tests.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

from deploy.decision_log import DecisionLog, DecisionRecord
from deploy.errors import DeployError
from deploy.manifest import MANIFEST_NAME, sha256_file
from deploy.predictor import Predictor


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def replay_images(predictor: Predictor, paths: Iterable[str | Path], log_dir: str | Path, *,
                  start: datetime | None = None, interval_s: float = 1.0, source: str = "replay",
                  part_id: Callable[[Path], str | None] = lambda p: p.stem, batch_size: int = 32,
                  durable: bool = False) -> list[DecisionRecord]:
    """Decide every image and append one ``DecisionRecord`` per image to the day files in ``log_dir``.

    ``start``: the time of the first record (default: now, UTC); each next one ``interval_s`` later, so
    a long replay spans several day files as a real line would. ``part_id``: the part id of an image
    (default: its file stem). ``image``: the path as given.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DeployError("replay: no images given")
    start = (start or datetime.now(timezone.utc)).astimezone(timezone.utc)
    model_id = sha256_file(predictor.bundle_dir / MANIFEST_NAME)
    records: list[DecisionRecord] = []
    with DecisionLog(log_dir, durable=durable) as log:
        for first in range(0, len(paths), batch_size):
            chunk = paths[first : first + batch_size]
            for offset, (path, decision) in enumerate(zip(chunk, predictor.predict_paths(chunk, batch_size))):
                when = start + timedelta(seconds=interval_s * (first + offset))
                record = DecisionRecord.from_decision(
                    decision, time=when.isoformat(timespec="milliseconds"), part_id=part_id(path),
                    image_sha256=file_sha256(path), model_id=model_id, source=source, image=str(path))
                log.append(record)
                records.append(record)
    return records
