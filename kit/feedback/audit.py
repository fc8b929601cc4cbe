"""``kit audit RUN_DIR``: which training labels are most likely wrong, and which images leak across splits.

Label issues, by confident learning (Northcutt, Jiang, Chuang 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70:1373):

1. Out-of-fold probabilities: the training images are cut into ``folds`` stratified folds; a small
   model of the run's student architecture is trained a few epochs on the other folds and scores
   the held-out one, so no image is scored by a model that saw its (possibly wrong) label.
2. Per-class thresholds ``t_j = mean(p_ij | given label j)``: the model's average self-confidence
   on class j.
3. The confident joint: an image labelled ``y`` is counted as *confidently class j* when
   ``p_ij >= t_j`` (the largest such j). Images confidently of another class than their label are
   the label issues, and their number is the audit's estimate of how many labels are wrong.
4. Ranking: by self-confidence ``p_i,y``, lowest first (cleanlab's default ``rank_by``): the
   images whose given label the out-of-fold model believes least. On the sample line it ranks
   planted flips higher than the normalised margin ``p_i,j* - p_i,y`` does.

Near-duplicates: a 64-bit perceptual hash per image (pHash: the signs of the 8x8 lowest DCT
frequencies of a 32x32 grey thumbnail against their median; Zauner 2010). Two images from
different splits at Hamming distance <= ``max_distance`` are near-duplicates: a train image
that is almost a test image inflates the test accuracy.

Writes ``RUN_DIR/audit/`` (``label_issues.csv``, ``near_duplicates.csv``, ``audit.json``,
``audit.html`` with thumbnails), assembled in a staging folder and swapped in whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from deploy.preprocess import PreprocessSpec, prepare_image, read_image, to_tensor
from kit.errors import ArgumentError, RunDirError
from kit.io import publish_dir, staging_dir, write_csv_atomic, write_json_atomic, write_text_atomic
from kit.recipe import read_recipe_lock
from kit.report.images import thumbnail
from kit.rundir import (AUDIT_DIR, AUDIT_HTML, AUDIT_JSON, LABEL_ISSUES_CSV, LOCK_NAME, NEAR_DUPLICATES_CSV, checkpoint_path,
                        read_split_rows)

THUMB_PX = 72
SPLITS = ("train", "val", "certify", "test")
# How each split's images are scored (audit.json, audit.html and the report say it)
SCORED_BY = {"train": "out of fold: each image by the fold model that did not train on it",
             "val": "the mean of the fold models, all trained on the training split only (none saw a validation image)",
             "certify": "the mean of the fold models, all trained on the training split only (none saw a certification image)",
             "test": "the mean of the fold models, all trained on the training split only (none saw a test image)"}


@dataclass
class AuditResult:
    audit_dir: Path
    summary: dict[str, Any]
    issues: list[dict[str, Any]]  # every audited image, most likely wrong first
    duplicates: list[dict[str, Any]]


# -- confident learning -------------------------------------------------------------------------------

def rank_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, flagged, suggested): image indices ranked most-likely-wrong first, whether each image is
    in the confident joint's off-diagonal, and the class it confidently is (its label where none).

    ``probabilities``: out-of-fold, N x K; ``labels``: the given labels (N,)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n, k = p.shape
    thresholds = np.array([p[y == j, j].mean() if np.any(y == j) else 1.0 for j in range(k)])
    above = p >= thresholds[None, :] - 1e-12
    masked = np.where(above, p, -np.inf)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), y)
    flagged = confident != y
    self_conf = p[np.arange(n), y]
    margin = p[np.arange(n), confident] - self_conf
    order = np.lexsort((-margin, self_conf))  # lowest self-confidence first; ties: larger disagreement first
    return order, flagged, confident


# -- perceptual hash ---------------------------------------------------------------------------------

def perceptual_hash(image: np.ndarray) -> int:
    """64-bit pHash of a uint8 image (grey or colour): robust to small noise, blur and brightness changes."""
    grey = image if image.ndim == 2 else (image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) does not set the median
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of two arrays of 64-bit hashes (as uint64)."""
    x = np.bitwise_xor(a[:, None], b[None, :])
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def near_duplicates(hashes: np.ndarray, splits: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for image pairs from different splits within ``max_distance`` bits; i before j."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    split_arr = np.asarray(splits)
    out = []
    for start in range(0, len(hashes), 256):  # rows in chunks: N x N bits at once would be N^2 x 64 bytes
        d = hamming_matrix(hashes[start : start + 256], hashes)
        for r, c in zip(*np.nonzero(d <= max_distance)):
            i = start + int(r)
            if i < c and split_arr[i] != split_arr[c]:
                out.append((i, int(c), int(d[r, c])))
    return sorted(out, key=lambda t: (t[2], t[0], t[1]))


# -- out-of-fold training ----------------------------------------------------------------------------

def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per image; each class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold


@dataclass(frozen=True)
class FoldTraining:
    """How each fold's model is made: ``arch`` trained ``epochs`` epochs (AdamW, one-cycle) from random weights,
    or, with ``initial`` (a trained model), that model's fixed features and a new linear head per fold."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    augment: Any = None  # a weak view to train on; None: the clean images
    initial: Any = None


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, spec: PreprocessSpec,
                     training: FoldTraining) -> Any:
    """A model of ``training.arch`` trained on prepared uint8 images (AdamW, one-cycle schedule).
    ``training.initial``: a trained model to start from (its classifier is re-initialised, so the labels it was
    trained with do not decide the new head); None: random initialisation."""
    import copy

    import torch
    import torch.nn.functional as F

    from kit.models import create_model
    from kit.views.build import apply_view

    arch, epochs, lr, seed, augment = training.arch, training.epochs, training.lr, training.seed, training.augment
    batch_size = min(training.batch_size, len(labels))
    torch.manual_seed(seed)
    if training.initial is None:
        model = create_model(arch, num_classes, spec.num_channels, where="student")
    else:
        model = copy.deepcopy(training.initial)
        model.reset_classifier(num_classes)
    clean = torch.from_numpy(to_tensor(images, spec))
    target = torch.from_numpy(labels.astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = max(1, len(labels) // batch_size)  # whole batches only: batch norm needs more than one sample
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            if augment is not None:
                views = np.stack([apply_view(augment, images[i], int(seed * 1_000_003 + epoch * 10_007 + i)) for i in batch])
                x = torch.from_numpy(to_tensor(views, spec))
            else:
                x = clean[batch]
            loss = F.cross_entropy(model(x), target[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def predict_probabilities(model: Any, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    import torch

    x = torch.from_numpy(to_tensor(images, spec))
    with torch.no_grad():
        logits = torch.cat([model(x[s : s + 128]) for s in range(0, len(x), 128)]) if len(x) else torch.zeros((0, 1))
    return torch.softmax(logits.float(), dim=1).numpy()


def embeddings(model: Any, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The model's pre-logit features (timm ``forward_head(pre_logits=True)``), eval mode."""
    import torch

    x = torch.from_numpy(to_tensor(images, spec))
    model.eval()
    with torch.no_grad():
        return torch.cat([model.forward_head(model.forward_features(x[s : s + 128]), pre_logits=True)
                          for s in range(0, len(x), 128)]).float().numpy()


def linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int, steps: int = 300,
                 weight_decay: float = 1e-3) -> Callable[[np.ndarray], np.ndarray]:
    """A softmax classifier on fixed features (standardised, L2-regularised, full-batch L-BFGS)."""
    import torch
    import torch.nn.functional as F

    mean, std = features.mean(0), features.std(0) + 1e-6
    x = torch.from_numpy((features - mean) / std)
    y = torch.from_numpy(labels.astype(np.int64))
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)

    def predict(new: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(head(torch.from_numpy((new - mean) / std)), dim=1).numpy()

    return predict


def out_of_fold_probabilities(images: np.ndarray, labels: np.ndarray, num_classes: int, spec: PreprocessSpec, folds: int,
                              training: FoldTraining, log: Callable[[str], None] = print) -> np.ndarray:
    """Every image's probabilities from a model that did not learn its label (``fold_probabilities`` without unseen
    images)."""
    return fold_probabilities(images, labels, num_classes, spec, folds, training, log)[0]


def fold_probabilities(images: np.ndarray, labels: np.ndarray, num_classes: int, spec: PreprocessSpec, folds: int,
                       training: FoldTraining, log: Callable[[str], None] = print,
                       unseen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold probabilities of ``images``, mean probabilities of ``unseen``). ``images``: prepared uint8
    NxHxWxC, the split the fold models learn from (training).

    ``training.initial`` None: ``folds`` models of ``training.arch`` trained from scratch, each on the other
    folds. ``training.initial`` a trained model: its features, fixed, and per fold a new linear classifier fitted on
    the other folds (a linear probe; ``training.epochs`` unused).

    ``unseen`` (validation and test images): scored by the mean of the ``folds`` fold models, none of which trained on
    them, so a wrong label there is judged by models that never saw it."""
    seed, initial = training.seed, training.initial
    fold = stratified_folds(labels, folds, seed)
    probs = np.zeros((len(labels), num_classes), dtype=np.float32)
    unseen = np.zeros((0, *images.shape[1:]), dtype=images.dtype) if unseen is None else unseen
    unseen_probs = np.zeros((len(unseen), num_classes), dtype=np.float64)
    features = embeddings(initial, images, spec) if initial is not None else None
    unseen_features = embeddings(initial, unseen, spec) if initial is not None and len(unseen) else None
    for f in range(folds):
        started = time.perf_counter()
        train_idx, held_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if features is not None:
            probe = linear_probe(features[train_idx], labels[train_idx], num_classes, seed + f)
            probs[held_idx] = probe(features[held_idx])
            if unseen_features is not None:
                unseen_probs += probe(unseen_features) / folds
        else:
            model = train_classifier(images[train_idx], labels[train_idx], num_classes, spec,
                                     replace(training, seed=seed + f))
            probs[held_idx] = predict_probabilities(model, images[held_idx], spec)
            if len(unseen):
                unseen_probs += predict_probabilities(model, unseen, spec) / folds
        held_acc = float((probs[held_idx].argmax(1) == labels[held_idx]).mean())
        log(f"audit: fold {f + 1}/{folds}: {len(train_idx)} train, {len(held_idx)} held out, "
            f"held-out agreement with the labels {held_acc:.3f} ({time.perf_counter() - started:.0f} s)")
    return probs, unseen_probs.astype(np.float32)


# -- the audit -------------------------------------------------------------------------------------

INIT_CHOICES = ("auto", "student", "scratch")
# scratch, 3 folds: on the sample line with 5 % flipped labels the top 20 hold 14 flips at 12 epochs, 15 at 20, 14 at
# 30 (32 px); the student's own features (trained on the flipped labels) find 13: it memorised some of them.
DEFAULT_EPOCHS = {"student": 0, "scratch": 20}  # student: a linear probe, no epochs
DEFAULT_LR = {"student": 0.001, "scratch": 0.01}


@dataclass(frozen=True)
class AuditSettings:
    """What ``kit audit`` does. ``init``: what each fold's model is built from. ``student``: the run's ``student.pt``
    as a fixed feature extractor and, per fold, a new linear classifier fitted on the other folds (seconds; the
    features already know the line; caveat: the student was trained on these very labels, and the labels it
    memorised look right to it). ``scratch``: ``folds`` models of the student architecture trained from random
    weights ``epochs`` epochs (default 20): no trace of the audited labels (true out-of-fold predictions, as
    confident learning needs), slower. ``auto``: ``scratch``; ``student`` is the fast look when minutes matter more
    than the last few flips. ``arch`` defaults to the run's student architecture (scratch only); ``image_size_px``
    (square) to the recipe's image size; ``top``: rows in the HTML page (default: the flagged issues, at least 20);
    ``augment``: train on the recipe's weak view (False: clean images, faster); ``seed``: the recipe's when None."""

    folds: int = 3
    epochs: int | None = None
    init: str = "auto"
    arch: str | None = None
    image_size_px: int | None = None
    batch_size: int = 32
    lr: float | None = None
    max_distance: int = 4  # near-duplicates: at most this many of 64 hash bits apart
    top: int | None = None
    splits: tuple[str, ...] = SPLITS  # validation, its certification half and test: scored by the fold models (train only)
    seed: int | None = None
    augment: bool = True


def resolve_settings(run_dir: Path, settings: AuditSettings) -> AuditSettings:
    """The settings checked against the run (one line naming the option when one is wrong), with ``auto`` and the
    per-start default epochs and learning rate filled in."""
    if not (run_dir / LOCK_NAME).is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {LOCK_NAME}); make one with `kit run RECIPE`")
    if settings.folds < 2:
        raise ArgumentError("folds", f"needs at least 2 folds (got {settings.folds})")
    if settings.init not in INIT_CHOICES:
        raise ArgumentError("init", f"unknown start {settings.init!r}; choose from {', '.join(INIT_CHOICES)}")
    student_file = checkpoint_path(run_dir, "student")
    if settings.init == "student" and not student_file.is_file():
        raise ArgumentError("init", f"{student_file} not found: the run has no trained student; use {{init}} scratch",
                            prefix=False)
    init = "scratch" if settings.init == "auto" else settings.init
    epochs = DEFAULT_EPOCHS[init] if settings.epochs is None else settings.epochs
    if init == "scratch" and epochs < 1:
        raise ArgumentError("epochs", f"needs at least 1 epoch (got {epochs})")
    return replace(settings, init=init, epochs=epochs, lr=DEFAULT_LR[init] if settings.lr is None else settings.lr)


def audit_run(run_dir: str | Path, settings: AuditSettings = AuditSettings(),
              log: Callable[[str], None] = print) -> AuditResult:
    """Rank the labels of ``settings.splits`` (default: the training split) by how likely they are wrong, and list
    near-duplicates across all splits."""
    run_dir = Path(run_dir)
    settings = resolve_settings(run_dir, settings)
    folds, epochs, init, arch, lr, seed = (settings.folds, settings.epochs, settings.init, settings.arch, settings.lr,
                                           settings.seed)
    image_size_px, max_distance, top, splits = settings.image_size_px, settings.max_distance, settings.top, settings.splits
    student_file = checkpoint_path(run_dir, "student")
    from kit.data.dataset import preprocess_spec
    from kit.views.build import build_view

    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    seed = recipe.seed if seed is None else seed
    spec = preprocess_spec(recipe)
    if image_size_px is not None:
        spec = PreprocessSpec(**{**spec.__dict__, "image_size": (image_size_px, image_size_px)})
    initial = None
    if init == "student":
        from kit.models import load_model

        initial, body = load_model(student_file)
        if arch is not None and arch != body["model_args"]["arch"]:
            raise ArgumentError("arch", f"{arch!r} differs from the run's student ({body['model_args']['arch']!r}); "
                                        "leave it out, or start from scratch", prefix=True)
        arch = body["model_args"]["arch"]
    arch = arch or recipe.student.arch
    rows = read_split_rows(run_dir)
    classes = sorted({label for _, label, _ in rows}) if recipe.data.classes is None else list(recipe.data.classes)
    lookup = {c: i for i, c in enumerate(classes)}
    started = time.perf_counter()
    raw = [read_image(path, spec.channels) for path, _, _ in rows]
    prepared = np.stack([prepare_image(img, spec) for img in raw])
    unknown = [x for x in splits if x not in SPLITS]
    if unknown:
        raise ArgumentError("splits", f"unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    learn = np.flatnonzero(np.array([split == "train" for _, _, split in rows]))
    if len(learn) < folds * len(classes):
        raise ArgumentError("folds", f"{len(learn)} images in train are too few for {folds} folds of {len(classes)} classes")
    labels = np.array([lookup[label] for _, label, _ in rows], dtype=np.int64)
    weak = (build_view(recipe.views.weak, "views.weak", spec.image_size, spec.num_channels)
            if settings.augment and recipe.views.weak else None)
    unseen = np.flatnonzero(np.array([split in splits and split != "train" for _, _, split in rows]))
    how = "linear probe on the run's student" if init == "student" else f"from scratch, {epochs} epochs"
    log(f"audit: {len(learn)} training images in {folds} folds of {arch} ({how}) at {spec.image_size[0]}x{spec.image_size[1]} px"
        + (f"; {len(unseen)} validation/test images scored by the mean of the {folds} fold models (trained on train only)"
           if len(unseen) else ""))
    training = FoldTraining(arch, epochs, settings.batch_size, lr, seed, weak, initial)
    oof, unseen_probs = fold_probabilities(prepared[learn], labels[learn], len(classes), spec, folds, training, log,
                                           unseen=prepared[unseen])
    keep = "train" in splits
    idx = np.concatenate([learn if keep else learn[:0], unseen])
    probs = np.concatenate([oof if keep else oof[:0], unseen_probs])
    order, flagged, suggested = rank_label_issues(probs, labels[idx])
    issues = []
    for rank, j in enumerate(order, start=1):
        i = int(idx[j])
        issues.append({"rank": rank, "path": rows[i][0], "split": rows[i][2], "label": classes[labels[i]],
                       "suggested": classes[suggested[j]], "flagged": bool(flagged[j]),
                       "label_probability": float(probs[j, labels[i]]), "suggested_probability": float(probs[j, suggested[j]]),
                       "margin": float(probs[j, suggested[j]] - probs[j, labels[i]])})
    hashes = np.array([perceptual_hash(img) for img in raw], dtype=np.uint64)
    duplicates = [{"path_a": rows[i][0], "split_a": rows[i][2], "label_a": rows[i][1],
                   "path_b": rows[j][0], "split_b": rows[j][2], "label_b": rows[j][1], "distance": d,
                   "labels_differ": rows[i][1] != rows[j][1]}
                  for i, j, d in near_duplicates(hashes, [r[2] for r in rows], max_distance)]
    n_flagged = int(flagged.sum())
    oof_accuracy = float((probs.argmax(1) == labels[idx]).mean())
    summary = {"run_dir": str(run_dir), "classes": classes, "splits": list(splits), "images": int(len(idx)),
               "arch": arch, "init": init, "folds": folds, "epochs": epochs, "lr": lr, "image_size": list(spec.image_size),
               "out_of_fold_agreement": oof_accuracy, "flagged": n_flagged,
               "flagged_by_class": {c: int(sum(1 for r in issues if r["flagged"] and r["label"] == c)) for c in classes},
               "by_split": _by_split(issues, splits),
               "near_duplicates": len(duplicates), "max_distance": max_distance,
               "seconds": round(time.perf_counter() - started, 1), "method": "confident learning (Northcutt et al. 2021)"}
    shown = top if top is not None else max(20, n_flagged)
    audit_dir = _write_audit(run_dir, summary, issues, duplicates, shown, spec.channels)
    log(f"audit: {n_flagged} labels flagged of {len(idx)}; {len(duplicates)} near-duplicate pairs across splits; {audit_dir}")
    return AuditResult(audit_dir, summary, issues, duplicates)


def _by_split(issues: list[dict[str, Any]], splits: tuple[str, ...], listed: int = 20) -> dict[str, Any]:
    """Per audited split: images, flagged labels, how its images were scored, and its flagged images (most likely wrong
    first, at most ``listed``). Validation and test labels matter most: they choose the checkpoint, certify the threshold
    and make every figure of the report."""
    out = {}
    for split in (s for s in SPLITS if s in splits):
        mine = [r for r in issues if r["split"] == split]
        flagged = [r for r in mine if r["flagged"]]
        out[split] = {"images": len(mine), "flagged": len(flagged), "scored_by": SCORED_BY[split],
                      "flagged_images": [{k: r[k] for k in ("rank", "path", "label", "suggested", "label_probability")}
                                         for r in flagged[:listed]]}
    return out


def _write_audit(run_dir: Path, summary: dict[str, Any], issues: list[dict[str, Any]], duplicates: list[dict[str, Any]],
                 shown: int, channels: str) -> Path:
    import jinja2

    staging = staging_dir(run_dir / AUDIT_DIR)
    write_csv_atomic(staging / LABEL_ISSUES_CSV, issues)
    write_csv_atomic(staging / NEAR_DUPLICATES_CSV, duplicates, columns=[
        "path_a", "split_a", "label_a", "path_b", "split_b", "label_b", "distance", "labels_differ"])
    write_json_atomic(staging / AUDIT_JSON, {**summary, "top": issues[:shown], "duplicates": duplicates[:200]})
    env = jinja2.Environment(loader=jinja2.PackageLoader("kit.report", "templates"), autoescape=True)
    html = env.get_template("audit.html.j2").render(
        s=summary, issues=[{**r, "thumb": thumbnail(r["path"], channels, THUMB_PX)} for r in issues[:shown]],
        duplicates=[{**d, "thumb_a": thumbnail(d["path_a"], channels, THUMB_PX), "thumb_b": thumbnail(d["path_b"], channels, THUMB_PX)}
                    for d in duplicates[:100]])
    write_text_atomic(staging / AUDIT_HTML, html)
    return publish_dir(staging, run_dir / AUDIT_DIR)
