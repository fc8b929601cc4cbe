"""``deploy serve --keep-images DIR``: every decided image kept under its sha256, so ``deploy review-queue`` can copy
the parts a person should see and ``deploy monitor`` can check the imaging statistics of served parts.

Layout: ``DIR/<first 2 hex>/<sha256>.<png|jpg|bmp|tif>``, the bytes exactly as received; the decision log's
``image`` field names the file. The same image sent twice is stored once. Retention: beyond
``--keep-images-max-count`` files or ``--keep-images-max-gb`` the oldest (by the time they were last sent) are
removed. The path is chosen (and logged) at once and the bytes follow on one background thread, so a slow disk never
slows an answer; when more than ``MAX_PENDING`` images wait for the disk, a part is decided and logged without a
kept image (``image`` null) and stderr says so, at most once a minute.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.atomic import write_bytes_atomic
from deploy.errors import DeployError
from deploy.intake import sniff_format

SUFFIX = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "tiff": ".tif"}
MAX_PENDING = 256


def check_image_folder(folder: str | Path) -> Path:
    """``--keep-images DIR`` created if missing and proven writable (a file made and removed there), before the model
    loads; ``DeployError`` in one line otherwise. A read-only folder gave a traceback at start."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DeployError(f"--keep-images {folder}: is a file, not a folder; give the folder kept images go to")
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as exc:
        raise DeployError(f"--keep-images {folder}: cannot write kept images there ({exc.strerror or exc}); fix the "
                          "folder's permissions, or give another --keep-images") from None
    return folder


class ImageStore:
    def __init__(self, folder: str | Path, max_count: int = 0, max_bytes: int = 0) -> None:
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_count, self.max_bytes = max_count, max_bytes
        self._index: OrderedDict[str, tuple[Path, int]] = OrderedDict()  # sha256 -> (file, bytes), oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self._pending = 0
        self._warned_at = 0.0
        self.dropped = 0
        self._scan()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="keep-images")

    def _scan(self) -> None:
        """What an earlier run kept, oldest first, so the limits hold across restarts."""
        found = []
        for path in self.folder.glob("??/*"):
            if path.is_file() and path.suffix in SUFFIX.values() and len(path.stem) == 64:
                s = path.stat()
                found.append((s.st_mtime_ns, path.stem, path, s.st_size))
        for _, sha, path, size in sorted(found):
            self._index[sha] = (path, size)
            self._bytes += size
        self._evict()

    def path_for(self, data: bytes, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}{SUFFIX.get(sniff_format(data) or '', '.bin')}"

    def keep(self, data: bytes, sha256: str) -> str | None:
        """Queue ``data`` for the disk; the path the decision log names, or None when too many wait already."""
        path = self.path_for(data, sha256)
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                self._warn()
                return None
            self._pending += 1
        self._writer.submit(self._write, path, data, sha256)
        return str(path)

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            print(f"error: --keep-images {self.folder}: {MAX_PENDING} images wait for the disk; parts are decided "
                  f"without a kept image ({self.dropped} so far)", file=sys.stderr, flush=True)

    def _write(self, path: Path, data: bytes, sha256: str) -> None:
        try:
            if path.is_file():  # sent before: keep it, as the newest
                os.utime(path)
            else:
                write_bytes_atomic(path, data)
            with self._lock:
                if sha256 in self._index:
                    self._index.move_to_end(sha256)
                else:
                    self._index[sha256] = (path, len(data))
                    self._bytes += len(data)
                self._evict()
        except OSError as exc:
            print(f"error: --keep-images: {path}: {exc}", file=sys.stderr, flush=True)
        finally:
            with self._lock:
                self._pending -= 1

    def _evict(self) -> None:
        """Remove the oldest files beyond the limits (called with the lock held, or before the writer starts)."""
        while self._index and ((self.max_count and len(self._index) > self.max_count)
                               or (self.max_bytes and self._bytes > self.max_bytes)):
            _, (path, size) = self._index.popitem(last=False)
            self._bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    @property
    def count(self) -> int:
        return len(self._index)

    @property
    def bytes(self) -> int:
        return self._bytes

    def flush(self) -> None:
        """Wait until every queued image is on disk (tests, shutdown)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
