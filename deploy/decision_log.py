"""The decision log: the contract between the station and everything after it.

One append-only JSON-lines file per UTC day (``decisions-YYYY-MM-DD.jsonl``) in a log folder,
written by ``deploy serve`` and ``deploy watch``, read by ``deploy monitor``, ``deploy
review-queue`` and ``kit shadow``. One record per decided part (``DecisionRecord``). A record of an
anomaly bundle carries its ``score`` and no probabilities (``{}``); a classifier's, ``score`` null.

Crash safety: each record is one ``os.write`` of one complete line on a file opened with
``O_APPEND`` (the kernel places it at the end, whole, even with several writers), then
``fsync`` when ``durable``. A crash can leave at most a partial last line; ``read_records``
skips lines that do not parse and counts them, so a reader never fails on a log a crash cut.
"""

from __future__ import annotations

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


class DecisionLog:
    """Appends records to the day's file in ``folder``; thread-safe; one file descriptor per day."""

    def __init__(self, folder: str | Path, durable: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None

    def append(self, record: DecisionRecord) -> Path:
        data = record.to_line().encode("utf-8")
        when = datetime.fromisoformat(record.time)
        with self._lock:
            path = log_path(self.folder, when)
            if path != self._path:
                self._close()
                self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                self._path = path
                size = os.fstat(self._fd).st_size
                if size and os.pread(self._fd, 1, size - 1) != b"\n":
                    os.write(self._fd, b"\n")  # end a crash's partial line: the next record must not be glued to it
            assert self._fd is not None
            written = os.write(self._fd, data)
            if written != len(data):  # a short write (disk full): never leave half a record in the middle of the log
                raise DeployError(f"{path}: short write ({written} of {len(data)} bytes); is the disk full?")
            if self.durable:
                os.fsync(self._fd)
        return path

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._path = None, None

    def sync(self) -> None:
        """fsync what was appended: ``deploy serve`` appends with ``durable=False`` (a process crash
        loses nothing the kernel has) and syncs once a second, so a request does not wait for the disk."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

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
