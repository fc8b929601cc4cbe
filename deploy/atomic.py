"""Atomic file writes, for both sides of the kit: a crash never leaves a half-written file under its
final name, and a reader sees the old file or the new one, never half of one.

The one recipe: write a temporary file in the destination's folder (``os.replace`` is atomic only
within one file system, hence the same folder), ``fsync`` it (else a power cut after the rename can
leave the new name pointing at blocks never written), then ``os.replace`` it over the final name.
``kit.io`` re-exports these; ``deploy`` must not import ``kit``, so the recipe lives here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask can only be read by setting it, which races with threads


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder (created if missing), fsync
    it, give it the usual permissions and rename it to ``path``. For writers that want a file name
    (``torch.save``, ``onnx.save``, ``fig.savefig``); bytes and text have their own functions below."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8, written as given (no newline translation)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src``'s bytes to ``dst`` atomically (the folder is created)."""
    return write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def fsync_path(path: str | Path) -> None:
    """Flush a file, or a folder's entries (a rename inside it), to disk: what survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
