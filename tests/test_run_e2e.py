"""A tiny but real ``kit run``: teacher, CRLD student, metrics, a complete run directory."""

from __future__ import annotations

import csv
import json

import torch
from typer.testing import CliRunner

from kit.cli import app
from kit.models import load_model
from kit.run import run_line
from tests.conftest import tiny_recipe_dict, write_recipe

RUN_FILES = ["recipe.lock.yaml", "state.json", "split.csv", "views.png", "teacher.pt", "student.pt",
             "student-none.pt", "history.csv", "metrics.json", "run.log", "bundle/model.json", "verify/kpi.json",
             "report/report.html"]


def test_run_directory_is_complete(finished_run):
    for name in RUN_FILES:
        assert (finished_run / name).is_file(), name
    assert not (finished_run / "checkpoints").exists()
    state = json.loads((finished_run / "state.json").read_text())
    assert list(state["stages"]) == ["data", "teacher", "teacher-check", "student", "student-none", "evaluate", "export",
                                     "verify", "report"]
    assert all(s["status"] == "done" for s in state["stages"].values())
    assert not list(finished_run.glob(".*.tmp"))


def test_metrics_cover_both_models(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["classes"] == ["dent", "ok", "scratch"]
    for role in ("teacher", "student"):
        m = metrics[role]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
        assert set(m["per_class"]) == {"dent", "ok", "scratch"}
        assert sum(map(sum, m["confusion_matrix"])) == metrics["split_sizes"]["test"] == m["n"]
    assert 0.0 <= metrics["agreement"] <= 1.0
    assert metrics["distill_method"] == "crld"
    # the 1-epoch teacher is degenerate; conftest's recipe says teacher.check: warn, so it is a warning
    assert metrics["teacher_check"]["degenerate"] and metrics["warnings"][0].startswith("validation balanced accuracy")
    report = (finished_run / "report" / "report.html").read_text()
    assert 'id="training-warnings"' in report and "is no better than calling every part" in report


def test_history_has_crld_parts_per_epoch(finished_run):
    with (finished_run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["role"], r["epoch"]) for r in rows] == [("teacher", "1"), ("student", "1"), ("student", "2"),
                                                        ("student-none", "1"), ("student-none", "2")]
    student = rows[2]
    for col in ("ce", "within", "cross", "mask_weak_frac", "mask_strong_frac", "val_agreement", "images_per_s", "lr"):
        assert student[col] != "", col
    assert 0.0 <= float(student["mask_weak_frac"]) <= 1.0
    assert float(student["images_per_s"]) > 0


def test_checkpoints_rebuild_the_models(finished_run):
    student, body = load_model(finished_run / "student.pt", expect_classes=["dent", "ok", "scratch"])
    assert body["model_args"] == {"arch": "mobilenetv3_small_050", "num_classes": 3, "in_chans": 1}
    assert body["method"] == "crld" and body["preprocess"]["image_size"] == [32, 32]
    with torch.no_grad():
        assert student.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_same_seed_gives_the_same_metrics(tmp_path, tiny_line, finished_run):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_line))
    again = run_line(recipe, out_root=tmp_path / "runs", name="r2", stop_after="train")
    first = json.loads((finished_run / "metrics.json").read_text())
    for role in ("teacher", "student"):
        assert again.metrics[role]["confusion_matrix"] == first[role]["confusion_matrix"]
        assert again.metrics[role]["accuracy"] == first[role]["accuracy"]
    with (finished_run / "history.csv").open() as a, (again.run_dir / "history.csv").open() as b:
        losses_a = [r["loss"] for r in csv.DictReader(a)]
        losses_b = [r["loss"] for r in csv.DictReader(b)]
    assert losses_a == losses_b


def test_teacher_from_checkpoint_and_kd_student(tmp_path, tiny_line, finished_run):
    d = tiny_recipe_dict(tiny_line, **{"teacher.checkpoint": str(finished_run / "teacher.pt"), "distill": {"method": "kd"},
                                       "student.epochs": 1})
    result = run_line(write_recipe(tmp_path / "kd.yaml", d), out_root=tmp_path / "runs", name="kd", stop_after="train")
    first = json.loads((finished_run / "metrics.json").read_text())
    assert result.metrics["teacher"]["confusion_matrix"] == first["teacher"]["confusion_matrix"]
    with (result.run_dir / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["role"] for r in rows] == ["student", "student-none"] and rows[0]["kd"] != ""
    assert "export" not in json.loads((result.run_dir / "state.json").read_text())["stages"]
    assert not (result.run_dir / "bundle").exists()


def test_teacher_checkpoint_with_other_classes_is_refused(tmp_path, tiny_line, finished_run):
    import shutil

    root = tmp_path / "two"
    shutil.copytree(tiny_line / "ok", root / "ok")
    shutil.copytree(tiny_line / "dent", root / "dent")
    d = tiny_recipe_dict(root, **{"teacher.checkpoint": str(finished_run / "teacher.pt")})
    result = CliRunner().invoke(app, ["run", str(write_recipe(tmp_path / "r.yaml", d)), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "teacher.pt: checkpoint has 3 classes, the line's data has 2 (dent, ok)" in result.output


def test_resume_of_a_finished_run_changes_nothing(tmp_path, finished_run):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = json.loads((run_dir / "metrics.json").read_text())
    result = CliRunner().invoke(app, ["run", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["student"] == before["student"] and after["teacher"] == before["teacher"]
    assert (run_dir / "verify" / "kpi.json").read_bytes() == (finished_run / "verify" / "kpi.json").read_bytes()
    assert "export: already done" in result.output and "verify: already done" in result.output
    label = json.loads((run_dir / "verify" / "kpi.json").read_text())["release"]["label"]
    assert f"; verdict {label})" in result.output and f"verdict: {label}" in result.output  # resumed: the same one verdict
    plain = CliRunner().invoke(app, ["run", str(run_dir)])
    assert plain.exit_code == 1
    assert f"error: {run_dir}: is a run directory; add --resume to continue it" in plain.output
