"""The journal of labels people give a review queue's parts (``QUEUE_DIR/labels.jsonl``; torch-free).

One JSON line per label given (part, label, inspector, the API key's name, time, the model's label), appended
with a single ``os.write`` on a file opened ``O_APPEND`` and ``fsync``-ed before the answer goes out. POSIX
appends of one write land whole and never interleave, so two writers at once both land; a line torn by a
crash (no newline at its end) is skipped when read, and only that label is lost, the one never confirmed. The
journal is never rewritten: it is the record of who labelled what, and when.

``apply_journal`` fills queue.csv's rows from it (the last line per part wins; an empty label, an undo,
clears the cell); ``deploy review`` (``deploy.review``) and ``deploy review-queue`` both call it before they
rewrite queue.csv, under ``queue_lock``, so neither undoes a label the other has taken.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from deploy.atomic import fsync_path
from deploy.errors import DeployError

JOURNAL_NAME, LOCK_NAME = "labels.jsonl", ".review.lock"
JOURNAL_FORMAT = "inspection-kit/review-label"


def row_key(row: dict[str, str]) -> str:
    """The queue's name for a part: ``part:<id>``, or ``sha256:<hex>`` for a part logged without an id (the
    same key ``deploy review-queue`` remembers parts by)."""
    return f"part:{row['part_id']}" if row.get("part_id") else f"sha256:{row.get('sha256', '')}"


def read_journal(queue_dir: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(every complete label line, in the order written; how many lines were skipped: torn or not ours)."""
    path = Path(queue_dir) / JOURNAL_NAME
    if not path.is_file():
        return [], 0
    entries, skipped = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(entry, dict) or entry.get("format") != JOURNAL_FORMAT or not isinstance(entry.get("part"), str):
            skipped += 1
            continue
        entries.append(entry)
    return entries, skipped


def latest_labels(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Part key -> its last journal line (the label that stands)."""
    return {e["part"]: e for e in entries}


def apply_journal(rows: list[dict[str, str]], queue_dir: str | Path) -> list[dict[str, str]]:
    """``rows`` of queue.csv with the journal's last label per part filled in (``deploy review-queue`` calls this
    before it rewrites the file, so a label given meanwhile is not undone)."""
    last = latest_labels(read_journal(queue_dir)[0])
    out = []
    for row in rows:
        entry = last.get(row_key(row))
        if entry is not None:
            row = {**row, "label": entry["label"], "labelled_by": entry["inspector"] if entry["label"] else "",
                   "labelled_at": entry["time"] if entry["label"] else ""}
        out.append(row)
    return out


@contextlib.contextmanager
def queue_lock(queue_dir: Path) -> Iterator[None]:
    """An exclusive lock on the queue folder, across processes (``flock``; released when the process dies)."""
    import fcntl

    fd = os.open(queue_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_line(path: Path, line: bytes) -> None:
    """One line, whole, at the end of ``path``: a single write on an O_APPEND descriptor, then fsync. Call it under
    ``queue_lock`` (the check for a torn last line and the write must not interleave with another writer's)."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a crash: end it, or this one joins it
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # a full disk: the torn line is skipped when read; the label was not taken
            raise DeployError(f"{path}: only {written} of {len(line)} bytes written (disk full?); the label was not saved")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_path(path.parent)  # the new file's name survives a power cut too
