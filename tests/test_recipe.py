"""Recipe validation: good recipes load, each mistake gives one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.errors import RecipeError
from kit.recipe import load_recipe, parse_recipe, read_recipe_lock, recipe_hash, write_recipe_lock
from tests.conftest import tiny_recipe_dict, write_recipe

REPO = Path(__file__).resolve().parents[1]


def _error(tmp_path: Path, recipe: dict | str) -> str:
    path = tmp_path / "line.yaml"
    if isinstance(recipe, str):
        path.write_text(recipe, encoding="utf-8")
    else:
        write_recipe(path, recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": "), message
    assert "Traceback" not in message
    return message[len(str(path)) + 2 :]


def test_sample_recipe_loads_and_resolves_paths():
    recipe = load_recipe(REPO / "recipes" / "sample_line.yaml")
    assert recipe.line.name == "sample_line"
    assert recipe.data.image_size == (64, 64)
    assert recipe.resolve_path(recipe.data.root) == (REPO / "sample_data" / "sample_line").resolve()
    assert recipe.distill.method == "crld"
    assert recipe.distill.tau_weak == 0.9 and recipe.distill.within_weight == 2.0
    assert recipe.line.takt_ms == pytest.approx(500.0)


def test_xsdd_recipe_is_valid():
    recipe = load_recipe(REPO / "recipes" / "x-sdd.yaml")
    assert recipe.data.dedupe is True


def test_defaults_come_from_the_schema(tmp_path):
    d = tiny_recipe_dict(tmp_path)
    del d["distill"], d["teacher"]
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", d))
    assert recipe.teacher.arch == "resnet18" and recipe.teacher.train_views == "mix"
    assert recipe.distill.method == "crld" and recipe.distill.temperature == 4.0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"teacher.epoch": 3}, "teacher.epoch: unknown field (did you mean epochs?)"),
        ({"teacher.epochs": -2}, "teacher.epochs: Input should be greater than or equal to 1 (got -2)"),
        ({"student.batch_size": "big"}, "student.batch_size: Input should be a valid integer, unable to parse string as an integer (got 'big')"),
        ({"teacher.arch": "resnet81"}, "teacher.arch: unknown timm architecture 'resnet81'"),
        ({"data.channels": "cmyk"}, "data.channels: Input should be 'gray' or 'rgb' (got 'cmyk')"),
        ({"distill.method": "crl"}, "distill.method: unknown distillation method; choose from crld, kd, none (got 'crl')"),
        ({"distill.tau_weak": 1.5}, "distill.tau_weak: Input should be less than or equal to 1 (got 1.5)"),
        ({"distill.tau_wek": 0.5}, "distill.tau_wek: unknown field (did you mean tau_weak?)"),
        ({"data.split": {"train": 0.5, "val": 0.3, "test": 0.3}}, "data.split: train + val + test must sum to 1 (got 1.1)"),
        ({"device": "gpu"}, "device: String should match pattern"),
        ({"views.strong": [{"HorizontalFlip": {}}, {"lighting": {"severity": 2}}, {"MotionBlurr": {"p": 0.5}}]},
         "views.strong[2]: unknown transform 'MotionBlurr' (did you mean MotionBlur?)"),
        ({"views.weak": [{"MotionBlur": {"blur_limit": 2}}]},
         "views.weak[0]: bad argument to MotionBlur: blur_limit: Invalid kernel size range (3, 2). Values less than 3 are not allowed."),
        ({"views.weak": [{"GaussNoise": {"std_rang": [0.1, 0.2]}}]}, "views.weak[0]: GaussNoise has no argument 'std_rang' (did you mean std_range?)"),
        ({"views.strong": [{"blur": {"severity": 9}}]}, "views.strong[0]: blur.severity must be an integer from 1 to 5 (got 9)"),
        ({"views.weak": [{"RandomCrop": {"height": 16, "width": 16}}]}, "views.weak: the view turns a (32, 32, 1) uint8 image into (16, 16, 1) uint8"),
        ({"views.weak": [{"Normalize": {}}]}, "views.weak[0]: Normalize is not allowed in a view"),
        ({"teacher.checkpoint": "missing.pt"}, "teacher.checkpoint: file not found: "),
        ({"line.name": "my line/1"}, "line.name: String should match pattern"),
    ],
)
def test_bad_field_gives_one_line_naming_it(tmp_path, overrides, expected):
    message = _error(tmp_path, tiny_recipe_dict(tmp_path, **overrides))
    assert message.startswith(expected), message
    assert "\n" not in message


def test_python_yaml_tags_are_refused(tmp_path):
    message = _error(tmp_path, "line: !!python/object/apply:os.system ['echo pwned']\n")
    assert message == "line 1, column 7: YAML tag tag:yaml.org,2002:python/object/apply:os.system is not allowed; recipes are plain data (no Python objects)"


def test_invalid_yaml_names_the_line(tmp_path):
    message = _error(tmp_path, "line:\n  name: a\n data: [\n")
    assert message.startswith("line 3, column 2: invalid YAML")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_missing_required_sections(tmp_path):
    assert _error(tmp_path, "seed: 1\n") == "line: required field is missing\n" + f"{tmp_path / 'line.yaml'}: data: required field is missing"


def test_lock_round_trip_keeps_hash_and_base_dir(tmp_path, tiny_line):
    d = tiny_recipe_dict("images")  # relative root resolves against the recipe's folder
    src = write_recipe(tiny_line.parent / "r.yaml", d)
    recipe = load_recipe(src)
    lock = write_recipe_lock(recipe, tmp_path / "run" / "recipe.lock.yaml", source=src)
    again = read_recipe_lock(lock)
    assert recipe_hash(again) == recipe_hash(recipe)
    assert again.resolve_path(again.data.root) == tiny_line.resolve()


def test_hash_changes_with_any_setting(tmp_path):
    a = parse_recipe(__import__("yaml").safe_dump(tiny_recipe_dict(tmp_path)), check=False)
    b = parse_recipe(__import__("yaml").safe_dump(tiny_recipe_dict(tmp_path, seed=1)), check=False)
    assert recipe_hash(a) != recipe_hash(b)


def test_the_readme_recipe_is_a_valid_recipe():
    """The annotated recipe in the recipe reference (docs/recipe.md) is what users copy: it must load as written."""
    import re

    from kit.recipe import parse_recipe

    readme = (Path(__file__).resolve().parents[1] / "docs" / "recipe.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "schema_version" in b)
    recipe = parse_recipe(block, source="docs/recipe.md", base_dir=Path(__file__).resolve().parents[1] / "recipes")
    assert recipe.compare == ["kd", "none"] and recipe.kpi.min_automation_rate == 0.70
    assert recipe.verify.corruptions.severities["rotation"] == [2, 4, 8, 12, 16]
