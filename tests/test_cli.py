"""The CLI: help on every command, one-line errors with exit code 1."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kit.cli import app
from tests.conftest import tiny_recipe_dict, write_recipe

runner = CliRunner()
COMMANDS = sorted(c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands)


def test_the_command_list_is_complete():
    assert COMMANDS == ["audit", "calibrate", "corruptions", "doctor", "export", "ingest", "init-line", "monitor", "report", "run",
                        "sample-data", "shadow", "threshold", "verify", "views"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: kit " in result.output


def test_recipe_error_is_one_line_without_traceback(tmp_path):
    bad = write_recipe(tmp_path / "bad.yaml", tiny_recipe_dict(tmp_path, **{"teacher.epochs": 0}))
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {bad}: teacher.epochs: Input should be greater than or equal to 1 (got 0)"]
    assert not (tmp_path / "runs").exists()


def test_missing_data_root_is_reported(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tmp_path / "missing"))
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert f"error: data.root: folder not found: {tmp_path / 'missing'}" in result.output
    assert "Traceback" not in result.output


def test_views_preview_writes_a_png(tmp_path, tiny_line):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_line))
    out = tmp_path / "v.png"
    result = runner.invoke(app, ["views", str(recipe), "--out", str(out), "--per-class", "1"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_data_is_deterministic(tmp_path):
    from kit.sample_line import render_sample_image

    a, b = render_sample_image("crack", 3, seed=0), render_sample_image("crack", 3, seed=0)
    assert (a == b).all() and not (a == render_sample_image("crack", 4, seed=0)).all()


def test_committed_sample_data_matches_the_generator():
    from pathlib import Path

    import cv2

    from kit.sample_line import CLASS_COUNTS, render_sample_image

    root = Path(__file__).resolve().parents[1] / "sample_data" / "sample_line"
    for label, count in CLASS_COUNTS.items():
        assert len(list((root / label).glob("*.png"))) == count
        stored = cv2.imread(str(root / label / f"{label}_0001.png"), cv2.IMREAD_UNCHANGED)
        assert (stored == render_sample_image(label, 1)).all()


def test_sample_classes_are_not_separable_by_mean_brightness():
    """A classifier on mean brightness alone must stay near chance (1/6), or the line is a toy."""
    import numpy as np

    from kit.sample_line import CLASS_COUNTS, render_sample_image

    labels = sorted(CLASS_COUNTS)
    means = {c: np.array([render_sample_image(c, i).mean() for i in range(40)]) for c in labels}
    train = {c: m[:20].mean() for c, m in means.items()}
    hits = sum(int(min(labels, key=lambda k: abs(train[k] - v)) == c) for c in labels for v in means[c][20:])
    assert hits / (20 * len(labels)) < 0.35


def test_kit_without_the_train_extra_says_which_extra_to_install():
    import typer

    from kit.cli import _user_errors

    edge = typer.Typer()

    @edge.command()
    @_user_errors
    def run() -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    @edge.command()
    @_user_errors
    def other() -> None:
        raise ModuleNotFoundError("No module named 'left_pad'", name="left_pad")

    result = runner.invoke(edge, ["run"])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: `kit run` needs the training side, and torch is not installed here: "
        "pip install 'inspection-kit[train]' (the edge runtime alone is `deploy`)"]
    assert isinstance(runner.invoke(edge, ["other"]).exception, ModuleNotFoundError)  # a bug keeps its traceback


def test_an_error_line_with_brackets_is_printed_as_written(tmp_path, tiny_line):
    bad = write_recipe(tmp_path / "bad.yaml", tiny_recipe_dict(tiny_line, **{"views.strong": [{"MotionBlurr": {}}]}))
    result = runner.invoke(app, ["views", str(bad), "--out", str(tmp_path / "v.png")])
    assert result.exit_code == 1
    assert f"error: {bad}: views.strong[0]: unknown transform 'MotionBlurr' (did you mean MotionBlur?)" in result.output
