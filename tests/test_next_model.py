"""The next model: `student.init_from`, `previous:` and old vs new per class in kit verify, the gate and the report."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from deploy.manifest import MANIFEST_NAME, sha256_file
from deploy.predictor import Predictor
from deploy.replay import replay_images
from kit.errors import RecipeError
from kit.verdict import check, verdict
from kit.recipe import load_recipe, read_recipe_lock
from kit.report import build_report
from kit.rundir import read_split
from kit.run import run_line
from kit.feedback.shadow import shadow_period, write_shadow
from kit.verify import verify_run
from kit.verify.regression import compare_models, previous_section, regression_checks, with_regression_checks
from tests.conftest import tiny_recipe_dict, write_recipe


def test_compare_models_and_gate_checks():
    labels = np.array([0] * 10 + [1] * 10)
    old = labels.copy()
    new = labels.copy()
    new[:6] = 1  # six of class 0 now wrong
    out = compare_models(old, new, labels, ["a", "b"])
    a, b = out["per_class"]
    assert (a["old"], a["new"], a["diff"], a["verdict"]) == (1.0, 0.4, pytest.approx(-0.6), "worse")
    assert a["high"] < 0 and (b["diff"], b["verdict"]) == (0.0, "same")
    assert out["overall"]["diff"] == pytest.approx(-0.3)
    checks = regression_checks({**out, "gated": True})
    assert [(c["target"], c["passed"]) for c in checks] == [("kpi.no_regression[a]", False), ("kpi.no_regression[b]", True)]
    base = verdict([check("kpi.min_accuracy", "accuracy", "acc", 0.9, 0.8, ">=")])
    merged = with_regression_checks(base, {**out, "gated": True})
    assert not merged["passed"] and merged["failed"] == ["kpi.no_regression[a]"]
    assert with_regression_checks(base, {**out, "gated": False})["passed"]  # no_regression: false reports only
    assert with_regression_checks(base, None) is base


def test_recipe_fields(tmp_path, tiny_line):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(
        tiny_line, previous="runs/x/1", **{"student.init_from": "runs/x/1", "kpi.no_regression": False})))
    assert recipe.previous == "runs/x/1" and recipe.student.init_from == "runs/x/1" and recipe.kpi.no_regression is False
    assert load_recipe(write_recipe(tmp_path / "d.yaml", tiny_recipe_dict(tiny_line))).kpi.no_regression is None
    with pytest.raises(RecipeError, match="init_from"):
        load_recipe(write_recipe(tmp_path / "bad.yaml", tiny_recipe_dict(tiny_line, **{"teacher.init_from": "x"})))


def _constant_bundle(source: Path, dest: Path, class_index: int, num_classes: int) -> Path:
    """A copy of ``source`` whose ONNX model calls every part class ``class_index`` (a planted 'previous model')."""
    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(source, dest)
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    shape = manifest["input"]["shape"]
    bias = np.full((1, num_classes), -5.0, np.float32)
    bias[0, class_index] = 5.0
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=1),
         helper.make_node("Flatten", ["m"], ["f"], axis=1),
         helper.make_node("Mul", ["f", "zero"], ["z"]),
         helper.make_node("Add", ["z", "bias"], ["logits"])],
        "constant", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]), helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("bias", TensorProto.FLOAT, [1, num_classes], bias.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, dest / "model.onnx")
    manifest["artefacts"] = {"onnx": {**manifest["artefacts"]["onnx"], "sha256": sha256_file(dest / "model.onnx"),
                                      "bytes": (dest / "model.onnx").stat().st_size}}
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, finished_run, tiny_line):
    """A tiny run started from the finished one (its teacher, its student fine-tuned one epoch), exported; its
    `previous` is a planted bundle that calls every part the class the new model recognises worst."""
    tmp = tmp_path_factory.mktemp("next")
    planted = tmp / "previous"
    recipe = write_recipe(tmp / "next.yaml", tiny_recipe_dict(
        tiny_line, previous=str(planted), compare=[],
        **{"teacher.checkpoint": str(finished_run / "teacher.pt"), "student.init_from": str(finished_run),
           "student.epochs": 1, "export.formats": ["onnx"]}))
    result = run_line(recipe, out_root=tmp / "runs", name="r2", stop_after="export")
    run = result.run_dir
    classes = Predictor.from_bundle(run / "bundle", "onnx").classes
    paths, names = read_split(run, "test")
    new = [d.label for d in Predictor.from_bundle(run / "bundle", "onnx").predict_paths(paths)]
    recall = {c: np.mean([p == c for p, n in zip(new, names) if n == c]) for c in classes}
    worst = min(classes, key=lambda c: recall[c])
    assert recall[worst] == 0.0, f"the tiny model recognises every class ({recall}); nothing to plant"
    _constant_bundle(run / "bundle", planted / "bundle", classes.index(worst), len(classes))
    return run, worst, sum(n == worst for n in names)


def test_init_from_starts_from_the_previous_student(second_run, finished_run):
    run, _, _ = second_run
    assert f"student: initialised from {finished_run / 'student.pt'}" in (run / "run.log").read_text()


def test_verify_reports_old_vs_new_and_fails_on_the_planted_regression(second_run):
    run, worst, n_worst = second_run
    result = verify_run(run, log=lambda m: None)
    prev = result.kpi.previous.to_dict()
    rows = {r["class"]: r for r in prev["per_class"]}
    assert rows[worst]["old"] == 1.0 and rows[worst]["new"] == 0.0 and rows[worst]["n"] == n_worst
    assert rows[worst]["verdict"] == "worse" and rows[worst]["high"] == pytest.approx(-1.0)
    assert all(r["old"] == 0.0 for c, r in rows.items() if c != worst)  # the planted model knows one class
    assert prev["overall"]["n"] == result.kpi.test_images and prev["excluded_seen_by_previous"] == 0
    assert not result.passed and f"kpi.no_regression[{worst}]" in result.kpi.gate.failed
    gate_rows = list(csv.DictReader((run / "verify" / "gate.csv").open()))
    assert any(r["target"] == f"kpi.no_regression[{worst}]" and r["passed"] == "False" for r in gate_rows)


def test_old_model_is_scored_as_its_own_verification_did(second_run, finished_run):
    run, _, _ = second_run
    recipe = read_recipe_lock(run / "recipe.lock.yaml").model_copy(update={"previous": str(finished_run)})
    paths, names = read_split(run, "test")
    predictor = Predictor.from_bundle(run / "bundle", "onnx")
    labels = np.array([predictor.classes.index(n) for n in names])
    logits = np.stack([[d.probabilities[c] for c in predictor.classes] for d in predictor.predict_paths(paths)])
    out = previous_section(recipe, run, predictor.classes, logits, labels, log=lambda m: None)
    first = json.loads((finished_run / "verify" / "kpi.json").read_text())
    # same line, same split seed: the same test images, so the old bundle's accuracy is the one its own verify measured
    assert out["overall"]["old"] == pytest.approx(first["models"]["onnx"]["accuracy"])
    assert out["excluded_seen_by_previous"] == 0 and out["gated"] is True


def test_report_shows_old_vs_new_and_the_shadow_period(second_run, tmp_path):
    run, worst, _ = second_run
    if not (run / "verify" / "kpi.json").is_file():
        verify_run(run, log=lambda m: None)
    paths, names = read_split(run, "test")
    replay_images(Predictor.from_bundle(run / "bundle", "onnx"), paths, tmp_path / "logs",
                  start=datetime(2026, 12, 1, tzinfo=timezone.utc))
    with (tmp_path / "inspectors.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["part_id", "label"])
        w.writerows([(p.stem, n) for p, n in zip(paths, names)])
    shadow = write_shadow(shadow_period([tmp_path / "logs"], tmp_path / "inspectors.csv"), tmp_path / "shadow")
    html = build_report(run, shadow=shadow.folder, log=lambda m: None).html.read_text()
    assert 'id="previous-model"' in html and 'id="shadow-period"' in html
    assert f"Worse than before: {worst}." in html
    assert f"No regression against the previous model: {worst}" in html
    assert f"{len(paths)} parts were decided by the model and by the inspectors" in html
    ja = build_report(run, lang="ja", shadow=shadow.folder, log=lambda m: None).html.read_text()
    assert "前モデルとの比較" in ja and "シャドー運用期間" in ja
