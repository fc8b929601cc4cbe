"""Mostly-good lines: class-balanced sampling and loss weights, selection by macro-F1, and the teacher
check that stops a run whose teacher calls every part good."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kit.data.balance import balanced_order, class_weights, imbalance_ratio, resolve_balance
from kit.evaluate import classification_metrics
from kit.train.distributed import SINGLE, SplitBatchSampler
from kit.verify.teacher_check import assess_teacher
from tests.conftest import tiny_recipe_dict, write_recipe

LABELS = np.array([0] * 90 + [1] * 6 + [2] * 4)  # 90 % good parts


def test_balanced_order_draws_every_class_equally_often_over_an_epoch():
    order = balanced_order(LABELS, np.random.default_rng(0))
    counts = np.bincount(LABELS[order], minlength=3)
    assert len(order) == 100 and counts.max() - counts.min() <= 1
    # a rare image repeats only after its whole class was drawn: the 4 images of class 2 appear ~8 times each
    assert sorted(np.bincount(order[LABELS[order] == 2])[-4:]) in ([8, 8, 8, 9], [8, 8, 9, 9], [8, 8, 8, 8], [8, 9, 9, 9])
    again = balanced_order(LABELS, np.random.default_rng(0))
    assert np.array_equal(order, again) and not np.array_equal(order, balanced_order(LABELS, np.random.default_rng(1)))


def test_the_sampler_batches_are_balanced_and_deterministic():
    sampler = SplitBatchSampler(len(LABELS), 10, SINGLE, 0, drop_last=True, balance_labels=LABELS)
    sampler.set_epoch(0, 123)
    batches = [[index for _epoch, index in batch] for batch in sampler]  # the sampler yields (epoch, index)
    drawn = np.concatenate(batches)
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert np.bincount(LABELS[drawn], minlength=3).tolist() in ([34, 33, 33], [33, 34, 33], [33, 33, 34])
    sampler.set_epoch(0, 123)
    assert [[index for _e, index in b] for b in sampler] == batches


def test_class_weights_and_auto_mode():
    assert class_weights(LABELS, 3) == pytest.approx([100 / (3 * 90), 100 / (3 * 6), 100 / (3 * 4)])
    assert class_weights(np.array([0, 1, 0, 1]), 3).tolist() == [1.0, 1.0, 0.0]
    assert imbalance_ratio(LABELS, 3) == 22.5
    assert resolve_balance("auto", LABELS, 3) == "sampler"
    assert resolve_balance("auto", np.array([0] * 40 + [1] * 30), 2) == "none"
    assert resolve_balance("loss", np.array([0, 1]), 2) == "loss"


def test_a_majority_class_model_cannot_win_macro_f1_or_balanced_accuracy():
    classes = ["ok", "scratch", "dent"]
    majority = classification_metrics(LABELS, np.zeros_like(LABELS), classes)
    catches_defects = LABELS.copy()
    catches_defects[:12] = 1  # finds every defect, rejects 12 good parts as scratches
    useful = classification_metrics(LABELS, catches_defects, classes)
    assert majority["accuracy"] == 0.9 and majority["balanced_accuracy"] == pytest.approx(1 / 3)
    assert useful["accuracy"] < majority["accuracy"]  # selecting by accuracy would keep the useless model
    assert useful["macro_f1"] > majority["macro_f1"] and useful["balanced_accuracy"] > majority["balanced_accuracy"]


def test_assess_teacher_flags_a_teacher_that_calls_every_part_good():
    classes = ["ok", "scratch", "dent"]
    everything_ok = np.tile([5.0, 0.0, 0.0], (100, 1))
    result = assess_teacher(everything_ok, LABELS, classes)
    assert result["degenerate"] and result["balanced_accuracy"] == pytest.approx(1 / 3)
    assert result["balanced_accuracy_floor"] == pytest.approx(1 / 3 + 0.25 * 2 / 3)
    assert result["majority_baseline"] == {"class": "ok", "share": 0.9, "accuracy": 0.9,
                                           "macro_f1": pytest.approx((2 * 0.9 / 1.9) / 3), "balanced_accuracy": pytest.approx(1 / 3)}
    good = np.eye(3)[LABELS] * 8.0
    assert not assess_teacher(good, LABELS, classes)["degenerate"]


def _imbalanced_line(tmp_path_factory):
    from kit.sample_line import generate_sample_line

    root = tmp_path_factory.mktemp("imbalanced") / "images"
    generate_sample_line(root, counts={"ok": 48, "scratch": 6, "dent": 6}, seed=3, size_px=48)
    return root


@pytest.fixture(scope="module")
def imbalanced_line(tmp_path_factory):
    return _imbalanced_line(tmp_path_factory)


@pytest.mark.slow
def test_a_starved_teacher_stops_the_run_with_one_line(tmp_path, imbalanced_line):
    from kit.cli import app

    d = tiny_recipe_dict(imbalanced_line, **{"teacher.lr": 1e-7, "teacher.balance": "none", "teacher.check": "stop",
                                             "compare": []})
    recipe = write_recipe(tmp_path / "starved.yaml", d)
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "runs"), "--name", "starved"])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: teacher: validation balanced accuracy ")
    assert "is no better than calling every part" in lines[0] and "teacher.balance: sampler" in lines[0]
    run_dir = tmp_path / "runs" / "tiny_line" / "starved"
    check = json.loads((run_dir / "teacher_check.json").read_text())
    assert check["degenerate"] and not (run_dir / "student.pt").exists()
    assert list(json.loads((run_dir / "state.json").read_text())["stages"]) == ["data", "teacher"]


@pytest.mark.slow
def test_balanced_training_keeps_the_best_macro_f1_epoch_and_logs_recall(tmp_path, imbalanced_line):
    from kit.run import run_line

    d = tiny_recipe_dict(imbalanced_line, **{"teacher.epochs": 3, "teacher.check": "warn", "student.epochs": 3,
                                             "student.balance": "loss", "compare": []})
    result = run_line(write_recipe(tmp_path / "bal.yaml", d), out_root=tmp_path / "runs", name="bal", stop_after="train")
    with (result.run_dir / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    teacher = [r for r in rows if r["role"] == "teacher"]
    assert {"val_macro_f1", "val_balanced_accuracy", "val_recall_ok", "val_recall_scratch", "val_recall_dent"} <= set(rows[0])
    scores = [float(r["val_macro_f1"]) for r in teacher]
    losses = [float(r["val_loss"]) for r in teacher]
    tied = [i for i, s in enumerate(scores) if s >= max(scores) - 1e-9]  # tie_break: val_loss (the default)
    kept = max(i for i in tied if losses[i] <= min(losses[j] for j in tied) + 1e-12)
    best = torch.load(result.run_dir / "teacher.pt", weights_only=True)
    assert best["epoch"] == 1 + kept and best["val_scores"]["macro_f1"] == pytest.approx(max(scores), abs=1e-3)
    log = (result.run_dir / "run.log").read_text()
    assert "teacher: balance sampler (teacher.balance: auto; largest/smallest training class 8.0x)" in log
    assert "student: balance loss (student.balance: loss" in log
    assert result.metrics["teacher_check"]["val_images"] == result.metrics["split_sizes"]["val"]
