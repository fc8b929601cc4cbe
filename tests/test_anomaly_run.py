"""Anomaly mode end to end on tiny lines: ``kit run`` with ``task: anomaly`` (one epoch each, 32 px), a line of
good parts alone, the bundle on the edge with torch blocked, and the one verdict the CLI and the report state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import write_recipe
from tests.edge_bundle import BLOCK_HEAVY

REPO = Path(__file__).resolve().parent.parent


def anomaly_recipe(root: Path, name: str, **anomaly) -> dict:
    return {
        "task": "anomaly",
        "line": {"name": name, "ok_class": "ok", "parts_per_minute": 60},
        "data": {"root": str(root), "image_size": 32, "channels": "gray", "num_workers": 0,
                 "masks": str(root.parent / (root.name + "_masks")),
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0}},
        "views": {"weak": [{"HorizontalFlip": {"p": 0.5}}],
                  "strong": [{"lighting": {"severity": 3, "p": 1.0}}, {"blur": {"severity": 2}}]},
        "teacher": {"arch": "local_cnn_s", "epochs": 1, "batch_size": 8, "lr": 0.05},
        "student": {"arch": "local_cnn_s", "epochs": 1, "batch_size": 8, "lr": 0.003, "optimizer": "adamw"},
        "anomaly": {"max_false_reject_rate": 0.2, "review_fraction": 0.1, **anomaly},
        "export": {"formats": ["onnx", "onnx-int8"], "calibration_images": 16, "parity": {"int8_min_agreement": 0.5}},
        "verify": {"latency": {"warmup": 1, "iters": 5}, "corruptions": {"families": ["darker", "defocus"]}},
        "kpi": {"max_false_reject_rate": 0.5, "max_class_escape_rate": 1.0},
        "seed": 0, "device": "cpu",
    }


def _run(tmp: Path, recipe: dict, name: str) -> tuple[Path, str]:
    from kit.cli import app

    path = write_recipe(tmp / f"{name}.yaml", recipe)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp / "runs"), "--name", "r1"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    return tmp / "runs" / recipe["line"]["name"] / "r1", result.output


@pytest.fixture(scope="session")
def anomaly_run(tmp_path_factory):
    from kit.sample_line import generate_sample_line

    tmp = tmp_path_factory.mktemp("anomaly")
    generate_sample_line(tmp / "line", counts={"ok": 64, "scratch": 8, "dent": 8}, seed=1, size_px=48)
    return _run(tmp, anomaly_recipe(tmp / "line", "anomaly_line"), "anomaly_line")


@pytest.fixture(scope="session")
def good_only_run(tmp_path_factory):
    from kit.sample_line import generate_sample_line

    tmp = tmp_path_factory.mktemp("good_only")
    generate_sample_line(tmp / "line", counts={"ok": 64}, seed=2, size_px=48)
    return _run(tmp, anomaly_recipe(tmp / "line", "good_only_line"), "good_only_line")


def test_an_anomaly_run_goes_through_every_stage_and_certifies_false_rejects(anomaly_run):
    run_dir, output = anomaly_run
    state = json.loads((run_dir / "state.json").read_text())
    assert {"data", "teacher", "student", "evaluate", "export", "verify", "report"} <= set(state["stages"])
    split = (run_dir / "split.csv").read_text().splitlines()[1:]
    assert not [row for row in split if row.split(",")[-2] != "ok" and row.endswith(",train")], "defects trained on"
    manifest = json.loads((run_dir / "bundle" / "model.json").read_text())
    assert manifest["task"] == "anomaly" and manifest["classes"] == ["ok", "defect"]
    record = json.loads((run_dir / "verify" / "anomaly.json").read_text())
    cert = record["certificate"]
    assert cert["certified"] and cert["n_good"] == 16 and cert["false_reject_upper"] <= 0.2
    assert manifest["decision"]["reject_at"] == pytest.approx(cert["reject_at"])
    assert manifest["decision"]["certified"] is True
    op = record["operating_test"]
    assert op["false_reject_rate"]["n"] == 16 and op["escape_rate"]["n"] == 8
    assert set(op["per_class"]) == {"scratch", "dent"}
    assert record["localisation"]["status"] == "measured" and record["localisation"]["pointing"]["n"] == 8
    assert len(record["robustness"]["rows"]) == 10


def test_the_cli_and_the_report_state_the_same_verdict(anomaly_run):
    from kit.anomaly.record import read_anomaly_record
    from kit.anomaly.report import recommend

    run_dir, output = anomaly_run
    verdict = recommend(read_anomaly_record(run_dir)).verdict
    html = (run_dir / "report" / "report.html").read_text()
    assert f"verdict: {verdict}" in output
    assert f'">{verdict}</p>' in html.replace("&#39;", "'")


def test_the_bundle_decides_on_the_edge_with_torch_blocked(anomaly_run, tmp_path):
    run_dir, _ = anomaly_run
    image = next((run_dir.parent.parent.parent / "line" / "scratch").glob("*.png"))
    code = BLOCK_HEAVY + (
        "import sys, json\nfrom deploy.cli import app\n"
        f"sys.argv = ['deploy', 'predict', {str(run_dir / 'bundle')!r}, {str(image)!r}, '--heatmaps', {str(tmp_path)!r}]\n"
        "app()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["action"] in ("accept", "review", "reject") and isinstance(line["score"], float)
    assert line["label"] in ("ok", "defect")
    assert list(tmp_path.glob("*.png")), "no heatmap overlay written"


def test_a_folder_of_good_parts_alone_runs_end_to_end_and_says_what_it_needs(good_only_run):
    from kit.anomaly.record import read_anomaly_record
    from kit.anomaly.report import GO, recommend

    run_dir, output = good_only_run
    record = read_anomaly_record(run_dir)
    assert record.certificate["certified"]
    assert record.figures["auroc"] is None and record.operating_test["escape_rate"]["n"] == 0
    verdict = recommend(record)
    assert verdict.verdict != GO
    assert any("unmeasured" in reason for reason in verdict.reasons), verdict.reasons
    # the escape limit is 1.0 in this recipe: zero_failure_sample_size(1.0) is 1 defective part; the sentence says it
    assert any("the shadow period must bring at least" in reason for reason in verdict.reasons), verdict.reasons
    assert "unmeasured" in (run_dir / "report" / "report.html").read_text()


@pytest.fixture(scope="session")
def hybrid_run(tmp_path_factory):
    from kit.sample_line import generate_sample_line

    tmp = tmp_path_factory.mktemp("hybrid")
    generate_sample_line(tmp / "line", counts={"ok": 64, "scratch": 8, "dent": 8, "stain": 8}, seed=3, size_px=48)
    recipe = anomaly_recipe(tmp / "line", "hybrid_line", name_defects=True)
    recipe["data"]["classes"] = ["dent", "ok", "scratch"]  # stain stays out: a kind the namer never saw
    return _run(tmp, recipe, "hybrid_line")


def test_the_hybrid_names_the_kinds_it_knows_and_only_those(hybrid_run):
    from deploy.predictor import Predictor

    run_dir, _ = hybrid_run
    manifest = json.loads((run_dir / "bundle" / "model.json").read_text())
    assert manifest["classes"] == ["ok", "dent", "scratch", "unknown defect"]
    assert manifest["decision"]["kinds"] == ["dent", "scratch"]
    assert all(r > 0 for r in manifest["decision"]["kind_radius"].values())
    assert [o["name"] for o in manifest["outputs"]] == ["score", "anomaly_map", "kind_distance"]
    unseen = sorted((run_dir.parent.parent.parent / "line" / "stain").glob("*.png"))
    decisions = Predictor.from_bundle(run_dir / "bundle", "onnx").predict(unseen)
    assert len(decisions) == 8
    for d in decisions:
        assert d.label in manifest["classes"] and isinstance(d.score, float)
        assert (d.action == "accept") == (d.label == "ok")


def test_deploy_monitor_reads_the_anomaly_bundle_profile(anomaly_run, tmp_path):
    from deploy.cli import app as deploy_app

    run_dir, _ = anomaly_run
    profile = json.loads((run_dir / "bundle" / "profile.json").read_text())
    assert profile["task"] == "anomaly" and profile["images"] == 48  # validation + test
    good = run_dir.parent.parent.parent / "line" / "ok"
    result = CliRunner().invoke(deploy_app, ["monitor", str(run_dir / "bundle"), str(good), "--out", str(tmp_path)])
    assert result.exit_code in (0, 2), result.output  # 2: drift (good parts only differ from the held-out mix)
    assert (tmp_path / "drift.json").is_file()


def test_the_figures_recompute_from_the_scores_file(anomaly_run):
    import csv

    from kit.anomaly.metrics import auroc

    run_dir, _ = anomaly_run
    record = json.loads((run_dir / "verify" / "anomaly.json").read_text())
    with (run_dir / "verify" / "anomaly_scores.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    test = [r for r in rows if r["split"] == "test"]
    good = [r for r in test if r["label"] == "ok"]
    assert len(test) == record["test"]["n"] and len(good) == record["test"]["n_good"]
    assert sum(r["action"] == "reject" for r in good) == record["operating_test"]["false_reject_rate"]["k"]
    import numpy as np

    scores = np.array([float(r["score"]) for r in test])
    assert auroc(scores, np.array([r["label"] != "ok" for r in test])) == pytest.approx(record["figures"]["auroc"], abs=1e-6)
    reject_at = record["certificate"]["reject_at"]
    val_good = [float(r["score"]) for r in rows if r["split"] == "val" and r["label"] == "ok"]
    assert sum(s >= reject_at for s in val_good) == record["certificate"]["false_rejects_val"]


def test_the_report_names_the_mildest_line_change_that_breaks_good_parts(anomaly_run):
    from kit.anomaly.record import read_anomaly_record
    from kit.anomaly.report import breaking_points

    run_dir, _ = anomaly_run
    record = read_anomaly_record(run_dir)
    points = breaking_points(record, 0.5)
    assert {p["family"] for p in points} == {"darker", "defocus"}
    for p in points:
        rows = [r for r in record.robustness["rows"] if r["family"] == p["family"]]
        over = [r["severity"] for r in rows if r["false_reject"]["rate"] > 0.5]
        assert p["severity"] == (min(over) if over else None)
    html = (run_dir / "report" / "report.html").read_text()
    assert "Line conditions that make good parts look defective" in html
    from deploy.manifest import read_manifest
    from kit.physical import physical_level

    size = tuple(read_manifest(run_dir / "bundle").preprocess.image_size)
    for p in breaking_points(record, 0.5, size):  # in physical units, as the classifier's page one (issue 28)
        if p["severity"] is not None:
            assert p["physical"] == physical_level(p["family"], p["value"], size).text and p["physical"] in html


def test_the_verdict_is_stored_printed_alike_and_an_edit_reads_tampered(anomaly_run, tmp_path):
    """Issue 28: an anomaly run stores and prints its one verdict as a classifier run does, and `kit report` runs the
    same integrity checks (exit 4, TAMPERED named)."""
    import shutil

    from kit.cli import app
    from kit.verdict import EXIT_CODES, TAMPERED_EXIT

    run_dir, _ = anomaly_run
    record = json.loads((run_dir / "verify" / "anomaly.json").read_text())
    label = record["release"]["label"]
    assert f"verify: verdict {label}" in (run_dir / "run.log").read_text()
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    same = CliRunner().invoke(app, ["report", str(copy)])
    assert same.exit_code == EXIT_CODES[record["release"]["verdict"]] and f"verdict: {label}" in same.output, same.output
    record["figures"]["auroc"] = 0.999
    record["operating_test"]["false_reject_rate"]["rate"] = 0.0
    (copy / "verify" / "anomaly.json").write_text(json.dumps(record))
    edited = CliRunner().invoke(app, ["report", str(copy)])
    assert edited.exit_code == TAMPERED_EXIT, edited.output
    assert "TAMPERED: verify/anomaly.json changed after `kit verify`" in edited.output
    assert "operating_test.false_reject_rate: rate 0.0 is not k / n" in edited.output or \
        record["operating_test"]["false_reject_rate"]["k"] == 0
    assert "TAMPERED: not a release decision" in (copy / "report" / "report.html").read_text()
