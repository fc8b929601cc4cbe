"""Training in anomaly mode, on good parts only: the teacher's features, then the student that regresses them.

The teacher (no published weights): each good part is shown as it is or with one synthetic defect
(``kit.views.defects``), in the weak or the strong view; a 1x1 head on its features calls each location good or
defective. What it learns is the trunk: features in which a defect, real or synthetic, stands out.

The student, the mission's cross-view idea in feature space: fed the strong view (the recipe's photometric steps,
so both views stay aligned), it regresses the teacher's features of the weak view, so lighting, blur and noise do
not raise the score. Where the teacher's own features move most between the two views (above
``anomaly.unstable_quantile`` of that change in the batch), the location is left out of that term, as CRLD masks
unconfident teacher outputs. The plain term (weak view to weak view) always counts.

Every random draw comes from (seed, epoch, image), so a run gives the same model twice on the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deploy.preprocess import PreprocessSpec, to_tensor
from kit.anomaly.model import AnomalyModel, AnomalyTeacher, FeatureTrunk, discrepancy
from kit.views import apply_view
from kit.views.defects import synthesize_defect


@dataclass(frozen=True)
class Schedule:
    """The optimisation settings one network trains with (from the recipe's teacher or student block)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str
    seed: int


def _optimizer(params, s: Schedule, steps: int):
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=max(1, steps), pct_start=0.15)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size) if len(order[i:i + batch_size]) > 1]


def _view(pipeline: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    return apply_view(pipeline, image, seed)


def cell_targets(masks: np.ndarray, reduction: int) -> torch.Tensor:
    """Pixel masks N x H x W -> per-cell soft targets: twice the defect's share of the cell, capped at 1 (a thin
    scratch covers a third of a 4 px cell and still is a defect there)."""
    m = torch.from_numpy(masks[:, None].astype(np.float32))
    return (F.avg_pool2d(m, reduction, reduction, ceil_mode=True) * 2).clamp(max=1)


def invariance(features_strong: torch.Tensor, features_weak: torch.Tensor) -> torch.Tensor:
    """How far the strong view moved the features, per channel in units of the weak view's spread (so shrinking
    every feature to zero cannot satisfy it)."""
    spread = features_weak.detach().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4)
    return ((features_strong - features_weak.detach()) / spread).pow(2).mean()


def _teacher_batch(images: np.ndarray, batch: np.ndarray, pipelines: dict[str, A.Compose], photometric: A.Compose | None,
                   severity: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[float]]:
    """Per part: a view with a synthetic defect half the time. With ``photometric``: the weak view, and the same
    picture through the strong view's photometric steps (the defect in both, so both views say the same);
    without: the weak or the strong view, one of the two (no second list)."""
    weak, strong, masks, defective = [], [], [], []
    for i in batch:
        seed = int(rng.integers(0, 2**31))
        pick = "weak" if photometric is not None or rng.random() < 0.5 else "strong"
        view = _view(pipelines[pick], images[i], seed)
        if rng.random() < 0.5:
            view, mask = synthesize_defect(view, rng, severity)
            defective.append(1.0)
        else:
            mask = np.zeros(view.shape[:2], np.float32)
            defective.append(0.0)
        weak.append(view)
        if photometric is not None:
            strong.append(_view(photometric, view, seed + 1))
        masks.append(mask)
    return weak, strong, masks, defective


def train_teacher(trunk: FeatureTrunk, images: np.ndarray, spec: PreprocessSpec, pipelines: dict[str, A.Compose],
                  severity: int, s: Schedule, device: torch.device, log: Callable[[str], None],
                  photometric: A.Compose | None = None, invariance_weight: float = 0.0) -> list[dict[str, Any]]:
    """Good parts against the same parts with synthetic defects, location by location. With ``invariance_weight``
    > 0, each part in both views and the strong view's features held to the weak view's (``invariance``). Off by
    default: measured on the sparse line (seed 0), a weight of 1 took validation AUROC from 0.97 to 0.89, because
    invariance to blur and noise blinds the features to defects of a few pixels. Returns the history."""
    teacher = AnomalyTeacher(trunk).to(device).train()
    paired = invariance_weight > 0
    photometric = (photometric if photometric is not None else pipelines["strong"]) if paired else None
    steps = s.epochs * len(_batches(len(images), s.batch_size, np.random.default_rng(0)))
    opt, sched = _optimizer(teacher.parameters(), s, steps)
    history = []
    for epoch in range(s.epochs):
        rng = np.random.default_rng([s.seed, 11, epoch])
        losses, hits, total, moved = [], 0, 0, []
        for batch in _batches(len(images), s.batch_size, rng):
            weak, strong, masks, defective = _teacher_batch(images, batch, pipelines, photometric, severity, rng)
            views = 2 if paired else 1
            x = torch.from_numpy(to_tensor(np.stack(weak + strong), spec)).to(device)
            features, logits = teacher(x)
            target = cell_targets(np.stack(masks * views), trunk.reduction).to(device)
            target = target[..., :logits.shape[-2], :logits.shape[-1]]
            image_logit = logits.flatten(1).max(dim=1).values
            label = torch.tensor(defective * views, device=device)
            n = len(batch)
            inv = invariance(features[n:], features[:n]) if paired else torch.zeros((), device=device)
            loss = F.binary_cross_entropy_with_logits(logits, target) + \
                F.binary_cross_entropy_with_logits(image_logit, label) + invariance_weight * inv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(teacher.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            moved.append(float(inv.detach()))
            hits += int(((image_logit > 0).float() == label).sum())
            total += views * n
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "synthetic_accuracy": hits / max(1, total),
               "view_change": float(np.mean(moved))}
        history.append(row)
        log(f"anomaly teacher: epoch {epoch + 1}/{s.epochs} loss {row['loss']:.4f}, "
            f"tells synthetic defects from good parts on {row['synthetic_accuracy']:.1%} of training views"
            + (f", strong-view feature change {row['view_change']:.3f}" if paired else ""))
    trunk.eval()
    return history


@torch.no_grad()
def feature_statistics(trunk: FeatureTrunk, inputs: np.ndarray, device: torch.device, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the teacher's features on good parts (std floored: a dead channel divides by 1)."""
    trunk.eval()
    total, total_sq, count = None, None, 0
    for i in range(0, len(inputs), batch):
        f = trunk(torch.from_numpy(inputs[i:i + batch]).to(device)).double()
        s1, s2 = f.sum(dim=(0, 2, 3)), f.pow(2).sum(dim=(0, 2, 3))
        total = s1 if total is None else total + s1
        total_sq = s2 if total_sq is None else total_sq + s2
        count += f.shape[0] * f.shape[2] * f.shape[3]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float().view(1, -1, 1, 1).cpu(), std.float().view(1, -1, 1, 1).cpu()


def unstable_mask(teacher_weak: torch.Tensor, teacher_strong: torch.Tensor, quantile: float) -> torch.Tensor:
    """1 where the teacher's features move at most the ``quantile`` of their change between views, else 0."""
    change = discrepancy(teacher_strong, teacher_weak)
    if quantile >= 1:
        return torch.ones_like(change)
    cut = torch.quantile(change.flatten(), quantile)
    return (change <= cut).float()


def train_student(model: AnomalyModel, images: np.ndarray, spec: PreprocessSpec, weak: A.Compose,
                  photometric: A.Compose, cross_view: bool, unstable_quantile: float, s: Schedule, device: torch.device,
                  log: Callable[[str], None], on_epoch: Callable[[int], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The student regresses the normalised teacher features on good parts (``model.teacher`` stays frozen)."""
    model.to(device)
    model.teacher.eval()
    for p in model.teacher.parameters():
        p.requires_grad_(False)
    student = model.student.train()
    steps = s.epochs * len(_batches(len(images), s.batch_size, np.random.default_rng(0)))
    opt, sched = _optimizer(student.parameters(), s, steps)
    history = []
    for epoch in range(s.epochs):
        rng = np.random.default_rng([s.seed, 23, epoch])
        losses = []
        for batch in _batches(len(images), s.batch_size, rng):
            seeds = [int(rng.integers(0, 2**31)) for _ in batch]
            weak_views = [_view(weak, images[i], seed) for i, seed in zip(batch, seeds)]
            xw = torch.from_numpy(to_tensor(np.stack(weak_views), spec)).to(device)
            with torch.no_grad():
                tw = model.teacher_features(xw)
            size = tuple(tw.shape[-2:])
            loss = discrepancy(student(xw, size), tw).mean()
            if cross_view:
                strong_views = [_view(photometric, v, seed + 1) for v, seed in zip(weak_views, seeds)]
                xs = torch.from_numpy(to_tensor(np.stack(strong_views), spec)).to(device)
                with torch.no_grad():
                    mask = unstable_mask(tw, model.teacher_features(xs), unstable_quantile)
                cross = discrepancy(student(xs, size), tw)
                loss = loss + (cross * mask).sum() / mask.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        student.eval()
        row.update(on_epoch(epoch) if on_epoch is not None else {})
        student.train()
        history.append(row)
        extra = "".join(f", {k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "loss") and isinstance(v, float))
        log(f"anomaly student: epoch {epoch + 1}/{s.epochs} loss {row['loss']:.4f}{extra}")
    student.eval()
    return history


@torch.no_grad()
def raw_scores(model: AnomalyModel, inputs: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    """Image scores before the scale (the scale is set from these on good validation parts)."""
    model.eval()
    out = [model.raw_scores(torch.from_numpy(inputs[i:i + batch]).to(device)).cpu() for i in range(0, len(inputs), batch)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@torch.no_grad()
def descriptors(model: AnomalyModel, inputs: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(inputs), batch):
        cells, t = model.cells(torch.from_numpy(inputs[i:i + batch]).to(device))
        out.append(model.descriptor(cells, t).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.teacher.channels), np.float32)


def score_scale(good_val_scores: np.ndarray, quantile: float = 0.99) -> float:
    """The raw score that becomes 1.0: the 99th percentile of good validation parts (their max when few)."""
    if len(good_val_scores) == 0:
        raise ValueError("no good validation images to normalise the anomaly score on")
    return max(float(np.quantile(good_val_scores, quantile)), 1e-12)


def kind_centres(desc: np.ndarray, kinds: np.ndarray, names: list[str], margin: float = 1.25) -> tuple[np.ndarray, dict[str, float]]:
    """The hybrid's namer: per named kind, the centre of its training descriptors and a radius (``margin`` x the
    95th percentile of its own images' squared distance): a rejected part farther than that from every centre is
    an unknown kind."""
    centres, radius = [], {}
    for k, name in enumerate(names):
        own = desc[kinds == k]
        centre = own.mean(axis=0)
        d = ((own - centre) ** 2).sum(axis=1)
        centres.append(centre)
        radius[name] = float(np.quantile(d, 0.95) * margin) if len(d) > 1 else float("inf")
    return np.stack(centres).astype(np.float32), radius

