"""Shared fixtures: a tiny generated camera line and recipes that train in seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


TINY_COUNTS = {"ok": 8, "scratch": 6, "dent": 6}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it (the edge-tier test blocks the training side this way)
        return False


def pytest_ignore_collect(collection_path, config):
    """On an edge install (no torch) only the edge tier's modules are collected: the others import the training
    side at the top, so ``python -m pytest -m edge`` there runs the tier instead of failing on imports."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and not _installed("torch"):
        return "pytest.mark.edge" not in collection_path.read_text(encoding="utf-8")
    return None


def _cuda_missing_reason() -> str | None:
    """Why ``gpu`` tests cannot run here, or None. torch is imported only when it is installed, so the edge tier
    collects without it."""
    if not _installed("torch"):
        return "torch is not installed (an edge install)"
    import torch

    return None if torch.cuda.is_available() else "no CUDA device: torch.cuda.is_available() is False"


# Fixtures that train models (a tiny ``kit run`` and what is built on it): a test that uses one is ``slow``.
TRAINING_FIXTURES = {"finished_run", "exported", "flipped_run", "second_run", "anomaly_run", "good_only_run"}


def pytest_collection_modifyitems(config, items):
    """A test on a trained run is ``slow`` (the quick tier, ``-m "not slow"``, trains nothing). ``gpu`` tests need a
    CUDA device; without one they are skipped with the reason, not failed."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if not any("gpu" in item.keywords for item in items):
        return
    reason = _cuda_missing_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_line(tmp_path_factory) -> Path:
    """Three classes, 20 images of 48 px: enough to split, train one epoch and evaluate."""
    from kit.sample_line import generate_sample_line  # here, not at the top: the edge tier collects without kit

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
        # A 1-epoch teacher is no better than chance: the check warns instead of stopping these plumbing runs.
        "teacher": {"arch": "resnet10t", "epochs": 1, "batch_size": 4, "lr": 0.01, "check": "warn"},
        "student": {"arch": "mobilenetv3_small_050", "epochs": 2, "batch_size": 4, "lr": 0.01},
        "distill": {"method": "crld"},
        # A 2-epoch model has flat probabilities, so INT8 flips more than a trained one would;
        # the strict default gate is exercised on its own in test_export.py.
        "export": {"formats": ["onnx", "onnx-int8", "tensorrt-fp16"], "calibration_images": 8,
                   "parity": {"int8_min_agreement": 0.5}},
        "compare": ["none"],
        # Tiny timings: the harness is exercised, the numbers are not the point here.
        # Five validation images certify no operating target: none is set, so these plumbing runs pass their gate
        # (test_verify and test_report certify targets on purpose).
        "verify": {"latency": {"batch": 4, "warmup": 1, "iters": 5}, "threshold": None},
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
    import yaml  # the train extra's; the edge tier never writes recipes

    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_line) -> Path:
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_line))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_line) -> Path:
    """One real tiny ``kit run`` (teacher 1 epoch, CRLD student and a comparison student 2 epochs,
    export, verify), shared read-only."""
    from typer.testing import CliRunner

    from kit.cli import app

    tmp = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(tmp / "tiny.yaml", tiny_recipe_dict(tiny_line))
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp / "runs"), "--name", "r1"])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny_line" / "r1"
