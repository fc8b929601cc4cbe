"""The decision log on a full, failing or read-only disk (``deploy.decision_log``): nothing half-written is left
for the next record to be glued to, a record that cannot be written is an error the writer sees, and a folder
that cannot take the log is refused before anything is decided.

A full disk is simulated by ``FullDisk`` (``os.write`` on the log's files stops short, then fails with ENOSPC);
a read-only folder by ``chmod``, with ``os.open`` refusing in its place where the tests run as root (chmod does
not stop root)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.cli import app as deploy_app
from deploy.decision_log import DecisionLog, DecisionLogUnavailable, DecisionRecord, read_records
from deploy.errors import DeployError

pytestmark = pytest.mark.edge


class FullDisk:
    """``os.write`` to a file under ``folder``: while ``full``, the first write stops after half its bytes (what a
    disk filling up mid-record does) and every later one raises ENOSPC; other writes pass through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("tells the log's files by /proc/self/fd (Linux)")
        self.real, self.folder = os.write, str(folder.resolve())
        self.full, self.cut = False, False
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data: bytes) -> int:
        if self.full and self._under_folder(fd):
            if not self.cut:
                self.cut = True
                return self.real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)

    def _under_folder(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder + os.sep)
        except OSError:
            return False


def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``folder`` made read-only; as root (where chmod stops nothing) ``os.open`` refuses writes there instead."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)  # the caller makes it writable again
    if os.access(folder, os.W_OK):
        real_open, inside = os.open, str(folder.resolve()) + os.sep

        def refused(path, flags, *args, **kwargs):
            if str(Path(path).resolve()).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refused)
    return folder


def _record(i: int) -> DecisionRecord:
    return DecisionRecord(time=f"2026-12-01T08:00:{i:02d}+00:00", part_id=f"part-{i}", image_sha256="0" * 64,
                          label="ok", confidence=0.9, probabilities={"ok": 0.9, "dent": 0.1}, abstain=False,
                          action="accept", model_id="m", runtime="onnx", decision_id=f"d{i}")


def test_a_short_write_on_a_full_disk_is_cut_back_and_the_next_record_is_whole(tmp_path, monkeypatch):
    """A short write left a fragment; when space came back the next record was glued to it and every reader
    skipped that line: a decision answered to the line was lost from the log."""
    folder = tmp_path / "log"
    disk = FullDisk(monkeypatch, folder)
    with DecisionLog(folder, durable=True) as log:
        log.append(_record(0))
        disk.full = True
        for i in (1, 2):
            with pytest.raises(DecisionLogUnavailable, match="No space left on device"):
                log.append(_record(i))
            assert not log.available and log.failures == i
        path = next(folder.glob("decisions-*.jsonl"))
        assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 1  # the half record is gone
        assert log.probe() is False
        disk.full = False
        assert log.probe() is True and log.available
        log.append(_record(3))
    read = read_records([folder])
    assert [r.part_id for r in read.records] == ["part-0", "part-3"] and read.skipped_lines == 0


def test_a_fragment_that_could_not_be_cut_is_cut_before_the_next_record(tmp_path, monkeypatch):
    """Where even the cut fails (an I/O error), the next write removes the fragment first."""
    folder = tmp_path / "log"
    disk = FullDisk(monkeypatch, folder)
    real_truncate = os.ftruncate
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with DecisionLog(folder, durable=False) as log:
        log.append(_record(0))
        disk.full = True
        with pytest.raises(DecisionLogUnavailable):
            log.append(_record(1))
        assert next(folder.glob("decisions-*.jsonl")).read_bytes().count(b"part-1") == 1  # the fragment is still there
        disk.full = False
        monkeypatch.setattr(os, "ftruncate", real_truncate)
        log.append(_record(2))
    read = read_records([folder])
    assert [r.part_id for r in read.records] == ["part-0", "part-2"] and read.skipped_lines == 0


def test_a_log_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path, monkeypatch):
    """A read-only log folder: the station started, said ready, and answered every part 500."""
    folder = read_only(tmp_path / "ro", monkeypatch)
    try:
        with pytest.raises(DeployError) as refused:
            DecisionLog(folder)
    finally:
        folder.chmod(0o755)
    assert str(refused.value) == (f"--log-dir {folder}: cannot write the decision log there (Permission denied); every "
                                  "decision is recorded before it is answered, so nothing starts: fix the folder's "
                                  "permissions or free space, or give another --log-dir")


@pytest.mark.parametrize("command", ["serve", "watch"])
def test_log_dir_naming_a_file_is_one_line_not_a_traceback(tmp_path, command):
    from tests.edge_bundle import make_bundle

    bundle = make_bundle(tmp_path / "bundle")
    file = tmp_path / "decisions.txt"
    file.write_text("not a folder\n")
    (tmp_path / "in").mkdir()
    args = ["serve", str(bundle), "--port", "0"] if command == "serve" else \
        ["watch", str(tmp_path / "in"), "--bundle", str(bundle), "--done", str(tmp_path / "done")]
    result = CliRunner().invoke(deploy_app, [*args, "--log-dir", str(file)])
    assert result.exit_code == 1, result.output
    assert result.output == (f"error: --log-dir {file}: is a file, not a folder; give the folder the decision log goes "
                             "to (one decisions-YYYY-MM-DD.jsonl per UTC day)\n")
