"""``kit verify``'s localisation section and the report's heatmap section (issue 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from deploy.preprocess import PreprocessSpec
from kit.recipe import read_recipe_lock
from kit.rundir import read_split
from kit.sample_line import masks_dir
from kit.verify.localisation import localisation_section, score_maps


@pytest.fixture
def run_with_masks(finished_run, tiny_line, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny run whose recipe names a copy of the generated masks."""
    run_dir, masks = tmp_path / "run", tmp_path / "masks"
    shutil.copytree(finished_run, run_dir)
    shutil.copytree(masks_dir(tiny_line), masks)
    lock = run_dir / "recipe.lock.yaml"
    body = yaml.safe_load(lock.read_text(encoding="utf-8"))
    body["recipe"]["data"]["masks"] = str(masks)
    lock.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return run_dir, masks


def test_verify_skips_localisation_cleanly_without_masks(finished_run):
    section = json.loads((finished_run / "verify" / "kpi.json").read_text())["localisation"]
    assert section["status"] == "skipped" and section["reason"] == "data.masks is not set in the recipe"
    assert section["cost"]["method"] == "cam" and section["cost"]["batch"] == 1
    assert section["cost"]["with_heatmap_p50_ms"] > 0


def test_localisation_scores_teacher_and_student_and_counts_missing_masks(run_with_masks, tiny_line):
    run_dir, masks = run_with_masks
    recipe = read_recipe_lock(run_dir / "recipe.lock.yaml")
    paths, labels = read_split(run_dir, "test")
    defective = [(p, label) for p, label in zip(paths, labels) if label != "ok"]
    assert len(defective) >= 2
    missing_path, missing_label = defective[0]
    (masks / Path(missing_path).relative_to(tiny_line)).unlink()
    classes = ["dent", "ok", "scratch"]
    section = localisation_section(run_dir, recipe, paths, labels, classes, run_dir / "bundle", "onnx", log=lambda m: None)
    assert section["status"] == "measured" and section["scored_images"] == len(defective) - 1
    assert section["missing_masks"] == {"total": 1, "per_class": {missing_label: 1}}
    for model in ("student", "teacher"):
        scores = section["models"][model]
        assert scores["all"]["n"] == len(defective) - 1
        assert set(scores["per_class"]) <= {"dent", "scratch"} and "ok" not in scores["per_class"]
        assert 0 <= scores["all"]["pointing"]["rate"] <= 1 and 0 <= scores["all"]["energy_share"] <= 1
    assert section["models"]["student"]["method"] == "cam" and section["models"]["teacher"]["method"] == "cam"
    json.dumps(section)


def test_a_missing_masks_folder_is_skipped_with_its_reason(run_with_masks):
    run_dir, masks = run_with_masks
    shutil.rmtree(masks)
    recipe = read_recipe_lock(run_dir / "recipe.lock.yaml")
    paths, labels = read_split(run_dir, "test")
    section = localisation_section(run_dir, recipe, paths, labels, ["dent", "ok", "scratch"], run_dir / "bundle", "onnx",
                                   log=lambda m: None)
    assert section["status"] == "skipped" and section["reason"] == f"data.masks folder not found: {masks}"


def test_pointing_game_and_energy_share_golden_values():
    spec = PreprocessSpec(image_size=(8, 8), channels="gray")  # images of 8 px: tolerance 3 px
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True
    on = np.zeros((8, 8), np.float32)
    on[2, 2], on[6, 6] = 1.0, 1.0  # peak (first maximum) on the mask; half the energy inside
    near = np.zeros((8, 8), np.float32)
    near[5, 2] = 1.0  # 3 px below the mask: within tolerance, no energy inside
    far = np.zeros((8, 8), np.float32)
    far[7, 7] = 1.0
    scores = score_maps([on, near, far], [mask] * 3, ["dent", "dent", "scratch"], spec)
    assert scores["per_class"]["dent"]["pointing"]["k"] == 2 and scores["per_class"]["dent"]["n"] == 2
    assert scores["per_class"]["dent"]["energy_share"] == pytest.approx(0.25)
    assert scores["per_class"]["scratch"]["pointing"]["rate"] == 0.0
    assert scores["all"]["pointing"]["rate"] == pytest.approx(2 / 3)


def test_the_report_shows_overlays_and_the_localisation_table(run_with_masks):
    from kit.report.build import render_html
    from kit.rundir import kpi_path

    run_dir, _ = run_with_masks
    recipe = read_recipe_lock(run_dir / "recipe.lock.yaml")
    paths, labels = read_split(run_dir, "test")
    kpi = json.loads(kpi_path(run_dir).read_text())
    kpi["localisation"] = localisation_section(run_dir, recipe, paths, labels, kpi["classes"], run_dir / "bundle", "onnx",
                                               log=lambda m: None)
    kpi_path(run_dir).write_text(json.dumps(kpi))
    for lang, title, all_classes in (("en", "Where the model looks", "All defect classes"), ("ja", "モデルが見ている場所", "全欠陥クラス")):
        html = render_html(run_dir, lang)
        section = html[html.index('id="heatmaps"') :]
        assert title in html and all_classes in section
        assert section.count("data:image/png;base64,") >= 2, "one correct part per class at least"


def test_heatmap_cost_sentence_signs_its_difference():
    """Timing noise can make the heatmap's added cost negative: the sentence must read -0.06, not +-0.06."""
    from kit.report.i18n import translator
    from kit.report.heatmap_section import _cost

    t = translator("en")
    cost = {"method": "cam", "runtime": "onnx", "decision_p50_ms": 1.25, "with_heatmap_p50_ms": 1.19,
            "added_p50_ms": -0.0626, "added_p50_pct": -5.0}
    text = _cost(cost, t)
    assert "(-0.06 ms, -5 %;" in text and "+-" not in text
    assert "(+0.10 ms, +8 %;" in _cost(dict(cost, added_p50_ms=0.1, added_p50_pct=8.0), t)
