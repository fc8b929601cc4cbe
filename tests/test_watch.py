"""``deploy watch``: files taken only when complete, decided once, logged, moved; exactly once
under SIGKILL (at fixed crash points and at random moments over a stream of 300 files)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.cli import app as deploy_app
from deploy.decision_log import read_records
from deploy.manifest import model_id
from deploy.watch import CRASH_ENV, JOURNAL_NAME, WatchConfig, run_watch
from tests.edge_bundle import SAMPLE, make_bundle, sample_images
from tests.edge_bundle import BLOCK_HEAVY

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]
FAST = ["--settle-ms", "30", "--poll-ms", "10"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", seed=0)


def _drop(src: Path, in_dir: Path, name: str | None = None) -> Path:
    """What line software does: write NAME.tmp, rename when complete."""
    dest = in_dir / (name or src.name)
    tmp = in_dir / f"{dest.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


def _predict(bundle: Path, paths: list[Path]) -> dict[str, dict]:
    result = CliRunner().invoke(deploy_app, ["predict", str(bundle), *map(str, paths), "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {Path(r["path"]).name: r for r in rows}


def _watch_records(done: Path):
    return [r for r in read_records([done / "decisions"]).records if r.source == "watch"]


def test_watch_decides_logs_and_moves_each_file(bundle, tmp_path):
    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    sources = sample_images(4)
    for src in sources:
        _drop(src, in_dir)
    (in_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64 + b"IEND\xaeB`\x82")  # complete-looking, undecodable
    (in_dir / "notes.txt").write_text("not an image: left alone")
    (in_dir / "writing.png.tmp").write_bytes(b"half")  # a write in progress: left alone
    secret = tmp_path / "outside.png"
    shutil.copy(sources[0], secret)
    (in_dir / "link.png").symlink_to(secret)  # a link could point anywhere on the disk: never read, never moved
    lines: list[str] = []
    watcher = run_watch(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=30, poll_ms=10),
                        once=True, out=lines.append)
    assert (watcher.decided, watcher.errors) == (12, 1)
    assert sorted(p.name for p in in_dir.iterdir()) == ["link.png", "notes.txt", "writing.png.tmp"]
    assert secret.is_file() and "outside" not in json.dumps(lines)
    expected = _predict(bundle, sources)
    records = {r.part_id: r for r in _watch_records(done)}
    assert len(records) == 12
    for name, want in expected.items():
        r = records[Path(name).stem]
        assert (r.label, r.action, r.abstain) == (want["label"], want["action"], want["abstain"])
        assert abs(r.confidence - want["confidence"]) <= 1e-6
        assert Path(r.image) == (done / want["action"] / name).resolve() and Path(r.image).is_file()
        assert r.model_id == model_id(bundle) and r.decision_id
    assert {json.loads(line)["image"] for line in lines} == set(expected)
    errors = [json.loads(line) for line in (done / "error" / "errors.jsonl").read_text().splitlines()]
    assert [(e["src"], e["kind"]) for e in errors] == [("broken.png", "corrupt_image")]
    assert (done / "error" / "broken.png").is_file()
    assert (done / JOURNAL_NAME).read_bytes() == b""  # compacted: nothing pending


def test_a_file_written_in_place_is_taken_only_when_complete(bundle, tmp_path):
    """A slow writer: the first half sits still longer than --settle-ms; it ends early, so the watcher
    waits, and decides the file once the rest is written. Driven scan by scan (``ready_files`` then
    ``process``, what the watch loop does), so what is asserted is what the watcher did with the half
    file, not whether a thread got to it within some time on a busy machine."""
    from deploy.watch import Watcher

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    data = sample_images(1)[0].read_bytes()
    watcher = Watcher(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0, broken_after_s=30),
                      out=lambda line: None)
    try:
        target = in_dir / "slow.png"
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            watcher.ready_files()
            assert watcher.ready_files() == [target]  # > settle: the half file is stable but incomplete
            assert watcher.process([target]) == 0
            assert target.exists() and not (done / "error").exists()
            fh.write(data[len(data) // 2 :])
        watcher.ready_files()  # the size changed: settling starts again
        assert watcher.process(watcher.ready_files()) == 1
    finally:
        watcher.close()
    assert not target.exists() and (watcher.decided, watcher.errors) == (1, 0)
    records = _watch_records(done)
    assert [r.part_id for r in records] == ["slow"] and not (done / "error").exists()


def test_an_empty_file_is_waited_for_like_a_cut_one(bundle, tmp_path):
    """A writer that creates the file and writes a moment later: a zero-byte file stable for --settle-ms
    is not yet broken; it gets --broken-after-s like a file that ends early, then is decided."""
    from deploy.watch import Watcher

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    target = in_dir / "late.png"
    target.write_bytes(b"")
    watcher = Watcher(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0, broken_after_s=30), out=lambda line: None)
    try:
        watcher.ready_files()
        ready = watcher.ready_files()
        assert ready == [target]
        assert watcher.process(ready) == 0  # not an error yet
        assert target.is_file() and not (done / "error").exists() and watcher.errors == 0
        target.write_bytes(sample_images(1)[0].read_bytes())
        watcher.ready_files()
        assert watcher.process(watcher.ready_files()) == 1
    finally:
        watcher.close()
    assert (watcher.decided, watcher.errors) == (1, 0) and not target.exists()
    assert [r.part_id for r in _watch_records(done)] == ["late"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_HEAVY)  # the watcher runs with torch & co blocked
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", **extra}


def _cmd(bundle: Path, in_dir: Path, done: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "deploy", "watch", str(in_dir), "--bundle", str(bundle), "--done", str(done),
            "--runtime", "onnx", "--max-batch", "4", *FAST, *extra]


def _unique_images(n: int) -> list[Path]:
    paths = sorted(SAMPLE.rglob("*.png"))
    assert len(paths) >= n
    return paths[:n]


def _moved(done: Path) -> int:
    """Files the watcher has finished (moved to DONE/<action>/)."""
    return sum(1 for p in done.rglob("*.png") if p.parent.name in ("accept", "reject", "review"))


def _assert_exactly_once(done: Path, in_dir: Path, sources: list[Path]) -> None:
    import hashlib

    want = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}
    records = _watch_records(done)
    by_sha = Counter(r.image_sha256 for r in records)
    assert set(by_sha) == want and max(by_sha.values()) == 1, [s for s, n in by_sha.items() if n > 1][:5]
    moved = [p for p in done.rglob("*.png") if p.parent.name in ("accept", "reject", "review")]
    assert len(moved) == len(sources) and not list(in_dir.glob("*.png"))
    assert sorted(Path(r.image).name for r in records) == sorted(p.name for p in moved)


@pytest.mark.parametrize("point", ["journal", "log", "move"])
def test_sigkill_at_each_crash_point_decides_every_file_once(bundle, tmp_path, point):
    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    sources = _unique_images(10)
    for src in sources:
        _drop(src, in_dir)
    crashed = subprocess.run(_cmd(bundle, in_dir, done, "--once"), env=_env(tmp_path, **{CRASH_ENV: point}),
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    pending = [json.loads(line) for line in (done / JOURNAL_NAME).read_text().splitlines() if line]
    assert any(e["op"] == "decided" for e in pending)
    finished = subprocess.run(_cmd(bundle, in_dir, done, "--once"), env=_env(tmp_path), capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert "file(s) finished from the journal" in finished.stderr and "# watching" in finished.stderr
    _assert_exactly_once(done, in_dir, sources)


def test_sigkill_at_random_moments_over_300_files(bundle, tmp_path):
    """A stream of 300 files arrives while the watcher is SIGKILLed at random moments and
    restarted; at the end every file is decided exactly once, logged once and moved."""
    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    sources = _unique_images(300)
    rng = random.Random(15)
    env = _env(tmp_path)
    # kills: SIGKILLs that hit a live watcher (it had not exited or crashed by itself); mid_work: those that
    # landed while it was working through the stream (it had moved files since it started watching, and
    # files were still waiting). The old ``kills += 1`` per round counted the loop, so ``kills == 8`` could not fail.
    kills, mid_work, in_window, fed, exits = 0, 0, 0, 0, []
    for round_ in range(8):
        for src in sources[fed : fed + 40]:  # the next part of the stream arrives
            _drop(src, in_dir)
        fed = min(fed + 40, len(sources))
        stderr = tmp_path / f"stderr-{round_}.txt"
        with open(stderr, "w") as err:
            proc = subprocess.Popen(_cmd(bundle, in_dir, done), env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60  # only a hang takes this long
        while "# watching" not in stderr.read_text():  # killed once it is deciding, not while importing
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.01)
        moved_at_start = _moved(done)
        while _moved(done) == moved_at_start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)  # it has started on this round's files: the kill lands in the stream, not before it
        time.sleep(rng.uniform(0.0, 0.02))
        waiting = bool(list(in_dir.glob("*.png")))
        working = _moved(done) > moved_at_start
        alive = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        exits.append(proc.wait(10))
        kills += alive and exits[-1] == -signal.SIGKILL
        mid_work += alive and waiting and working
        journal = [json.loads(line) for line in (done / JOURNAL_NAME).read_text().splitlines() if line.startswith("{")]
        moved = {e["id"] for e in journal if e["op"] == "moved"}
        in_window += any(e["op"] == "decided" and e["id"] not in moved for e in journal)
    for src in sources[fed:]:
        _drop(src, in_dir)
    final = subprocess.run(_cmd(bundle, in_dir, done, "--once"), env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    print(f"kill test: {kills} SIGKILLs ({mid_work} mid-work: files moved and files still waiting, {in_window} between "
          f"a journal commit and its move), {len(_watch_records(done))} decisions for {len(sources)} files")
    assert kills == 8, exits  # every round killed a watcher that was still running
    assert mid_work >= 2  # timing-dependent: at least some kills must land while the watcher works through files
    _assert_exactly_once(done, in_dir, sources)


def test_monitor_reads_the_watch_decision_log(bundle, tmp_path):
    """deploy monitor on the decision log alone: confidence, abstain and class mix from the records,
    imaging statistics from the images watch kept; darker images are flagged."""
    in_dir, done, dark_in, dark_done = tmp_path / "in", tmp_path / "done", tmp_path / "dark_in", tmp_path / "dark_done"
    in_dir.mkdir()
    dark_in.mkdir()
    sources = sample_images(20)
    for src in sources:
        _drop(src, in_dir)
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(dark_in / src.name), (img * 0.35).astype(np.uint8))
    for a, b in ((in_dir, done), (dark_in, dark_done)):
        run_watch(WatchConfig(a, bundle, b, runtime="onnx", settle_ms=0, poll_ms=5), once=True, out=lambda line: None)
    runner = CliRunner()
    same = runner.invoke(deploy_app, ["monitor", str(bundle), str(done / "decisions"), "--out", str(tmp_path / "m1")])
    assert same.exit_code == 0, same.output
    report = json.loads((tmp_path / "m1" / "drift.json").read_text())
    assert report["source"] == "decision log" and report["images"] == 60 and report["kept_images"] == 60
    assert report["status"] == "ok" and {r["check"] for r in report["checks"]} >= {"brightness", "confidence", "predicted_classes"}
    dark = runner.invoke(deploy_app, ["monitor", str(bundle), str(dark_done / "decisions"), "--out", str(tmp_path / "m2")])
    assert dark.exit_code == 2, dark.output
    checks = {r["check"]: r["status"] for r in json.loads((tmp_path / "m2" / "drift.json").read_text())["checks"]}
    assert checks["brightness"] == "drift"
    # a log from another model is refused with the reason; a crash's partial last line is skipped
    other = make_bundle(tmp_path / "other", seed=3)
    refused = runner.invoke(deploy_app, ["monitor", str(other), str(done / "decisions"), "--out", str(tmp_path / "m3")])
    assert refused.exit_code == 1 and "no decisions by this bundle's model" in refused.output
    log_file = next((done / "decisions").glob("decisions-*.jsonl"))
    with open(log_file, "ab") as fh:
        fh.write(b'{"time": "2026-')
    cut = runner.invoke(deploy_app, ["monitor", str(bundle), str(log_file), "--out", str(tmp_path / "m4")])
    assert cut.exit_code == 0 and "1 unreadable log line(s) skipped" in cut.output
    mixed = runner.invoke(deploy_app, ["monitor", str(bundle), str(log_file), str(in_dir), "--out", str(tmp_path / "m5")])
    assert mixed.exit_code == 1 and "not both in one call" in mixed.output


# -- a file the line cannot decide must never stop the line ----------------------------------------------------

NON_UTF8 = b"Pr\xfcfteil_\xe4.png"  # Latin-1 bytes: a Windows camera PC on a share mounted without a UTF-8 charset
NON_UTF8_BROKEN = b"kaputt_\xff.png"


def _non_utf8_names(in_dir: Path) -> tuple[str, str]:
    """The names as Python sees them on Linux (lone surrogates, os.fsdecode), created or skipped."""
    names = os.fsdecode(NON_UTF8), os.fsdecode(NON_UTF8_BROKEN)
    try:
        for name in names:
            (in_dir / name).write_bytes(b"")
            (in_dir / name).unlink()
    except (OSError, UnicodeEncodeError) as exc:
        pytest.skip(f"this file system refuses a non-UTF-8 file name ({exc})")
    return names


def _utf8(path: Path) -> str:
    """The file's text, which must be valid UTF-8 (strict decoding raises otherwise)."""
    return path.read_bytes().decode("utf-8")


def test_a_non_utf8_file_name_is_decided_and_moved_like_any_other(bundle, tmp_path):
    """``Prüfteil_ä.png`` written in Latin-1 crashed ``deploy watch`` in the journal's UTF-8 encoding, on every
    restart, and nothing after it was decided. Now it is decided and moved under its exact name, an undecodable
    file with such a name goes to error/ with its reason, and every record carries a readable UTF-8 name."""
    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    good, broken = _non_utf8_names(in_dir)
    source, plain = sample_images(2, ("scratch",))
    _drop(source, in_dir, good)
    _drop(plain, in_dir, "plain.png")
    (in_dir / broken).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64 + b"IEND\xaeB`\x82")  # complete-looking, undecodable
    result = subprocess.run(_cmd(bundle, in_dir, done, "--once"), env=_env(tmp_path), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert os.listdir(in_dir) == []
    want = _predict(bundle, [source, plain])
    action = want[source.name]["action"]
    assert os.listdir(os.fsencode(done / action)).count(NON_UTF8) == 1  # the exact bytes of the name
    assert (done / action / good).read_bytes() == source.read_bytes()
    assert sorted(os.listdir(os.fsencode(done / "error"))) == [b"errors.jsonl", NON_UTF8_BROKEN]
    records = {r.part_id: r for r in read_records([done / "decisions"]).records}
    assert set(records) == {"Pr\\xfcfteil_\\xe4", "plain"}
    odd = records["Pr\\xfcfteil_\\xe4"]
    assert (odd.label, odd.action) == (want[source.name]["label"], action)
    assert odd.image == str((done / action).resolve()) + "/Pr\\xfcfteil_\\xe4.png"
    assert '"part_id":"Pr\\\\xfcfteil_\\\\xe4"' in _utf8(next((done / "decisions").glob("decisions-*.jsonl")))
    errors = [json.loads(line) for line in _utf8(done / "error" / "errors.jsonl").splitlines()]
    assert [(e["src"], e["dest"], e["kind"]) for e in errors] == [("kaputt_\\xff.png", "error/kaputt_\\xff.png", "corrupt_image")]
    assert errors[0]["reason"] == ("kaputt_\\xff.png: the PNG header does not say the image's size (no IHDR chunk "
                                   "where PNG puts it); refused before decoding")
    lines = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert sorted(line["image"] for line in lines) == ["Pr\\xfcfteil_\\xe4.png", "plain.png"]
    stderr = result.stderr.decode("utf-8")  # valid UTF-8 too
    assert "error: kaputt_\\xff.png -> error/kaputt_\\xff.png: kaputt_\\xff.png: the PNG header does not say" in stderr
    assert "Traceback" not in stderr and (done / JOURNAL_NAME).read_bytes() == b""


@pytest.mark.parametrize("point", ["journal", "log"])
def test_a_non_utf8_name_is_found_again_by_the_journal_after_a_sigkill(bundle, tmp_path, point):
    """The journal keeps the name's exact bytes: a restart moves the same file, and decides nothing twice."""
    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    good, _ = _non_utf8_names(in_dir)
    source = sample_images(1)[0]
    _drop(source, in_dir, good)
    crashed = subprocess.run(_cmd(bundle, in_dir, done, "--once"), env=_env(tmp_path, **{CRASH_ENV: point}),
                             capture_output=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode("utf-8", "replace")
    assert (in_dir / good).is_file()  # committed, not yet moved
    _utf8(done / JOURNAL_NAME)  # the journal is valid UTF-8
    finished = subprocess.run(_cmd(bundle, in_dir, done, "--once"), env=_env(tmp_path), capture_output=True, timeout=60)
    assert finished.returncode == 0, finished.stderr.decode("utf-8", "replace")
    assert "1 file(s) finished from the journal" in finished.stderr.decode("utf-8")
    records = _watch_records(done)
    assert [r.part_id for r in records] == ["Pr\\xfcfteil_\\xe4"]
    assert os.listdir(in_dir) == [] and (done / records[0].action / good).read_bytes() == source.read_bytes()


def test_an_unexpected_failure_for_one_file_sends_it_to_error_and_the_line_goes_on(bundle, tmp_path, monkeypatch):
    """Any exception a file causes (here the model fails on one image, and only on it) ends with that file in
    error/ and its reason in errors.jsonl; the files around it are decided and the watcher keeps watching."""
    from deploy.predictor import Predictor

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    sources = sample_images(2)
    for src in sources:
        _drop(src, in_dir)
    cv2.imwrite(str(in_dir / "odd.png"), np.full((41, 43), 7, np.uint8))
    real = Predictor.decide_images

    def failing(self, images, *args, **kwargs):
        if any(image.shape[:2] == (41, 43) for image in images):
            raise RuntimeError("the model failed on this image")
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "decide_images", failing)
    lines: list[str] = []
    watcher = run_watch(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0, poll_ms=5), once=True,
                        out=lines.append)
    assert (watcher.decided, watcher.errors) == (6, 1) and os.listdir(in_dir) == []
    assert (done / "error" / "odd.png").is_file() and len(lines) == 6
    errors = [json.loads(line) for line in (done / "error" / "errors.jsonl").read_text().splitlines()]
    assert [(e["src"], e["kind"], e["reason"]) for e in errors] == \
        [("odd.png", "unexpected", "odd.png: RuntimeError: the model failed on this image")]
    assert sorted(r.part_id for r in _watch_records(done)) == sorted(p.stem for p in sources)


def test_deploy_predict_prints_a_non_utf8_name_in_its_readable_form(bundle, tmp_path):
    """The same name given to ``deploy predict`` (directly and inside a folder): one valid UTF-8 JSON line each,
    with and without heatmaps, instead of a UnicodeEncodeError on stdout."""
    folder = tmp_path / "parts"
    folder.mkdir()
    good, _ = _non_utf8_names(folder)
    source = sample_images(1, ("scratch",))[0]
    shutil.copyfile(source, folder / good)
    want = _predict(bundle, [source])[source.name]
    for extra in ([], ["--heatmaps", str(tmp_path / "maps")]):
        result = subprocess.run([sys.executable, "-m", "deploy", "predict", str(bundle), str(folder), str(folder / good),
                                 "--runtime", "onnx", *extra], env=_env(tmp_path), capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
        rows = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines() if line.startswith("{")]
        assert [row["path"] for row in rows] == [str(folder) + "/Pr\\xfcfteil_\\xe4.png"] * 2
        assert {(row["label"], row["action"]) for row in rows} == {(want["label"], want["action"])}


@pytest.mark.parametrize("written", ["first half", "all but the page table", "no page offset yet"])
def test_a_tiff_written_in_place_is_waited_for_not_sent_to_error(bundle, tmp_path, written):
    """TIFF has no end marker: a TIFF still being written went to error/ as corrupt and was never decided.
    Its page table (written last) or its strips pointing past the end now say it is not complete yet."""
    from deploy.watch import Watcher

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    source = sample_images(1, ("scratch",))[0]
    data = cv2.imencode(".tif", cv2.imread(str(source), cv2.IMREAD_GRAYSCALE))[1].tobytes()
    part = {"first half": data[: len(data) // 2], "all but the page table": data[: len(data) - 40],
            "no page offset yet": data[:4] + b"\0\0\0\0" + data[8:]}[written]
    target = in_dir / "slow.tif"
    watcher = Watcher(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0, broken_after_s=30),
                      out=lambda line: None)
    try:
        target.write_bytes(part)
        watcher.ready_files()
        assert watcher.ready_files() == [target]
        assert watcher.process([target]) == 0  # before: moved to error/ as corrupt_image
        assert target.exists() and not (done / "error").exists() and watcher.errors == 0
        target.write_bytes(data)
        watcher.ready_files()
        assert watcher.process(watcher.ready_files()) == 1
    finally:
        watcher.close()
    assert (watcher.decided, watcher.errors) == (1, 0) and not target.exists()
    [record] = _watch_records(done)
    assert (record.part_id, record.label) == ("slow", _predict(bundle, [source])[source.name]["label"])


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process: nothing after it runs, nothing catches it."""


@pytest.mark.parametrize("kill", ["after the move", "before the move"])
def test_a_kill_between_moving_a_bad_file_and_writing_its_reason_loses_no_reason(bundle, tmp_path, monkeypatch, kill):
    """The bad file was moved to error/ first and its reason written after: a kill in between left the file in
    error/ and no reason anywhere, after any number of restarts. The reason is now written (and flushed) first,
    once per error id: a restart finishes the move and writes no second line."""
    import deploy.watch as watch

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    (in_dir / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64 + b"IEND\xaeB`\x82")
    real_move = watch._move

    def killed_move(src: Path, dest: Path) -> None:
        if kill == "after the move":
            real_move(src, dest)
        raise _Killed()

    monkeypatch.setattr(watch, "_move", killed_move)
    watcher = watch.Watcher(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0), out=lambda line: None)
    watcher.ready_files()
    with pytest.raises(_Killed):
        watcher.process(watcher.ready_files())
    watcher.log.close()
    monkeypatch.setattr(watch, "_move", real_move)
    restarted = run_watch(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0, poll_ms=5), once=True,
                          out=lambda line: None)
    assert restarted.errors == 0  # nothing decided twice: the journal finished the first watcher's work
    assert os.listdir(in_dir) == [] and (done / "error" / "bad.png").is_file()
    errors = [json.loads(line) for line in (done / "error" / "errors.jsonl").read_text().splitlines()]
    assert [(e["src"], e["kind"]) for e in errors] == [("bad.png", "corrupt_image")]
    assert errors[0]["reason"].startswith("bad.png: the PNG header does not say the image's size")


def test_a_decision_log_that_cannot_be_written_holds_the_files_until_it_can(bundle, tmp_path, monkeypatch):
    """A full disk under the decision log stopped deploy watch with a traceback. Now no file is moved as
    decided until its record is written; the watcher retries, and once the disk takes writes again every file
    is decided once and logged once."""
    import threading

    import deploy.watch as watch
    from deploy.decision_log import DecisionLog, DecisionLogUnavailable

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    sources = sample_images(2)
    for src in sources:
        _drop(src, in_dir)
    real_append, full = DecisionLog.append, threading.Event()
    full.set()

    def append(self, record):
        if full.is_set():
            raise DecisionLogUnavailable("the decision log cannot be written (decisions-x.jsonl: No space left on device)")
        return real_append(self, record)

    monkeypatch.setattr(DecisionLog, "append", append)
    monkeypatch.setattr(watch, "LOG_RETRY_S", 0.02)
    messages: list[str] = []
    watcher = watch.Watcher(WatchConfig(in_dir, bundle, done, runtime="onnx", settle_ms=0, poll_ms=5),
                            out=lambda line: None, err=messages.append)
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [None for _ in watcher.batches(stop)])
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while not any("No space left on device" in m for m in messages):
            assert time.monotonic() < deadline and loop.is_alive(), messages
            time.sleep(0.01)
        assert sorted(p.name for p in in_dir.iterdir()) == sorted(p.name for p in sources)  # not moved as decided
        full.clear()  # space freed
        while any(in_dir.iterdir()):
            assert time.monotonic() < deadline and loop.is_alive(), messages
            time.sleep(0.01)
    finally:
        stop.set()
        loop.join(30)
        watcher.close()
    records = _watch_records(done)
    assert sorted(r.part_id for r in records) == sorted(p.stem for p in sources)  # each once
    assert not (done / "error").exists()
    assert messages[0].startswith("error: the decision log cannot be written") and "retrying every 0.02 s" in messages[0]
