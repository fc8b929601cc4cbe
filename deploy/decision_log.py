"""The decision log: the contract between the station and everything after it.

One append-only JSON-lines file per UTC day (``decisions-YYYY-MM-DD.jsonl``) in a log folder,
written by ``deploy serve`` and ``deploy watch``, read by ``deploy monitor``, ``deploy
review-queue`` and ``kit shadow``. One record per decided part (``DecisionRecord``). A record of an
anomaly bundle carries its ``score`` and no probabilities (``{}``); a classifier's, ``score`` null.

Crash safety: each record is one ``os.write`` of one complete line on a file opened with
``O_APPEND`` (the kernel places it at the end, whole, even with several writers), then
``fsync`` when ``durable``. A crash can leave at most a partial last line; ``read_records``
skips lines that do not parse and counts them, so a reader never fails on a log a crash cut.

A full or failing disk: a write that stops short (the disk filled up mid-record) is finished if the
disk takes the rest, else cut back at once to the last complete line (``ftruncate``), so no fragment is
left for the next record to be glued to (that record, answered, was then skipped by every reader). A
record that cannot be written raises ``DecisionLogUnavailable`` (``deploy serve`` answers 503 and gives no
decision; it is not final until it is recorded), and ``available`` stays False until a write or a
``probe`` succeeds again. The folder is checked when the log is opened (``check_log_folder``): a path
that is a file, or a folder that cannot be written, is refused in one line before anything is decided.
"""

from __future__ import annotations

import errno
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from deploy.errors import DeployError
from deploy.filenames import readable

if TYPE_CHECKING:
    from deploy.predictor import Decision

LOG_PREFIX, LOG_SUFFIX = "decisions-", ".jsonl"
LOG_FORMAT = "inspection-kit/decision-log"
LOG_VERSION = 1


@dataclass
class DecisionRecord:
    time: str  # ISO 8601, UTC
    part_id: str | None
    image_sha256: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    abstain: bool
    action: str  # accept | reject | review (deploy.decision)
    model_id: str  # sha256 of the bundle manifest
    runtime: str
    latency_ms: dict[str, float] = field(default_factory=dict)  # decode, preprocess, infer, total
    source: str = ""  # serve | watch | ...
    image: str | None = None  # file name or path, where the image is kept
    version: int = LOG_VERSION
    decision_id: str | None = None  # unique per decision (deploy watch's journal finds its records by it)
    score: float | None = None  # an anomaly bundle's score (1.0 = 99th percentile of good parts); None: a classifier

    def to_line(self) -> str:
        """One JSON line, valid UTF-8: a part id or image name holding bytes that are not UTF-8 (a file name
        from the line, ``deploy.filenames``) is written in its readable form."""
        fields = asdict(self)
        line = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(_readable_strings(fields), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return line + "\n"

    @classmethod
    def from_decision(cls, decision: "Decision", *, part_id: str | None, image_sha256: str, model_id: str, source: str,
                      time: str | None = None, latency_ms: dict[str, float] | None = None, image: str | None = None,
                      decision_id: str | None = None) -> "DecisionRecord":
        """The log record of one ``Decision`` (serve, watch and replay all write it so). ``time``: ISO 8601
        UTC, default now (to the microsecond)."""
        return cls(
            time=time or utc_now().isoformat(timespec="microseconds"), part_id=part_id, image_sha256=image_sha256,
            label=decision.label, confidence=decision.confidence, probabilities=decision.probabilities or {},
            abstain=decision.abstain, action=decision.action, model_id=model_id, runtime=decision.runtime,
            latency_ms=dict(latency_ms or {}), source=source, image=image, decision_id=decision_id,
            score=_finite_or_none(decision.score))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecisionRecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a score that is not a number is logged as null (its decision says review)."""
    return value if value is None or math.isfinite(value) else None


def _readable_strings(value: Any) -> Any:
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {_readable_strings(k): _readable_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_readable_strings(v) for v in value]
    return value


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def log_path(folder: str | Path, when: datetime) -> Path:
    return Path(folder) / f"{LOG_PREFIX}{when.astimezone(timezone.utc):%Y-%m-%d}{LOG_SUFFIX}"


class DecisionLogUnavailable(DeployError):
    """A record could not be written (disk full, read-only, I/O error); nothing half-written is left behind."""


PROBE_BYTES = 4096  # a probe must need a new block, as a record would on a full disk


def _probe(folder: Path) -> None:
    """Write, flush and remove a small file in ``folder``: ``OSError`` when the folder cannot take a record."""
    probe = folder / f".write-probe-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if os.write(fd, b"\n" * PROBE_BYTES) != PROBE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def check_log_folder(folder: str | Path) -> Path:
    """The decision log's folder, created if missing and proven writable; ``DeployError`` in one line when it
    is a file or cannot be written: a station that cannot record a decision must not give one."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DeployError(f"--log-dir {folder}: is a file, not a folder; give the folder the decision log goes to "
                          "(one decisions-YYYY-MM-DD.jsonl per UTC day)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
        today = log_path(folder, utc_now())
        if today.exists():
            os.close(os.open(today, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise DeployError(f"--log-dir {folder}: cannot write the decision log there ({exc.strerror or exc}); every "
                          "decision is recorded before it is answered, so nothing starts: fix the folder's "
                          "permissions or free space, or give another --log-dir") from None
    return folder


class DecisionLog:
    """Appends records to the day's file in ``folder``; thread-safe; one file descriptor per day."""

    def __init__(self, folder: str | Path, durable: bool = True) -> None:
        self.folder = check_log_folder(folder)
        self.durable = durable
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._fragment: tuple[int, int] | None = None  # (size before a failed write, bytes it left) not yet cut back
        self.available = True  # False from a failed write until a write or a probe succeeds
        self.failures = 0  # records that could not be written, since start
        self.last_error: str | None = None

    def append(self, record: DecisionRecord) -> Path:
        """Write one record (``DecisionLogUnavailable`` when it cannot be, with nothing half-written left)."""
        data = record.to_line().encode("utf-8")
        when = datetime.fromisoformat(record.time)
        with self._lock:
            path = log_path(self.folder, when)
            try:
                fd = self._open(path)
                self._cut_fragment(fd)
                start = os.fstat(fd).st_size
                self._write_whole(fd, data, start)
                if self.durable:
                    os.fsync(fd)
            except OSError as exc:
                self.failures += 1
                self.available = False
                self.last_error = f"{path}: {exc.strerror or exc}"
                raise DecisionLogUnavailable(f"the decision log cannot be written ({self.last_error}); the "
                                             "decision was not recorded") from None
            self.available, self.last_error = True, None
        return path

    def _open(self, path: Path) -> int:
        if path != self._path or self._fd is None:
            if self._fd is not None and self._fragment is not None:
                try:  # the day changed after a failed write: clean the old file on the way out
                    self._cut_fragment(self._fd)
                except OSError:
                    pass  # its next writer ends the partial line
            self._fragment = None
            self._close()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd, self._path = fd, path
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                self._fragment = (size, 0)  # a crash's partial line: ended before the next record
        return self._fd

    def _write_whole(self, fd: int, data: bytes, start: int) -> None:
        """All of ``data``, or nothing: a short write is continued; when the disk refuses the rest, the part
        written is cut off again before the error is raised."""
        written = 0
        try:
            while written < len(data):
                n = os.write(fd, data[written:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
        except OSError:
            if written:
                self._fragment = (start, written)
                try:
                    self._cut_fragment(fd)
                except OSError:
                    pass  # cut before the next record instead
            raise

    def _cut_fragment(self, fd: int) -> None:
        """Remove what a failed write left (truncate back to the last complete line), or, where another writer
        appended after it or the log held a crash's partial line, end it with a newline."""
        if self._fragment is None:
            return
        start, written = self._fragment
        size = os.fstat(fd).st_size
        if written and size == start + written:
            os.ftruncate(fd, start)
        elif size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
        self._fragment = None

    def probe(self) -> bool:
        """Can the folder take a record again (space freed, remounted writable)? Sets ``available``."""
        with self._lock:
            try:
                _probe(self.folder)
                if self._fd is not None:
                    self._cut_fragment(self._fd)
            except OSError as exc:
                self.available, self.last_error = False, f"{self.folder}: {exc.strerror or exc}"
                return False
            self.available, self.last_error = True, None
            return True

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._path = None, None

    def sync(self) -> None:
        """fsync what was appended: ``deploy serve`` appends with ``durable=False`` (a process crash
        loses nothing the kernel has) and syncs once a second, so a request does not wait for the disk.
        ``DecisionLogUnavailable`` when the disk fails the flush."""
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self.failures += 1
                    self.available, self.last_error = False, f"{self._path}: fsync: {exc.strerror or exc}"
                    raise DecisionLogUnavailable(f"the decision log cannot be flushed ({self.last_error})") from None

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class LogRead:
    records: list[DecisionRecord]
    files: list[Path]
    skipped_lines: int  # partial or malformed lines (a crash's cut last line), skipped


def log_files(paths: Iterable[str | Path]) -> list[Path]:
    """Decision-log files from files and folders (a folder: its ``decisions-*.jsonl``, by date)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.glob(f"{LOG_PREFIX}*{LOG_SUFFIX}"))
        elif p.is_file():
            out.append(p)
        else:
            raise DeployError(f"{p}: no such decision log file or folder")
    return out


def iter_records(path: Path) -> Iterator[DecisionRecord | None]:
    """Records of one file, None for a line that does not parse (counted by ``read_records``)."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):  # the partial last line a crash can leave
                yield None
                continue
            try:
                d = json.loads(raw)
                yield DecisionRecord.from_dict(d) if isinstance(d, dict) else None
            except (ValueError, TypeError):
                yield None


def read_records(paths: Iterable[str | Path]) -> LogRead:
    files = log_files(paths)
    records: list[DecisionRecord] = []
    skipped = 0
    for path in files:
        for rec in iter_records(path):
            if rec is None:
                skipped += 1
            else:
                records.append(rec)
    return LogRead(records, files, skipped)


def is_decision_log(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_file() and p.name.startswith(LOG_PREFIX) and p.name.endswith(LOG_SUFFIX)) or \
        (p.is_dir() and any(p.glob(f"{LOG_PREFIX}*{LOG_SUFFIX}")))
