"""The method registry: a new distillation method is one module (its settings, views and loss),
and the recipe, comparison students and training pick it up with no other change."""

from __future__ import annotations

import csv
import json
from typing import Annotated, Literal

import pytest
import torch.nn.functional as F
from pydantic import Field

from kit.distill.methods import DistillMethod, MethodSettings, get_method, list_methods, register_method, unregister_method
from kit.errors import RecipeError
from kit.recipe import parse_recipe
from tests.conftest import tiny_recipe_dict, write_recipe


class SmoothedCE(MethodSettings):
    """A toy method: label-smoothed cross-entropy on the weak view, no teacher."""

    method: Literal["smoothed-ce"] = "smoothed-ce"
    smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1


def _smoothed_ce(student, teacher, target, cfg: SmoothedCE):
    ce = F.cross_entropy(student["weak"], target, label_smoothing=cfg.smoothing)
    return ce, {"ce": ce}


@pytest.fixture
def toy_method():
    method = register_method(DistillMethod("smoothed-ce", ("weak",), False, _smoothed_ce, "toy", SmoothedCE))
    yield method
    unregister_method("smoothed-ce")


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_has_settings_that_name_it(name):
    method = get_method(name)
    assert method.settings().method == name
    assert set(method.views) <= {"weak", "strong"}


def test_a_method_whose_settings_name_another_is_refused():
    with pytest.raises(ValueError, match="its settings declare method='smoothed-ce'"):
        register_method(DistillMethod("other", ("weak",), False, _smoothed_ce, "toy", SmoothedCE))


def test_the_recipe_validates_a_registered_method_with_its_own_settings(tmp_path, toy_method):
    d = tiny_recipe_dict(tmp_path, distill={"method": "smoothed-ce", "smoothing": 0.2}, compare=["none"])
    recipe = parse_recipe(json.dumps(d), check=False)
    assert isinstance(recipe.distill, SmoothedCE) and recipe.distill.smoothing == 0.2
    assert recipe.model_dump(mode="json")["distill"] == {"method": "smoothed-ce", "smoothing": 0.2}
    with pytest.raises(RecipeError, match=r"distill.smoothing: Input should be less than 1 \(got 1.5\)"):
        parse_recipe(json.dumps({**d, "distill": {"method": "smoothed-ce", "smoothing": 1.5}}), check=False)
    with pytest.raises(RecipeError, match=r"distill.smothing: unknown field \(did you mean smoothing\?\)"):
        parse_recipe(json.dumps({**d, "distill": {"method": "smoothed-ce", "smothing": 0.1}}), check=False)
    assert parse_recipe(json.dumps({**d, "distill": {"method": "crld"}, "compare": ["smoothed-ce"]}), check=False).compare == ["smoothed-ce"]


def test_an_unregistered_method_is_named_with_the_choices(tmp_path):
    d = tiny_recipe_dict(tmp_path, compare=["smoothed-ce"])
    with pytest.raises(RecipeError, match=r"compare: unknown distillation method 'smoothed-ce'; choose from crld, kd, none"):
        parse_recipe(json.dumps(d), check=False)


@pytest.mark.slow
def test_a_run_trains_the_toy_method_as_main_and_comparison_student(tmp_path, tiny_line, finished_run, toy_method):
    from kit.run import run_line

    d = tiny_recipe_dict(tiny_line, **{"teacher.checkpoint": str(finished_run / "teacher.pt"), "student.epochs": 1,
                                       "distill": {"method": "smoothed-ce", "smoothing": 0.2}, "compare": ["kd"]})
    result = run_line(write_recipe(tmp_path / "toy.yaml", d), out_root=tmp_path / "runs", name="toy", stop_after="train")
    assert result.metrics["distill_method"] == "smoothed-ce" and set(result.metrics["compare"]) == {"kd"}
    with (result.run_dir / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["role"] for r in rows] == ["student", "student-kd"]
    assert rows[0]["ce"] != "" and rows[0]["kd"] == "" and rows[1]["kd"] != ""
