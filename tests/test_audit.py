"""kit audit: likely wrong labels (confident learning on out-of-fold predictions) and near-duplicates across splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.preprocess import prepare_image, read_image
from kit.feedback.audit import (AuditSettings, FoldTraining, audit_run, hamming_matrix, near_duplicates, perceptual_hash,
                                rank_label_issues, train_classifier)
from kit.cli import app
from kit.data.dataset import preprocess_spec
from kit.data.index import index_line
from kit.models import model_args, save_checkpoint
from kit.recipe import load_recipe, write_recipe_lock

REPO = Path(__file__).resolve().parents[1]


def test_ranking_puts_confident_disagreement_first():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    p = np.array([[.9, .05, .05], [.8, .1, .1], [.1, .85, .05],   # image 2: labelled 0, confidently 1
                  [.1, .8, .1], [.2, .7, .1], [.3, .4, .3],       # image 5: unsure, not confidently another class
                  [.05, .05, .9], [.9, .05, .05], [.1, .1, .8]])  # image 7: labelled 2, confidently 0
    order, flagged, suggested = rank_label_issues(p, labels)
    assert list(np.flatnonzero(flagged)) == [2, 7]
    assert list(order[:3]) == [7, 2, 5]  # lowest self-confidence first: 0.05, 0.05 (larger disagreement first), 0.4
    assert suggested[2] == 1 and suggested[7] == 0 and suggested[0] == 0


def test_perceptual_hash_finds_a_near_copy_across_splits():
    rng = np.random.default_rng(0)
    images = [cv2_blur(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(4)]
    noisy = np.clip(images[0].astype(int) + rng.integers(-3, 4, images[0].shape), 0, 255).astype(np.uint8)
    hashes = np.array([perceptual_hash(i) for i in images + [noisy]], dtype=np.uint64)
    assert hamming_matrix(hashes[:1], hashes[1:4]).min() > 10
    pairs = near_duplicates(hashes, ["train", "train", "val", "test", "test"], max_distance=4)
    assert [(i, j) for i, j, _ in pairs] == [(0, 4)]
    assert near_duplicates(hashes, ["train"] * 5, max_distance=4) == []  # same split: not a leak


def cv2_blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (9, 9), 3)


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    """A copy of the sample line's split with 5 % of the training labels flipped, and a small student of the line
    (test_resnet at 32 px) trained on those flipped labels, as the run's own student would have been."""
    run = tmp_path_factory.mktemp("audit_run")
    recipe = load_recipe(REPO / "recipes" / "sample_line.yaml")
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"image_size": (32, 32)}),
                                       "student": recipe.student.model_copy(update={"arch": "test_resnet"})})
    write_recipe_lock(recipe, run / "recipe.lock.yaml")
    index = index_line(recipe)
    rows = [[str(s.path), index.classes[s.label], s.split] for s in index.samples]
    spec = preprocess_spec(recipe)
    train = [i for i, r in enumerate(rows) if r[2] == "train"]
    rng = np.random.default_rng(5)
    flipped = rng.choice(train, size=round(0.05 * len(train)), replace=False)
    for i in flipped:
        rows[i][1] = str(rng.choice([c for c in index.classes if c != rows[i][1]]))
    images = np.stack([prepare_image(read_image(rows[i][0], "gray"), spec) for i in train])
    labels = np.array([index.classes.index(rows[i][1]) for i in train])
    student = train_classifier(images, labels, len(index.classes), spec,
                               FoldTraining("test_resnet", epochs=12, batch_size=16, lr=0.02, seed=0))
    save_checkpoint(run / "student.pt", student, model_args("test_resnet", len(index.classes), 1), classes=index.classes,
                    preprocess=spec.to_dict())
    with (run / "split.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])
    return run, {rows[i][0] for i in flipped}


@pytest.mark.slow
def test_audit_finds_flipped_training_labels(flipped_run):
    run, flipped = flipped_run
    result = audit_run(run, AuditSettings(folds=3, splits=("train",)), log=lambda m: None)
    top = {r["path"] for r in result.issues[:len(flipped)]}
    found = len(top & flipped)
    assert len(flipped) == 20 and found >= 14, f"found {found} of {len(flipped)}"
    assert result.summary["init"] == "scratch" and result.summary["images"] == 396
    html = (run / "audit" / "audit.html").read_text()
    assert html.count("data:image/png;base64,") >= len(flipped) and "Most likely wrong labels" in html
    with (run / "audit" / "label_issues.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 396
    assert result.summary["near_duplicates"] == 0


def test_cli_prints_the_top_and_words_a_missing_student(flipped_run, tmp_path):
    run, _ = flipped_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("recipe.lock.yaml", "split.csv"):
        (bare / name).write_bytes((run / name).read_bytes())
    result = CliRunner().invoke(app, ["audit", str(bare), "--init", "student"])
    assert result.exit_code == 1
    assert f"error: {bare / 'student.pt'} not found: the run has no trained student; use --init scratch" in result.output


def test_validation_and_test_labels_are_ranked_by_models_that_never_saw_them(flipped_run, tmp_path):
    """Issue 28: the labels that choose the checkpoint, certify the threshold and make every figure of the report were
    never audited. Flip 4 validation and 4 test labels: the fold models (trained on train only) must flag them."""
    import shutil

    run, _ = flipped_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("audit"))
    with (copy / "split.csv").open() as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    classes = sorted({r[1] for r in body})
    rng = np.random.default_rng(11)
    flipped = set()
    for split in ("val", "certify", "test"):
        for i in rng.choice([i for i, r in enumerate(body) if r[2] == split], size=4, replace=False):
            body[i][1] = str(rng.choice([c for c in classes if c != body[i][1]]))
            flipped.add(body[i][0])
    with (copy / "split.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    result = audit_run(copy, AuditSettings(folds=3, init="student"), log=lambda m: None)
    by_split = result.summary["by_split"]
    assert {s: b["images"] for s, b in by_split.items()} == {"train": 396, "val": 66, "certify": 66, "test": 132}
    assert "none saw a validation image" in by_split["val"]["scored_by"] and "out of fold" in by_split["train"]["scored_by"]
    flagged = {r["path"] for r in result.issues if r["flagged"] and r["split"] in ("val", "certify", "test")}
    assert len(flagged & flipped) >= 9, f"found {len(flagged & flipped)} of 12"
    assert by_split["val"]["flagged"] + by_split["certify"]["flagged"] + by_split["test"]["flagged"] == len(flagged)
    listed = {img["path"] for b in by_split.values() for img in b["flagged_images"]}
    assert flagged & flipped <= listed
    html = (copy / "audit" / "audit.html").read_text()
    assert 'id="by-split"' in html and "none saw a test image" in html
