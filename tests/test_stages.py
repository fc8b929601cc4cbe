"""The stage table of ``kit run``: order, skipping finished stages, invalidating later ones, and
resuming from Python as ``kit run --resume`` does."""

from __future__ import annotations

import json
import shutil

import pytest

from kit.errors import ArgumentError
from kit.recipe import parse_recipe
from kit.run import STOP_POINTS, build_stages, run_line
from kit.rundir import mark_stage, read_state
from tests.conftest import tiny_recipe_dict, write_recipe


def test_the_table_lists_every_stage_in_order(tmp_path):
    recipe = parse_recipe(json.dumps(tiny_recipe_dict(tmp_path, compare=["kd", "none"])), check=False)
    assert [s.name for s in build_stages(recipe)] == [
        "data", "teacher", "teacher-check", "student", "student-kd", "student-none", "evaluate", "export", "verify", "report"]
    assert [s.name for s in build_stages(recipe) if s.all_ranks] == [
        "data", "teacher", "teacher-check", "student", "student-kd", "student-none"]
    assert set(STOP_POINTS) == {"train", "export", "verify", "report"}


def test_recording_a_stage_drops_the_stages_after_it(tmp_path):
    state: dict = {}
    for stage in ("data", "teacher", "student", "student-kd", "student-none", "evaluate", "export", "verify", "report"):
        mark_stage(tmp_path, state, stage, 1.0)
    mark_stage(tmp_path, state, "export", 2.0)
    assert list(read_state(tmp_path)["stages"]) == ["data", "teacher", "student", "student-kd", "student-none", "evaluate", "export"]
    mark_stage(tmp_path, state, "student-kd", 2.0)  # a comparison student does not drop its sibling
    assert list(read_state(tmp_path)["stages"]) == ["data", "teacher", "student", "student-kd", "student-none"]


def test_a_bad_stop_point_names_the_argument(tmp_path):
    with pytest.raises(ArgumentError, match="stop_after: unknown stage 'deploy'; choose from train, export, verify, report"):
        run_line(tmp_path / "r.yaml", stop_after="deploy")


def test_a_run_directory_needs_resume(finished_run):
    with pytest.raises(ArgumentError, match=r"is a run directory; add resume to continue it"):
        run_line(finished_run)


@pytest.mark.slow
def test_python_resume_finds_the_unfinished_run_of_a_recipe(tmp_path, tiny_line, finished_run):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_line))
    run_dir = tmp_path / "runs" / "tiny_line" / "r1"
    shutil.copytree(finished_run, run_dir)
    state = read_state(run_dir)
    mark_stage(run_dir, state, "export", state["stages"]["export"]["seconds"])  # as if verify never ran
    shutil.rmtree(run_dir / "verify")
    shutil.rmtree(run_dir / "report")
    messages: list[str] = []

    class Collect:
        def __getattr__(self, name):
            return lambda *a: messages.append(a[0]) if name == "log" else None

    result = run_line(recipe, out_root=tmp_path / "runs", resume=True, reporter=Collect())
    assert result.run_dir == run_dir and result.kpi is not None and result.report == run_dir / "report" / "report.html"
    assert any(m.startswith("export: already done") for m in messages)
    assert list(read_state(run_dir)["stages"])[-2:] == ["verify", "report"]
