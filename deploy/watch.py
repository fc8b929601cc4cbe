"""``deploy watch``: the folder integration most line software supports.

The camera software drops image files into ``IN_DIR``. A file is taken once it is completely
written: either the writer writes ``NAME.tmp`` (or any dot-file) and renames it to ``NAME.png`` when
done (a rename is atomic, so the file is whole the moment it appears), or it writes in place and the
file counts as written once its size and modification time have not changed for ``--settle-ms``.
Only image suffixes are taken (.png .jpg .jpeg .bmp .tif .tiff ...) directly in ``IN_DIR`` (subfolders
are not watched); a stable file that is empty or whose bytes end early (no PNG end chunk, no JPEG end
marker, a TIFF whose page table or strips lie past its end) is given ``--broken-after-s`` more before it
counts as broken. Each decision goes to the decision log, and the file moves to ``DONE_DIR/<action>/``;
a file that cannot be decoded, or that fails in any other way before its decision is committed (the model
raises on it, ...), moves to ``DONE_DIR/error/`` after its reason is appended (and flushed) to
``DONE_DIR/error/errors.jsonl``: one file never stops the line. A decision log or journal that cannot be
written (a full disk) holds every file in ``IN_DIR`` until it can be, retried every ``LOG_RETRY_S``.
A file name need not be UTF-8 (``deploy.filenames``): the file is moved under its exact name, records
and messages carry a readable UTF-8 form of it.

Exactly once, even under SIGKILL: per batch of files, the decisions are first committed to a small
journal (``DONE_DIR/.deploy-watch-journal.jsonl``, one write + fsync), then appended to the decision
log, then the files are moved. On start, every journal entry whose file was not yet moved is
finished: its record is appended to the log unless the log already holds its ``decision_id``, and
the file is moved. A kill before the journal commit loses only work in memory (the file is still in
``IN_DIR`` and is decided on restart); a kill after it repeats nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from deploy.atomic import fsync_path, write_bytes_atomic
from deploy.decision_log import DecisionLog, DecisionLogUnavailable, DecisionRecord, log_path
from deploy.errors import DeployError
from deploy.filenames import name_from_json, name_to_json, readable
from deploy.intake import MAX_PIXELS, IntakeError, decode_bytes
from deploy.manifest import model_id
from deploy.predictor import Predictor
from deploy.preprocess import IMAGE_SUFFIXES

JOURNAL_NAME = ".deploy-watch-journal.jsonl"
ERROR_DIR = "error"
ERRORS_NAME = "errors.jsonl"
LOG_RETRY_S = 2.0  # how often a watcher whose log or journal cannot be written tries again
CRASH_ENV = "DEPLOY_WATCH_CRASH_AFTER"  # tests only: journal | log | move -> SIGKILL itself at that point


@dataclass
class WatchConfig:
    in_dir: Path
    bundle: Path
    done_dir: Path
    log_dir: Path | None = None  # default: DONE_DIR/decisions
    runtime: str = "auto"
    threads: int | None = None
    settle_ms: float = 500.0
    poll_ms: float = 100.0
    max_batch: int = 8
    broken_after_s: float = 10.0
    max_pixels: int = MAX_PIXELS  # the largest image decoded (its decoded bytes at most 3 per pixel: deploy.intake)


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class JournalUnavailable(DeployError):
    """The journal cannot be written (disk full, read-only): nothing of that write counts as committed."""


class Journal:
    """Append-only JSON lines: ``decided`` (and ``error``) entries carry everything needed to finish
    the file's work; ``logged`` and ``moved`` mark progress. Pending = committed but not moved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.done: set[str] = set()
        self.logged: set[str] = set()
        if path.is_file():
            for line in path.read_bytes().split(b"\n"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the partial last line of a crash
                op, ident = entry.get("op"), entry.get("id")
                if op in ("decided", "error"):
                    self.entries[ident] = entry
                elif op == "logged":
                    self.logged.add(ident)
                elif op == "moved":
                    self.done.add(ident)
        self._fd = _open_append(path)

    def pending(self) -> list[dict[str, Any]]:
        return [e for i, e in self.entries.items() if i not in self.done]

    @staticmethod
    def encode(entries: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
                       for e in entries).encode("utf-8")

    def _write(self, entries: list[dict[str, Any]], durable: bool) -> None:
        """All of ``entries`` or none: what a failing disk let through is cut off again (a fragment would glue
        the next entry to it), and ``JournalUnavailable`` says so."""
        data = self.encode(entries)
        start = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if durable:
                os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass  # ended with a newline when the journal is opened again
            raise JournalUnavailable(f"{self.path}: cannot write the journal ({exc.strerror or exc})") from None

    def commit(self, entries: list[dict[str, Any]]) -> None:
        """The commit point: once this returns, the decisions are never made again."""
        self._write(entries, durable=True)
        for e in entries:
            self.entries[e["id"]] = e

    def mark(self, op: str, ids: list[str]) -> None:
        # Not fsynced: a lost mark only makes the restart check the log / the file again.
        self._write([{"op": op, "id": i} for i in ids], durable=False)
        (self.logged if op == "logged" else self.done).update(ids)

    def compact(self) -> None:
        """Start an empty journal when nothing is pending (keeps it small; atomic rename)."""
        if self.pending():
            return
        try:
            write_bytes_atomic(self.path, b"")
        except OSError:
            return  # a full or read-only disk: the journal stays as it is, and correct
        os.close(self._fd)
        self._fd = _open_append(self.path)
        self.entries.clear()
        self.done.clear()
        self.logged.clear()

    def close(self) -> None:
        os.close(self._fd)


def _open_append(path: Path) -> int:
    """O_APPEND descriptor; a partial last line (a crash mid-write) is ended first, so the next entry
    starts on a line of its own instead of being glued to the fragment."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
    return fd


def _move(src: Path, dest: Path) -> None:
    """Move, idempotent: a repeated move after a crash finds the file already there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: DONE_DIR on another file system: copy, then remove
            raise
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
        src.unlink()


def _ids_in(path: Path) -> set[str]:
    """The ``id`` of every complete line of a JSON-lines file (none when it does not exist)."""
    ids: set[str] = set()
    if path.is_file():
        for line in path.read_bytes().split(b"\n"):
            try:
                ident = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if ident:
                ids.add(ident)
    return ids


def _unexpected(path: Path, exc: Exception) -> tuple[str, str]:
    """(kind, reason) of a failure nobody foresaw, for errors.jsonl and stderr."""
    return "unexpected", f"{readable(path.name)}: {type(exc).__name__}: {str(exc).strip()[:300]}"


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Watcher:
    def __init__(self, config: WatchConfig, out: Callable[[str], None] = print, err: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.out = out
        self.err = err or (lambda m: print(m, file=sys.stderr, flush=True))
        self.in_dir, self.done_dir = Path(config.in_dir), Path(config.done_dir)
        if not self.in_dir.is_dir():
            raise DeployError(f"{self.in_dir}: no such folder to watch")
        if self.done_dir.resolve() == self.in_dir.resolve() or self.in_dir.resolve() in self.done_dir.resolve().parents:
            raise DeployError(f"--done {self.done_dir} must be outside the watched folder {self.in_dir}")
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.predictor = Predictor.from_bundle(config.bundle, config.runtime, intra_op_threads=config.threads)
        self.model_id = model_id(config.bundle)
        self.log = DecisionLog(config.log_dir or self.done_dir / "decisions", durable=False)
        self.journal = Journal(self.done_dir / JOURNAL_NAME)
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, stable since)
        self._stuck: set[str] = set()  # committed but could not be moved: left to the restart's recovery
        self._error_ids: set[str] | None = None  # ids in errors.jsonl, read when the first error is written
        self.decided = self.errors = 0

    # -- recovery -------------------------------------------------------------------------------
    def recover(self) -> int:
        """Finish what a killed watcher committed; returns how many files it finished."""
        pending = self.journal.pending()
        unlogged = [e for e in pending if e["op"] == "decided" and e["id"] not in self.journal.logged]
        if unlogged:
            in_log = self._logged_ids([e["record"]["time"] for e in unlogged])
            for e in unlogged:
                if e["record"]["decision_id"] not in in_log:
                    self.log.append(DecisionRecord.from_dict(e["record"]))
            self.log.sync()
            self.journal.mark("logged", [e["id"] for e in unlogged])
        finished = []
        for e in pending:
            try:
                self._finish(e)
            except OSError as exc:  # stays pending: the next start tries again; the line goes on meanwhile
                self._stuck.add(name_from_json(e, "src"))
                self.err(f"error: cannot move {e['src']} to {e['dest']} ({exc.strerror or exc}); it is decided "
                         f"({e['id']}) and is moved when deploy watch restarts")
                continue
            finished.append(e["id"])
        if finished:
            self.journal.mark("moved", finished)
            fsync_path(self.done_dir)
        self.journal.compact()
        return len(finished)

    def _logged_ids(self, times: list[str]) -> set[str]:
        found: set[str] = set()
        for path in {log_path(self.log.folder, datetime.fromisoformat(t)) for t in times}:
            if path.is_file():
                for line in path.read_bytes().split(b"\n"):
                    try:
                        ident = json.loads(line).get("decision_id")
                    except (ValueError, AttributeError):
                        continue
                    if ident:
                        found.add(ident)
        return found

    def _finish(self, e: dict[str, Any]) -> None:
        """Move a committed file; an error's reason is written (and flushed) first, so a kill between the two
        leaves the reason on disk and the file pending, never a file in error/ without its reason."""
        src, dest = self.in_dir / name_from_json(e, "src"), self.done_dir / name_from_json(e, "dest")
        if src.exists() and _sha256(src) == e["sha256"]:
            if e["op"] == "error":
                self._append_error(e)
            _move(src, dest)
        elif not dest.exists():
            self.err(f"warning: {readable(str(src))} was decided ({e['id']}) but is gone and not in {readable(str(dest.parent))}")

    def _append_error(self, e: dict[str, Any]) -> None:
        """One line of ``errors.jsonl``, once per error id (a restart that finishes the move does not repeat it):
        one ``O_APPEND`` write of the whole line, then fsync."""
        path = self.done_dir / ERROR_DIR / ERRORS_NAME
        if self._error_ids is None:
            self._error_ids = _ids_in(path)
        if e["id"] in self._error_ids:
            return
        keys = ("id", "time", "src", "src_bytes", "dest", "sha256", "kind", "reason")
        data = (json.dumps({k: e[k] for k in keys if k in e}, ensure_ascii=False) + "\n").encode("utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_append(path)
        try:
            start = os.fstat(fd).st_size
            if os.write(fd, data) != len(data):
                os.ftruncate(fd, start)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._error_ids.add(e["id"])

    # -- scanning -------------------------------------------------------------------------------
    def ready_files(self) -> list[Path]:
        """Files whose size and mtime have been stable for settle_ms, oldest first."""
        now = time.monotonic()
        settle = self.config.settle_ms / 1000.0
        present: dict[str, tuple[int, int]] = {}
        with os.scandir(self.in_dir) as it:
            for entry in it:
                name = entry.name
                if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES) or name in self._stuck:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):  # a link could point anywhere on the disk: ignored
                        continue
                    st = entry.stat()
                except OSError:
                    continue  # renamed or removed under us
                present[name] = (st.st_size, st.st_mtime_ns)
        ready = []
        for name, key in present.items():
            prev = self._seen.get(name)
            if prev is None or prev[:2] != key:
                self._seen[name] = (*key, now)
            elif now - prev[2] >= settle:
                ready.append((key[1], name))
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        return [self.in_dir / name for _, name in sorted(ready)]

    # -- one batch ------------------------------------------------------------------------------
    def process(self, paths: list[Path]) -> int:
        """Decide, commit, log, move; returns the number of files finished. Whatever goes wrong for one file
        before the commit sends that file to error/ with its reason; the others are decided."""
        spec = self.predictor.manifest.preprocess
        good: list[tuple[Path, bytes, Any]] = []
        bad: list[tuple[Path, bytes, str, str]] = []  # path, bytes, kind, reason
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError:
                continue  # gone meanwhile
            try:
                good.append((path, data, decode_bytes(data, spec.channels, source=readable(path.name),
                                                      max_pixels=self.config.max_pixels).image))
            except IntakeError as exc:
                stable_for = time.monotonic() - self._seen.get(path.name, (0, 0, time.monotonic()))[2]
                if exc.kind in ("truncated_image", "empty_body") and stable_for < self.config.broken_after_s:
                    continue  # a writer may still be busy (or not yet started: created, not written); look again later
                bad.append((path, data, exc.kind, str(exc)))
            except Exception as exc:  # noqa: BLE001 - one file must not stop the line
                bad.append((path, data, *_unexpected(path, exc)))
        if not good and not bad:
            return 0
        t0 = time.perf_counter()
        good, decisions = self._decide(good, bad)
        infer_ms = (time.perf_counter() - t0) * 1000.0
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        entries = []
        taken: set[str] = set()
        for (path, data, _), d in zip(good, decisions):
            try:
                entries.append(self._decided_entry(path, data, d, now, infer_ms / len(good), taken))
            except Exception as exc:  # noqa: BLE001
                bad.append((path, data, *_unexpected(path, exc)))
        for path, data, kind, reason in bad:
            ident = uuid.uuid4().hex
            entry = {"op": "error", "id": ident, "sha256": hashlib.sha256(data).hexdigest(), "kind": kind,
                     "reason": readable(reason), "time": now}
            name_to_json(entry, "src", path.name)
            name_to_json(entry, "dest", self._dest(ERROR_DIR, path.name, ident, taken))
            entries.append(entry)
        self.journal.commit(entries)
        _crash_point("journal")
        decided = [e for e in entries if e["op"] == "decided"]
        for e in decided:
            self.log.append(DecisionRecord.from_dict(e["record"]))
        self.log.sync()
        self.journal.mark("logged", [e["id"] for e in decided])
        _crash_point("log")
        moved = []
        for e in entries:
            src = name_from_json(e, "src")
            self._seen.pop(src, None)
            try:
                self._finish(e)
            except OSError as exc:  # committed: the restart's recovery moves it; until then it is not taken again
                self._stuck.add(src)
                self.err(f"error: cannot move {e['src']} to {e['dest']} ({exc.strerror or exc}); it is decided "
                         f"({e['id']}) and is moved when deploy watch restarts")
                continue
            moved.append(e["id"])
            if e["op"] == "decided":
                r = e["record"]
                self.out(json.dumps({"image": e["src"], "label": r["label"], "confidence": r["confidence"],
                                     "score": r.get("score"), "action": r["action"], "dest": e["dest"],
                                     "model_id": self.model_id[:12]}, ensure_ascii=False))
            else:
                self.err(f"error: {e['src']} -> {e['dest']}: {e['reason']}")
        fsync_path(self.done_dir)
        _crash_point("move")
        self.journal.mark("moved", moved)
        if len(self.journal.entries) > 1000:
            self.journal.compact()
        self.decided += len(decided)
        self.errors += len(entries) - len(decided)
        return len(entries)

    def _decide(self, good: list[tuple[Path, bytes, Any]], bad: list[tuple[Path, bytes, str, str]]) -> tuple[list, list]:
        """(files, decisions): the batch in one call; if that raises, file by file, and a file whose own call
        raises goes to ``bad``."""
        if not good:
            return [], []
        try:
            return good, self.predictor.decide_images([g[2] for g in good])
        except Exception:  # noqa: BLE001 - which file? each alone tells
            pass
        kept, decisions = [], []
        for item in good:
            try:
                decisions += self.predictor.decide_images([item[2]])
                kept.append(item)
            except Exception as exc:  # noqa: BLE001
                bad.append((item[0], item[1], *_unexpected(item[0], exc)))
        return kept, decisions

    def _decided_entry(self, path: Path, data: bytes, d: Any, now: str, infer_ms: float, taken: set[str]) -> dict[str, Any]:
        """The journal entry of one decided file: exact names for the move, readable ones in the record."""
        ident = uuid.uuid4().hex
        dest = self._dest(d.action, path.name, ident, taken)
        record = DecisionRecord.from_decision(
            d, time=now, part_id=readable(path.stem), image_sha256=hashlib.sha256(data).hexdigest(),
            model_id=self.model_id, latency_ms={"infer": round(infer_ms, 3)}, source="watch",
            image=readable(str((self.done_dir / dest).resolve())), decision_id=ident)
        entry = {"op": "decided", "id": ident, "sha256": record.image_sha256, "record": asdict(record)}
        name_to_json(entry, "src", path.name)
        name_to_json(entry, "dest", dest)
        Journal.encode([entry])  # an entry that cannot be written fails here, for this file alone
        return entry

    def _dest(self, folder: str, name: str, ident: str, taken: set[str]) -> str:
        """DONE_DIR-relative destination; a name already there gets the decision id appended."""
        rel = f"{folder}/{name}"
        if (self.done_dir / rel).exists() or rel in taken:
            stem, dot, suffix = name.rpartition(".")
            rel = f"{folder}/{stem}-{ident[:12]}.{suffix}" if dot else f"{folder}/{name}-{ident[:12]}"
        taken.add(rel)
        return rel

    # -- the loop -------------------------------------------------------------------------------
    def batches(self, stop: threading.Event, once: bool = False) -> Iterator[int]:
        poll = self.config.poll_ms / 1000.0
        while not stop.is_set():
            ready = self.ready_files()
            done = 0
            try:
                for start in range(0, len(ready), self.config.max_batch):
                    if stop.is_set():
                        break
                    done += self.process(ready[start : start + self.config.max_batch])
            except (DecisionLogUnavailable, JournalUnavailable) as exc:
                self._wait_for_disk(exc, stop)
                continue
            yield done
            if once and not ready and not self._seen:
                return
            if not done:
                stop.wait(poll)

    def _wait_for_disk(self, exc: Exception, stop: threading.Event) -> None:
        """The log or the journal cannot be written: no file is moved as decided until its record is written.
        What the journal committed is finished by ``recover`` once the disk takes writes again; nothing new is
        taken meanwhile (it would be decided a second time)."""
        self.err(f"error: {exc}; the files stay in {readable(str(self.in_dir))} until it can be written "
                 f"(retrying every {LOG_RETRY_S:g} s)")
        while not stop.wait(LOG_RETRY_S):
            try:
                self.recover()
                return
            except (DecisionLogUnavailable, JournalUnavailable):
                continue

    def close(self) -> None:
        self.log.close()
        self.journal.compact()  # a clean stop leaves an empty journal
        self.journal.close()


def run_watch(config: WatchConfig, stop: threading.Event | None = None, once: bool = False,
              out: Callable[[str], None] = print) -> Watcher:
    """Recover, then watch until ``stop`` is set (or, with ``once``, until the folder is empty)."""
    watcher = Watcher(config, out=out)
    stop = stop or threading.Event()
    try:
        finished = watcher.recover()
        watcher.err(f"# watching {watcher.in_dir} -> {watcher.done_dir} (model {watcher.model_id[:12]}, "
                    f"{watcher.predictor.runtime.name}; {finished} file(s) finished from the journal)")
        for _ in watcher.batches(stop, once):
            pass
    finally:
        watcher.close()
    return watcher
