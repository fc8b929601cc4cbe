"""The station's two records beside the decision log, JSON lines in ``--log-dir``:

``access-YYYY-MM-DD.jsonl`` (one per UTC day): every request, answered or refused: time, client address, method,
route, status, duration, request id, the key's name (never the key), the decision id where one was made.
Appended with one ``O_APPEND`` write per line and not synced per line (a power cut can lose the last seconds).

``audit.jsonl``: every model change and every refused attempt at one (``POST /v1/reload``, SIGHUP): who (the key's
name, ``anonymous`` without ``--tokens``, ``SIGHUP``), from which address, the request id, old and new model id,
line and classes, ``force``, the result and its reason. Each record is synced to disk before the answer goes out;
when it cannot be written the record goes to stderr (the service journal) instead, whole.
Without a log folder (``--no-log``) both go to stderr: the access lines are dropped, the audit lines kept.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.atomic import fsync_path

ACCESS_PREFIX, AUDIT_NAME = "access-", "audit.jsonl"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def json_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")


class Appender:
    """One file, appended to with ``O_APPEND``: each record is one ``os.write`` of one whole line."""

    def __init__(self, durable: bool) -> None:
        self.durable = durable
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None

    def write(self, path: Path, data: bytes) -> None:
        with self._lock:
            if path != self._path:
                self._close()
                created = not path.exists()
                self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
                self._path = path
                size = os.fstat(self._fd).st_size
                if size and os.pread(self._fd, 1, size - 1) != b"\n":
                    os.write(self._fd, b"\n")  # end a crash's partial line: the next record must not be glued to it
                if created and self.durable:
                    fsync_path(path.parent)  # the new file's name survives a power cut too
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
            if self.durable:
                os.fsync(self._fd)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._path = None, None

    def close(self) -> None:
        with self._lock:
            self._close()


class AccessLog:
    """``access-YYYY-MM-DD.jsonl`` in ``folder``; a line that cannot be written is dropped (said once on stderr):
    the access log never fails a request."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._out = Appender(durable=False)
        self._warned = False

    def append(self, record: dict[str, Any]) -> None:
        if self.folder is None:
            return
        now = utc_now()
        record = {"time": now.isoformat(timespec="milliseconds"), **record}
        try:
            self._out.write(self.folder / f"{ACCESS_PREFIX}{now:%Y-%m-%d}.jsonl", json_line(record))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                print(f"error: access log in {self.folder}: {exc}; access lines are dropped until it works",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        self._out.close()


class AuditLog:
    """``audit.jsonl`` in ``folder`` (stderr without one), each record synced before the caller answers."""

    def __init__(self, folder: str | Path | None) -> None:
        self.path = Path(folder) / AUDIT_NAME if folder is not None else None
        self._out = Appender(durable=True)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"time": utc_now().isoformat(timespec="milliseconds"), **record}
        data = json_line(record)
        if self.path is None:
            sys.stderr.write("# audit: " + data.decode("utf-8"))
            sys.stderr.flush()
            return record
        try:
            self._out.write(self.path, data)
        except OSError as exc:
            sys.stderr.write(f"error: audit record not written to {self.path} ({exc}); the record: "
                             + data.decode("utf-8"))
            sys.stderr.flush()
        return record

    def close(self) -> None:
        self._out.close()


def read_audit(folder: str | Path) -> list[dict[str, Any]]:
    """Every complete record of ``folder/audit.jsonl`` (a crash's partial last line is skipped)."""
    path = Path(folder) / AUDIT_NAME
    if not path.is_file():
        return []
    out = []
    for raw in path.read_bytes().splitlines(keepends=True):
        if raw.endswith(b"\n"):
            try:
                out.append(json.loads(raw))
            except ValueError:
                pass
    return out
