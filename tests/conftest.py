"""Shared fixtures: a tiny generated camera line and recipes that train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kit.sample_line import generate_sample_line

TINY_COUNTS = {"ok": 8, "scratch": 6, "dent": 6}


@pytest.fixture(scope="session")
def tiny_line(tmp_path_factory) -> Path:
    """Three classes, 20 images of 48 px: enough to split, train one epoch and evaluate."""
    root = tmp_path_factory.mktemp("tiny_line") / "images"
    generate_sample_line(root, counts=TINY_COUNTS, seed=1, size_px=48)
    return root


def tiny_recipe_dict(data_root: Path | str, **overrides) -> dict:
    recipe = {
        "schema_version": 1,
        "line": {"name": "tiny_line", "parts_per_minute": 60},
        "data": {"root": str(data_root), "image_size": 32, "channels": "gray", "num_workers": 0,
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0}},
        "views": {
            "weak": [{"HorizontalFlip": {"p": 0.5}}],
            "strong": [{"lighting": {"severity": 3, "p": 1.0}}, {"blur": {"severity": 2}}, {"noise": {"severity": 2}}],
        },
        "teacher": {"arch": "resnet10t", "epochs": 1, "batch_size": 4, "lr": 0.01},
        "student": {"arch": "mobilenetv3_small_050", "epochs": 2, "batch_size": 4, "lr": 0.01},
        "distill": {"method": "crld"},
        "seed": 0,
        "device": "cpu",
    }
    for dotted, value in overrides.items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_line) -> Path:
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_line))
