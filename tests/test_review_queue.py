"""deploy review-queue: what needs a person, capped per day, never twice, torch-free."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy.decision_log import DecisionLog, DecisionRecord
from deploy.review_queue import ReviewPolicy, build_review_queue
from tests.edge_bundle import BLOCK_HEAVY

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["crack", "ok", "scratch"]


def _image(path: Path, i: int) -> str:
    img = np.full((16, 16), i % 251, np.uint8)
    img[0, 0] = i // 251
    cv2.imwrite(str(path), img)
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def station(tmp_path):
    """Two days of 60 parts (20 per predicted class); 4 abstained per day; confidence rises with the part number."""
    images, logs = tmp_path / "images", tmp_path / "logs"
    images.mkdir()
    with DecisionLog(logs, durable=False) as log:
        for day in (1, 2):
            for j in range(60):
                i = day * 100 + j
                sha = _image(images / f"part{i}.png", i)
                label = CLASSES[j % 3]
                abstain = j < 4
                conf = 0.5 + j / 200
                log.append(DecisionRecord(
                    time=f"2026-12-0{day}T08:{j:02d}:00+00:00", part_id=f"part{i}", image_sha256=sha, label=label,
                    confidence=conf, probabilities={c: (conf if c == label else (1 - conf) / 2) for c in CLASSES},
                    abstain=abstain, action="review" if abstain else ("accept" if label == "ok" else "reject"),
                    model_id="m", runtime="onnx", image=f"part{i}.png"))
    return logs, images


def _rows(queue: Path) -> list[dict]:
    with (queue / "queue.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_reasons_audit_sample_and_copies(station, tmp_path):
    logs, images = station
    result = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(lowest=3, audit_rate=0.1))
    rows = _rows(tmp_path / "q")
    assert result.by_reason == {"abstained": 8, "audit": 12, "drift": 0, "low_confidence": 6}
    assert len(rows) == 26 and len({r["part_id"] for r in rows}) == 26
    # per day: the 4 abstained, ceil(10 % of ~19) = 2 per predicted class, the 3 least confident decided alone
    day1 = [r for r in rows if r["time"].startswith("2026-12-01")]
    assert sorted(r["part_id"] for r in day1 if r["reason"] == "abstained") == ["part100", "part101", "part102", "part103"]
    assert {r["model_label"] for r in day1 if r["reason"] == "audit"} == set(CLASSES)
    assert sum(r["reason"] == "audit" for r in day1) == 6
    low = sorted((r for r in day1 if r["reason"] == "low_confidence"), key=lambda r: float(r["confidence"]))
    assert [r["part_id"] for r in low] and all(float(r["confidence"]) <= 0.53 for r in low)
    assert all(r["label"] == "" for r in rows) and list(rows[0]) == ["path", "sha256", "part_id", "time", "model_label",
                                                                      "confidence", "action", "reason", "label", "queued_at",
                                                                      "overlay", "score", "labelled_by", "labelled_at"]
    assert all(r["score"] == "" for r in rows)  # a classifier's decisions carry no anomaly score
    assert all(r["overlay"] == "" for r in rows)  # no bundle given: no heatmap overlays
    for r in rows:  # the copies are the logged images
        import hashlib

        assert hashlib.sha256((tmp_path / "q" / r["path"]).read_bytes()).hexdigest() == r["sha256"]


def test_daily_cap_keeps_room_for_the_audit(station, tmp_path):
    logs, images = station
    result = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(lowest=10, audit_rate=0.1, max_per_day=10))
    rows = _rows(tmp_path / "q")
    per_day = {d: [r for r in rows if r["time"].startswith(d)] for d in ("2026-12-01", "2026-12-02")}
    assert all(len(v) == 10 for v in per_day.values())
    assert all(sum(r["reason"] == "audit" for r in v) >= 1 for v in per_day.values())  # never crowded out
    assert all(sum(r["reason"] == "abstained" for r in v) == 4 for v in per_day.values())
    assert result.over_cap == 2 * (4 + 6 + 10 - 10)


def test_never_queued_twice_across_runs(station, tmp_path):
    logs, images = station
    first = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(lowest=2, max_per_day=5))
    rows = _rows(tmp_path / "q")
    rows[0]["label"] = "crack"  # a reviewer's work is kept
    with (tmp_path / "q" / "queue.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(lowest=2, max_per_day=5))
    assert len(first.added) == 10 and len(again.added) == 0 and again.already_queued == 10
    more = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(lowest=2, max_per_day=8))  # a higher cap adds new parts only
    rows = _rows(tmp_path / "q")
    assert len(more.added) == 6 and len(rows) == 16 and len({r["part_id"] for r in rows}) == 16
    assert rows[0]["label"] == "crack"
    state = json.loads((tmp_path / "q" / ".queue-state.json").read_text())
    assert len(state["queued"]) == 16


def test_classes_drift_days_and_missing_images(station, tmp_path):
    logs, images = station
    (images / "part205.png").unlink()
    result = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(abstained=False, audit_rate=0, classes=("scratch",),
                                                                      drift_days=("2026-12-02",)))
    rows = _rows(tmp_path / "q")
    assert {r["model_label"] for r in rows} == {"scratch"} and {r["reason"] for r in rows} == {"drift"}
    assert len(rows) == 19 - 1 and result.missing_images == ["part:part205"]


def test_runs_without_torch_and_words_errors(station, tmp_path):
    logs, images = station
    (tmp_path / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    cmd = [sys.executable, "-m", "deploy", "review-queue", "--log", str(logs), "--images", str(images), "--out", str(tmp_path / "q")]
    ok = subprocess.run(cmd + ["--lowest", "1", "--max-per-day", "6"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("queued 12 parts (abstained 8, audit 4, drift 0, low_confidence 0)")
    bad = subprocess.run(cmd + ["--classes", "dent"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: class 'dent' is not among the logged classes (crack, ok, scratch)"


def test_queued_parts_get_heatmap_overlays_from_the_bundle(station, tmp_path):
    from tests.edge_bundle import make_bundle

    logs, images = station
    bundle = make_bundle(tmp_path / "bundle")
    build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(lowest=1, audit_rate=0.0), bundle=bundle)
    rows = _rows(tmp_path / "q")
    assert rows and all(r["overlay"].endswith(".overlay.png") for r in rows)
    for r in rows:
        overlay = cv2.imread(str(tmp_path / "q" / r["overlay"]), cv2.IMREAD_UNCHANGED)
        assert overlay is not None and overlay.ndim == 3 and overlay.shape[0] >= 16


def test_a_part_named_with_a_non_utf8_byte_is_logged_and_queued_with_a_readable_name(tmp_path):
    """A part id or image name holding a byte that is not UTF-8 (``os.fsdecode`` of a Latin-1 file name: lone
    surrogates) is written in a readable, valid UTF-8 form (``\\xfc``) to the decision log and to queue.csv,
    also when another writer's log spells it with a JSON surrogate escape."""
    images, logs = tmp_path / "images", tmp_path / "logs"
    images.mkdir()
    probabilities = {"crack": 0.2, "ok": 0.3, "scratch": 0.5}
    common = dict(label="scratch", confidence=0.5, probabilities=probabilities, abstain=True, action="review",
                  model_id="m", runtime="onnx")
    with DecisionLog(logs, durable=False) as log:
        log.append(DecisionRecord(time="2026-12-01T08:00:00+00:00", part_id=os.fsdecode(b"Pr\xfcfteil_\xe4"),
                                  image_sha256=_image(images / "a.png", 1), image=os.fsdecode(b"/line/Pr\xfcfteil_\xe4.png"),
                                  **common))
    log_file = next(logs.glob("decisions-*.jsonl"))
    assert '"part_id":"Pr\\\\xfcfteil_\\\\xe4"' in log_file.read_bytes().decode("utf-8")
    other = {"time": "2026-12-01T08:01:00+00:00", "part_id": "Teil_\udce4", "image_sha256": _image(images / "b.png", 2),
             "image": "b.png", **common}
    with open(log_file, "a", encoding="ascii") as fh:  # another writer: JSON's \udce4 escape, a lone surrogate when read
        fh.write(json.dumps(other) + "\n")
    result = build_review_queue([logs], images, tmp_path / "q", ReviewPolicy(audit_rate=0.0))
    assert len(result.added) == 2 and result.missing_images == []
    text = (tmp_path / "q" / "queue.csv").read_bytes().decode("utf-8")  # strict: valid UTF-8
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["part_id"] for r in rows] == ["Pr\\xfcfteil_\\xe4", "Teil_\\xe4"]


FORMULAS = ['=HYPERLINK("http://example.invalid/x","click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
            "\tlead-tab", "\rlead-cr", "'quoted"]


def test_a_part_id_a_spreadsheet_would_run_is_written_as_text(tmp_path):
    """A part id ``=HYPERLINK(...)`` landed verbatim in queue.csv: a link (or a computation) in the reviewer's
    spreadsheet. Cells that start with = + - @ tab or CR get a quote in front (OWASP); numbers do not; a second
    run reads its own rows back exactly and queues nothing twice."""
    images, logs, out = tmp_path / "images", tmp_path / "logs", tmp_path / "queue"
    images.mkdir()
    with DecisionLog(logs, durable=False) as log:
        for i, part_id in enumerate(FORMULAS + ["-17", "plain-part"]):
            sha = _image(images / f"p{i}.png", i)
            log.append(DecisionRecord(time=f"2026-12-01T08:{i:02d}:00+00:00", part_id=part_id, image_sha256=sha,
                                      label="ok", confidence=0.5, probabilities={"ok": 0.5, "crack": 0.5}, abstain=True,
                                      action="review", model_id="m", runtime="onnx", image=f"p{i}.png", score=-0.25))
    first = build_review_queue([logs], images, out, ReviewPolicy(audit_rate=0.0))
    assert len(first.added) == 9
    raw = {row["part_id"]: row for row in _rows(out)}
    assert set(raw) == {"'" + f for f in FORMULAS} | {"-17", "plain-part"}
    assert {row["score"] for row in raw.values()} == {"-0.25"}  # a number stays a number
    second = build_review_queue([logs], images, out, ReviewPolicy(audit_rate=0.0))
    assert (len(second.added), second.already_queued) == (0, 9)
    assert {row["part_id"] for row in _rows(out)} == set(raw)  # read back without the quote, written with it once


def test_every_csv_the_kit_writes_for_people_escapes_formulas(tmp_path):
    from deploy.spreadsheet import escape_cell, unescape_cell
    from kit.io import write_csv_atomic

    write_csv_atomic(tmp_path / "parts.csv", [{"part_id": f, "delta": -0.5, "n": -3} for f in FORMULAS])
    with (tmp_path / "parts.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["part_id"] for r in rows] == ["'" + f for f in FORMULAS]
    assert {(r["delta"], r["n"]) for r in rows} == {("-0.5", "-3")}
    assert [unescape_cell(escape_cell(v)) for v in FORMULAS + ["-17", "x", ""]] == FORMULAS + ["-17", "x", ""]
