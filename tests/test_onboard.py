"""Onboarding a line: ``kit init-line`` scaffolds a recipe that runs as is; ``kit calibrate``
fits the views to measured imaging conditions."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kit.cli import app
from kit.onboard.calibrate import calibrate, replace_views
from kit.onboard.init_line import init_line, propose_image_size
from kit.recipe import load_recipe


def test_init_line_writes_a_valid_commented_recipe(tmp_path, tiny_line):
    line = tmp_path / "line"
    shutil.copytree(tiny_line, line)
    shutil.copy(next((line / "ok").glob("*.png")), line / "ok" / "copy.png")
    path, survey = init_line(line, "line7", tmp_path / "recipes" / "line7.yaml", gpu=False)
    recipe = load_recipe(path)
    assert recipe.line.name == "line7" and recipe.data.classes == ["dent", "ok", "scratch"]
    assert recipe.resolve_path(recipe.data.root) == line.resolve()
    assert recipe.data.image_size == (48, 48) and recipe.data.channels == "gray"
    assert recipe.teacher.arch == "resnet10t" and recipe.distill.method == "crld"
    text = path.read_text()
    assert "# Survey warnings:" in text and "exact duplicate" in text and "few images in" in text
    assert survey.counts == {"dent": 6, "ok": 9, "scratch": 6}
    result = CliRunner().invoke(app, ["init-line", str(line), "--name", "line7", "--out", str(path)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    bad = CliRunner().invoke(app, ["init-line", str(line), "--name", "line 7!", "--out", str(tmp_path / "x.yaml")])
    assert bad.exit_code == 1 and "--name: 'line 7!' is not a valid line name" in bad.output


def test_scaffolded_recipe_runs_without_edits(tmp_path, tiny_line):
    path, _ = init_line(tiny_line, "scaffolded", tmp_path / "scaffolded.yaml", gpu=False)
    text = path.read_text().replace("epochs: 30", "epochs: 1").replace("epochs: 40", "epochs: 1")  # test budget only
    path.write_text(text)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs"), "--stop-after", "export"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "scaffolded").is_dir()


def test_init_line_refuses_a_single_class(tmp_path, tiny_line):
    shutil.copytree(tiny_line / "ok", tmp_path / "one" / "ok")
    result = CliRunner().invoke(app, ["init-line", str(tmp_path / "one"), "--name", "x", "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1 and "found only one class ('ok')" in result.output


def test_image_size_proposal():
    assert propose_image_size((128, 160), gpu=True) == 128
    assert propose_image_size((128, 160), gpu=False) == 96
    assert propose_image_size((20, 20), gpu=False) == 32
    assert propose_image_size((1000, 1000), gpu=True) == 224


def _darkened_copy(src: Path, dst: Path) -> Path:
    for i, p in enumerate(sorted(src.rglob("*.png"))):
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(out), (img * 0.5).astype(np.uint8) if i % 3 == 0 else img)
    return dst


def _brightness_limit(cal) -> float:
    return next(s for s in cal.strong if "RandomBrightnessContrast" in s)["RandomBrightnessContrast"]["brightness_limit"]


def test_calibrate_widens_the_lighting_range_for_a_darker_camera(tmp_path, tiny_line):
    plain = calibrate(tiny_line)
    dark = calibrate(_darkened_copy(tiny_line, tmp_path / "dark"))
    assert _brightness_limit(dark) > _brightness_limit(plain) + 0.05
    assert dark.percentiles["brightness"]["p5"] < plain.percentiles["brightness"]["p5"] - 20
    assert any("brightness 5-95 %" in r for r in dark.reasons)


def test_calibrate_writes_views_into_the_recipe(tmp_path, tiny_line):
    path, _ = init_line(tiny_line, "cal", tmp_path / "cal.yaml", gpu=False)
    before = path.read_text()
    dry = CliRunner().invoke(app, ["calibrate", str(tiny_line), "--recipe", str(path), "--plot", str(tmp_path / "c.png")])
    assert dry.exit_code == 0, dry.output
    assert "+  - RandomBrightnessContrast" in dry.output and path.read_text() == before
    wet = CliRunner().invoke(app, ["calibrate", str(tiny_line), "--recipe", str(path), "--write", "--plot", str(tmp_path / "c.png")])
    assert wet.exit_code == 0, wet.output
    recipe = load_recipe(path)
    names = [next(iter(step)) for step in recipe.views.strong]
    assert names[:2] == ["HorizontalFlip", "VerticalFlip"] and "RandomBrightnessContrast" in names and "Affine" in names
    assert "teacher:" in path.read_text() and "# views proposed by `kit calibrate`" in path.read_text()
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_replace_views_keeps_the_rest_of_the_recipe():
    text = "line:\n  name: a\n# the views\nviews:\n  weak: []\n  strong: []\n\n# the teacher\nteacher:\n  arch: resnet18\n"
    out = replace_views(text, "views:\n  weak: [x]\n")
    assert out == "line:\n  name: a\n# the views\nviews:\n  weak: [x]\n\n# the teacher\nteacher:\n  arch: resnet18\n"
    assert yaml.safe_load(out)["teacher"] == {"arch": "resnet18"}


def test_calibrate_needs_images(tmp_path):
    (tmp_path / "few").mkdir()
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "few")])
    assert result.exit_code == 1 and "calibration needs at least 10" in result.output


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # calibration.png and recipes/ land in the test's folder
