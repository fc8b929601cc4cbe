"""The labels people give the parts of a review queue (``deploy review``'s store; torch-free).

Two inspectors label the same queue at once, from two browsers or two ``deploy review`` processes; a power
cut may come at any moment. Neither may lose a label: each label is first a line of the journal
(``deploy.review_journal``: appended whole, fsync-ed, never rewritten), then queue.csv, what ``kit ingest``
reads, is rewritten from the journal, atomically (``deploy.atomic``), under an exclusive lock on the queue
folder (``flock``, so two processes take turns). For each part the journal's last line wins (``label``,
``labelled_by``, ``labelled_at``); rows the journal does not name keep what they hold (a label typed into the
CSV by hand stays), and rows ``deploy review-queue`` adds meanwhile are kept (it applies the journal too).

The classes a label may be: ``--classes``, else those ``deploy review-queue`` recorded from the decision log
(``.queue-state.json``), else the model labels in the queue. Keys 1-9 on the page follow this order.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.review_journal import (JOURNAL_FORMAT, JOURNAL_NAME, append_line, apply_journal, row_key, queue_lock)
from deploy.review_queue import QUEUE_NAME, STATE_NAME, read_queue, write_queue_csv
INSPECTOR = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")  # any printable name, at most 64 characters
MAX_CLASSES = 9  # keys 1-9


class ReviewError(DeployError):
    """A label the queue cannot take (unknown part or class, no inspector); ``kind`` names it for the API."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


@dataclass
class ReviewQueue:
    """A review queue folder as the review page sees it: its parts, the classes, the labels given."""

    folder: Path
    classes: list[str]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one label at a time in this process

    @classmethod
    def open(cls, queue_dir: str | Path, classes: list[str] | None = None) -> "ReviewQueue":
        folder = Path(queue_dir)
        if not (folder / QUEUE_NAME).is_file():
            raise DeployError(f"{folder}: no {QUEUE_NAME}; make the queue first with deploy review-queue --log LOGS "
                              f"--images IMAGES --out {folder}")
        rows = read_queue(folder)
        if not classes:
            classes = _recorded_classes(folder) or sorted({r["model_label"] for r in rows if r.get("model_label")})
        classes = list(dict.fromkeys(c.strip() for c in classes if c.strip()))
        if not classes:
            raise DeployError(f"{folder}: no classes to label with; pass them: deploy review {folder} --classes ok "
                              "--classes scratch ...")
        if len(classes) > MAX_CLASSES:
            raise DeployError(f"{len(classes)} classes ({', '.join(classes)}); keys 1-9 label at most {MAX_CLASSES}: "
                              "pass the ones to label with --classes")
        return cls(folder, classes)

    def parts(self) -> list[dict[str, Any]]:
        """Every queued part with the label that stands (the journal's last, else the CSV's)."""
        rows = apply_journal(read_queue(self.folder), self.folder)
        out = []
        for row in rows:
            out.append({"key": row_key(row), "part_id": row.get("part_id", ""), "time": row.get("time", ""),
                        "model_label": row.get("model_label", ""), "confidence": _number(row.get("confidence")),
                        "score": _number(row.get("score")), "action": row.get("action", ""),
                        "reason": row.get("reason", ""), "label": row.get("label", ""),
                        "labelled_by": row.get("labelled_by", ""), "labelled_at": row.get("labelled_at", ""),
                        "has_overlay": bool(row.get("overlay"))})
        return out

    def file_of(self, key: str, kind: str) -> Path | None:
        """The image (``kind='image'``) or overlay of a part, only when it lies inside the queue folder."""
        column = {"image": "path", "overlay": "overlay"}.get(kind)
        if column is None:
            return None
        row = next((r for r in read_queue(self.folder) if row_key(r) == key), None)
        if row is None or not row.get(column):
            return None
        root = self.folder.resolve()
        path = (root / row[column]).resolve()
        if root not in path.parents or not path.is_file():
            return None  # '../..', an absolute path or a link out of the folder: not served
        return path

    def label(self, key: str, label: str, inspector: str, key_name: str | None = None) -> dict[str, Any]:
        """Record ``label`` (a class, or '' to clear: undo) for the part ``key`` by ``inspector``: a journal line,
        then queue.csv rewritten. Returns the journal line."""
        if not isinstance(inspector, str) or not INSPECTOR.match(inspector.strip() or ""):
            raise ReviewError("bad_inspector", "inspector: give a name of 1 to 64 printable characters")
        if not isinstance(label, str) or (label and label not in self.classes):
            raise ReviewError("unknown_class", f"label {label!r} is not a class of this queue "
                              f"(classes: {', '.join(self.classes)}; '' clears a label)")
        with self._lock, queue_lock(self.folder):
            rows = read_queue(self.folder)
            row = next((r for r in rows if row_key(r) == key), None) if isinstance(key, str) else None
            if row is None:
                raise ReviewError("unknown_part", f"part {key!r} is not in this queue", 404)
            entry = {"format": JOURNAL_FORMAT, "part": key, "label": label, "inspector": inspector.strip(),
                     "key": key_name, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                     "model_label": row.get("model_label", ""), "sha256": row.get("sha256", "")}
            append_line(self.folder / JOURNAL_NAME, (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
            write_queue_csv(self.folder, apply_journal(rows, self.folder))
        return entry

    def summary(self, parts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Counts for the page: parts, labelled, per class, per inspector, agreeing with the model."""
        parts = self.parts() if parts is None else parts
        done = [p for p in parts if p["label"]]
        return {"parts": len(parts), "labelled": len(done), "to_do": len(parts) - len(done),
                "by_class": {c: sum(p["label"] == c for p in done) for c in self.classes},
                "by_inspector": _count(p["labelled_by"] for p in done),
                "agree_with_model": sum(p["label"] == p["model_label"] for p in done)}


def _recorded_classes(folder: Path) -> list[str]:
    try:
        state = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    classes = state.get("classes") if isinstance(state, dict) else None
    return [c for c in classes if isinstance(c, str)] if isinstance(classes, list) else []


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v or "?"] = out.get(v or "?", 0) + 1
    return dict(sorted(out.items()))
