"""``task: anomaly`` in the recipe: what it needs and what it refuses, each as one line naming the field."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_recipe_dict
from tests.test_recipe import _error


def _anomaly(tiny_line, **changes) -> dict:
    recipe = tiny_recipe_dict(tiny_line)
    recipe.pop("compare")
    recipe.pop("distill")
    recipe["task"] = "anomaly"
    recipe["line"]["ok_class"] = "ok"
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            recipe.setdefault(section, {})[field] = value
        else:
            recipe[section] = value
    return recipe


@pytest.mark.parametrize("changes, expected", [
    ({"line.ok_class": None}, "task: anomaly learns the good part: set line.ok_class"),
    ({"compare": ["kd"]}, "compare: comparison students are for task: classify"),
    ({"teacher.image_size": 64}, "teacher.image_size: in anomaly mode teacher and student read the same image"),
    ({"export.formats": ["onnx", "triton"]}, "export.formats: triton serves classifiers' logits"),
    ({"anomaly.max_false_reject_rate": 0}, "anomaly.max_false_reject_rate"),
    ({"anomaly.score": "mean"}, "anomaly.score"),
])
def test_anomaly_recipe_refusals_name_the_field(tmp_path, tiny_line, changes, expected):
    message = _error(tmp_path, _anomaly(tiny_line, **changes))
    assert expected in message and "\n" not in message.strip()


def test_a_good_anomaly_recipe_loads_with_its_defaults(tmp_path, tiny_line):
    from kit.recipe import load_recipe
    from tests.conftest import write_recipe

    recipe = load_recipe(write_recipe(tmp_path / "a.yaml", _anomaly(tiny_line)))
    assert recipe.task == "anomaly"
    assert (recipe.anomaly.max_false_reject_rate, recipe.anomaly.review_fraction, recipe.anomaly.cross_view) == (0.05, 0.02, True)
