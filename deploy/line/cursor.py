"""A durable cursor over the decision log: how far one sink has delivered.

The cursor is a small JSON file beside the log (``.line-cursor-<sink>.json``): the day file and the byte offset
just past the last record the sink had acknowledged, and the model id of that record (so a model change is an
event in order with the decisions). It is replaced atomically (``deploy.atomic``) after each acknowledged batch:
a kill at any moment leaves the old cursor or the new one, never half of one, so after a restart the sink
resends at most the last unacknowledged batch (at least once; consumers drop repeats by ``event_id``).

A new cursor starts at the log's end at that moment (the sink publishes what is decided from then on, not the
station's history). Reading takes whole lines only: a line without its newline (a record being written, or the
cut last line of a crash) is left for the next read; a complete line that does not parse is skipped; a day file
shorter than the cursor's offset (cut or replaced under it) is read again from its start. The cursor
moves on to the next day's file only once the current one has not changed for ``SETTLE_S`` (a record stamped
just before midnight can land in the old day's file a moment after the new one began).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.atomic import write_json_atomic
from deploy.decision_log import LOG_PREFIX, LOG_SUFFIX, DecisionRecord, log_path, utc_now
from deploy.errors import DeployError

SETTLE_S = 5.0
DAY_FILE = re.compile(re.escape(LOG_PREFIX) + r"\d{4}-\d{2}-\d{2}" + re.escape(LOG_SUFFIX))
CURSOR_FORMAT = "inspection-kit/line-cursor"


@dataclass(frozen=True)
class Position:
    file: str  # the day file's name (decisions-YYYY-MM-DD.jsonl)
    offset: int  # bytes: just past the last delivered record
    model_id: str | None = None  # the model of the last delivered record


@dataclass
class Batch:
    """Records read past a position, each with where it lies (``file:offset``, the id of a record without a
    ``decision_id``), and the position just past the last of them."""

    records: list[tuple[DecisionRecord, str]]
    end: Position
    skipped_lines: int = 0


class LogCursor:
    """``exclusive``: hold the cursor's lock (``.line-cursor-<sink>.lock``, ``flock``) while this object lives, waiting
    for it if another publisher has it: two publishers on one cursor would each resend the other's batches. The
    kernel releases the lock when its process dies, even by SIGKILL."""

    def __init__(self, log_dir: str | Path, sink: str, exclusive: bool = False) -> None:
        self.log_dir = Path(log_dir)
        self.path = self.log_dir / f".line-cursor-{sink}.json"
        self._lock_fd: int | None = None
        if exclusive:
            self._lock_fd = os.open(self.log_dir / f".line-cursor-{sink}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.position = self._load()

    @classmethod
    def existing(cls, log_dir: str | Path, sink: str) -> "LogCursor | None":
        """The sink's cursor if it has one (never creating it: for a reader that only asks how far it is)."""
        return cls(log_dir, sink) if (Path(log_dir) / f".line-cursor-{sink}.json").is_file() else None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self) -> Position:
        if not self.path.is_file():
            position = self._log_end()
            self.commit(position)
            return position
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            position = Position(str(d["file"]), int(d["offset"]), d.get("model_id"))
            if not DAY_FILE.fullmatch(position.file) or position.offset < 0:
                # a name no log file has (or sorts after every day to come) would hold the cursor there for ever:
                # nothing published again, silently
                raise ValueError(f"file {position.file!r}, offset {position.offset}: not a place in the decision log")
            return position
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeployError(f"{self.path}: not a line cursor ({exc}); write "
                              '{"file": "decisions-YYYY-MM-DD.jsonl", "offset": 0} into it to publish again from that '
                              "day's start (repeats are dropped by event_id), or remove it to start from the log's end "
                              "(what was decided meanwhile is then not published)") from None

    def _log_end(self) -> Position:
        files = self._files()
        if not files:
            return Position(log_path(self.log_dir, utc_now()).name, 0)
        last = files[-1]
        return Position(last.name, last.stat().st_size)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.log_dir.glob(f"{LOG_PREFIX}*{LOG_SUFFIX}") if DAY_FILE.fullmatch(p.name))

    def commit(self, position: Position) -> None:
        """Atomically: the cursor file is the old position or this one, whatever happens."""
        write_json_atomic(self.path, {"format": CURSOR_FORMAT, "file": position.file, "offset": position.offset,
                                      "model_id": position.model_id})
        self.position = position

    def read(self, max_records: int = 100) -> Batch:
        """Up to ``max_records`` records past the cursor (the cursor itself moves only on ``commit``)."""
        position, records, skipped = self.position, [], 0
        while len(records) < max_records:
            path = self.log_dir / position.file
            got, offset, bad = _read_lines(path, position.offset, max_records - len(records))
            skipped += bad
            if got:
                records += got
                position = Position(position.file, offset, got[-1][0].model_id)
                continue
            if offset != position.offset:  # only unparseable lines: step past them
                position = Position(position.file, offset, position.model_id)
                continue
            later = [f for f in self._files() if f.name > position.file]
            if not later or not _settled(path):
                break
            position = Position(later[0].name, 0, position.model_id)
        return Batch(records, position, skipped)


def _settled(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime >= SETTLE_S
    except FileNotFoundError:
        return True  # removed (rotated away): nothing more will come


def _read_lines(path: Path, offset: int, limit: int) -> tuple[list[tuple[DecisionRecord, str]], int, int]:
    """(records with their place, the offset past the last whole line read, unparseable lines skipped)."""
    records: list[tuple[DecisionRecord, str]] = []
    skipped = 0
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return records, offset, 0
    with fh:
        if offset > os.fstat(fh.fileno()).st_size:  # the file was cut or replaced (or the cursor edited): what it
            offset = 0  # holds now was never read; from its start again (at least once, repeats dropped by event_id)
        fh.seek(offset)
        while len(records) < limit:
            raw = fh.readline()
            if not raw.endswith(b"\n"):  # nothing more, or a line still being written
                break
            where = f"{path.name}:{offset}"
            offset += len(raw)
            try:
                d = json.loads(raw)
                record = DecisionRecord.from_dict(d) if isinstance(d, dict) else None
            except (ValueError, TypeError):
                record = None
            if record is None:
                skipped += 1
            else:
                records.append((record, where))
    return records, offset, skipped


def cursor_files(log_dir: str | Path) -> list[Path]:
    """The cursors in a log folder (one per sink)."""
    return sorted(Path(log_dir).glob(".line-cursor-*.json"))


__all__ = ["Batch", "LogCursor", "Position", "SETTLE_S", "cursor_files"]
