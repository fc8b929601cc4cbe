"""One training loop for teachers and students, readable top to bottom.

``fit`` runs a fitting: build the training objects, resume if asked, then per epoch seed, train
(``train_one_epoch``: forward per view, loss from the method, backward, step, lr), validate on
clean preprocessed tensors (``validate``), log a history row and checkpoint (the best weights by
the recipe's ``select_by`` score, and the last state for resume; ``kit.train.checkpoint``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kit.data.dataset import ViewDataset
from kit.device import DeviceSetup
from kit.errors import TrainingDiverged
from kit.evaluate import agreement, classification_metrics, predict_logits
from kit.progress import Reporter
from kit.recipe.schema import TrainConfig
from kit.seeds import SEED_SHUFFLE, SEED_TORCH, derive_seed
from kit.train.checkpoint import FitProgress, RoleCheckpointer
from kit.train.distributed import SINGLE, DistContext, SplitBatchSampler, all_reduce_sum, barrier, wrap_for_training

# (model, {view: input batch}, target) -> (loss, {part: tensor}, logits of the first view)
StepFn = Callable[[nn.Module, dict[str, Tensor], Tensor], tuple[Tensor, dict[str, Tensor], Tensor]]


@dataclass
class FitResult:
    best_epoch: int
    best_score: float  # the ``select_by`` validation score of the best epoch
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Fitting:
    """What stays fixed while one role trains: its name, settings, seed, hardware and processes."""

    role: str
    cfg: TrainConfig
    setup: DeviceSetup
    num_workers: int
    dist_ctx: DistContext = SINGLE
    balance: str = "none"  # resolved: none | sampler | loss (kit.data.balance)
    seed: int = 0  # every epoch's randomness is derived from (seed, epoch)


@dataclass(frozen=True)
class ValidationSet:
    """What every epoch is scored on: clean, runtime-identical inputs (not an augmented view)."""

    inputs: Tensor
    labels: np.ndarray
    classes: list[str]  # names for the per-class recall columns
    reference: np.ndarray | None = None  # the teacher's predictions: student agreement


@dataclass(frozen=True)
class CheckpointTarget:
    """Where a fitting keeps its best weights and its resume state, and what they carry."""

    folder: Path
    meta: dict[str, Any]  # classes, preprocessing, recipe hash
    model_args: dict[str, Any]  # what rebuilds the model
    resume: bool = False  # continue from ``<role>.last.pt`` when it exists


@dataclass
class Trainer:
    """The objects one role trains with. ``model`` is the plain module that checkpoints and validation
    use; ``net`` is what the forward pass runs (the same module, wrapped by DDP and torch.compile)."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    grad_scaler: torch.amp.GradScaler


@dataclass
class EpochTotals:
    """One epoch's training sums over its samples (over all ranks under DDP), still tensors."""

    loss_sum: Tensor
    correct: Tensor
    seen: int
    part_sums: dict[str, Tensor]
    train_s: float


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on norms and biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.2)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def epoch_shape(train_size: int, batch_size: int) -> tuple[bool, int]:
    """(drop_last, steps per epoch): a last batch of one breaks BatchNorm, so the ragged last batch
    is dropped whenever there is more than one batch."""
    drop_last = train_size > batch_size
    return drop_last, (train_size // batch_size if drop_last else 1)


def prepare_training(model: nn.Module, fitting: Fitting, total_steps: int) -> Trainer:
    """Place the model, wrap it for the forward pass, and build optimiser, schedule and grad scaler.

    The grad scaler exists on every device so there is one optimiser-step path; it is enabled only
    for float16 autocast. Disabled, it passes the loss through, skips unscaling and calls
    ``optimizer.step()`` itself, so float32 and bfloat16 steps are exactly plain PyTorch steps.
    """
    device = fitting.setup.device
    model.to(device)
    if device.type == "cuda":
        if fitting.dist_ctx.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BatchNorm over the global batch
        model.to(memory_format=torch.channels_last)
    net = wrap_for_training(model, fitting.dist_ctx, device)
    if fitting.cfg.compile:
        net = torch.compile(net)  # checkpoints keep the plain model's names: only the wrapper is compiled
    optimizer = make_optimizer(model, fitting.cfg)
    scheduler = make_scheduler(optimizer, fitting.cfg, total_steps)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=fitting.setup.needs_grad_scaler)
    return Trainer(model, net, optimizer, scheduler, grad_scaler)


def make_loader(train_set: ViewDataset, fitting: Fitting, drop_last: bool,
                first_epoch: int) -> tuple[DataLoader, SplitBatchSampler]:
    """One loader for the whole fitting: workers persist across epochs (the epoch travels with each
    index); the sampler draws the single-process batches, split across ranks under DDP."""
    labels = train_set.split.labels if fitting.balance == "sampler" else None
    sampler = SplitBatchSampler(len(train_set), fitting.cfg.batch_size, fitting.dist_ctx, 0, drop_last, epoch=first_epoch,
                                balance_labels=labels)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=fitting.num_workers,
                        pin_memory=fitting.setup.device.type == "cuda", persistent_workers=fitting.num_workers > 0)
    return loader, sampler


def _to_device(batch: list[Tensor], view_names: list[str], device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
    """The loader's (view..., target) batch as {view: input} and target on ``device``."""
    *inputs, target = batch
    non_blocking = device.type == "cuda"
    target = target.to(device, non_blocking=non_blocking)
    views = {}
    for name, x in zip(view_names, inputs):
        x = x.to(device, non_blocking=non_blocking)
        views[name] = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
    return views, target


def _optimizer_step(trainer: Trainer, loss: Tensor, grad_clip_norm: float | None) -> None:
    """Backward, optional clipping, step, lr: one path for every precision (see ``prepare_training``)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.grad_scaler.scale(loss).backward()
    if grad_clip_norm:
        trainer.grad_scaler.unscale_(trainer.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(trainer.model.parameters(), grad_clip_norm)
    trainer.grad_scaler.step(trainer.optimizer)  # skips the step when float16 gradients overflowed
    trainer.grad_scaler.update()
    trainer.scheduler.step()


def _sum_over_ranks(totals: EpochTotals, fitting: Fitting) -> EpochTotals:
    """One all-reduce per epoch (not per step): every rank then logs the global figures."""
    if not fitting.dist_ctx.enabled:
        return totals
    keys = sorted(totals.part_sums)
    seen = torch.tensor(float(totals.seen), device=fitting.setup.device)
    flat = torch.stack([totals.loss_sum, totals.correct.float(), seen, *[totals.part_sums[k] for k in keys]])
    all_reduce_sum(fitting.dist_ctx, flat)
    part_sums = {k: flat[3 + i] for i, k in enumerate(keys)}
    return EpochTotals(flat[0], flat[1], int(flat[2].item()), part_sums, totals.train_s)


def train_one_epoch(fitting: Fitting, trainer: Trainer, loader: DataLoader, step_fn: StepFn, epoch: int,
                    steps_per_epoch: int, reporter: Reporter) -> EpochTotals:
    """One pass over the loader. The sums stay on the device: one sync per epoch, not per step."""
    device = fitting.setup.device
    trainer.net.train()
    part_sums: dict[str, Tensor] = {}
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    started = time.perf_counter()
    for step, batch in enumerate(loader):
        # -- forward: the method's step function sees every view of the batch
        views, target = _to_device(batch, loader.dataset.view_names, device)
        with fitting.setup.autocast():
            loss, loss_parts, logits = step_fn(trainer.net, views, target)
        # -- backward, step, lr
        _optimizer_step(trainer, loss, fitting.cfg.grad_clip_norm)
        # -- bookkeeping
        loss_sum += loss.detach() * len(target)
        correct += (logits.detach().argmax(1) == target).sum()
        for k, v in loss_parts.items():
            part_sums[k] = part_sums.get(k, torch.zeros((), device=device)) + v.detach().float() * len(target)
        seen += len(target)
        if step % 5 == 0 or step == steps_per_epoch - 1:
            reporter.step(fitting.role, epoch, step + 1, float(loss.detach()))
    totals = EpochTotals(loss_sum, correct, seen, part_sums, train_s=time.perf_counter() - started)
    return _sum_over_ranks(totals, fitting)


def validate(model: nn.Module, val_inputs: Tensor, val_labels: np.ndarray, device: torch.device,
             classes: list[str], val_reference: np.ndarray | None = None) -> dict[str, float]:
    """Validation scores of the plain model on clean, runtime-identical inputs (what the exported model
    will see, not an augmented view): accuracy, macro-F1, balanced accuracy, cross-entropy loss, recall per
    class and, with ``val_reference``, agreement with it."""
    logits = predict_logits(model, val_inputs, device)
    val_pred = logits.argmax(1).numpy()
    m = classification_metrics(val_labels, val_pred, classes)
    scores = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "balanced_accuracy": m["balanced_accuracy"],
              "loss": float(F.cross_entropy(logits.float(), torch.as_tensor(val_labels, dtype=torch.long)))}
    scores.update({f"recall_{c}": v["recall"] for c, v in m["per_class"].items()})
    if val_reference is not None:
        scores["agreement"] = agreement(val_pred, val_reference)
    return scores


SCORE_TIE = 1e-12  # two epochs whose select_by scores differ by less are tied (scores are ratios of counts)


def is_new_best(score: float, loss: float, progress: FitProgress, tie_break: str) -> bool:
    """Whether an epoch with validation ``score`` and ``loss`` replaces the best so far. A higher score always
    does; among tied scores ``tie_break`` decides: ``first`` keeps the earlier epoch, ``last`` the later one,
    ``val_loss`` the lower validation loss (the later one when the losses tie too)."""
    if score > progress.best_score + SCORE_TIE:
        return True
    if score < progress.best_score - SCORE_TIE:
        return False
    if tie_break == "last":
        return True
    if tie_break == "val_loss":
        return loss <= progress.best_loss
    return False


def _check_finite(fitting: Fitting, epoch: int, totals: EpochTotals, best_epoch: int) -> None:
    """Stop on a NaN/inf loss with the fix, instead of training on garbage."""
    if not torch.isfinite(totals.loss_sum):
        role, cfg = fitting.role, fitting.cfg
        raise TrainingDiverged(
            f"{role}: the training loss became NaN/inf in epoch {epoch + 1}; lower {role}.lr (now {cfg.lr:g}) "
            f"or {role}.grad_clip_norm (now {cfg.grad_clip_norm}); the best epoch so far ({best_epoch}) is kept"
        )


def _history_row(fitting: Fitting, epoch: int, lr: float, totals: EpochTotals, val_scores: dict[str, float],
                 epoch_started: float) -> dict[str, Any]:
    """One history.csv row: training means per sample, validation scores (per-class recall too: a
    majority-class model shows as one recall of 1 and the rest 0), throughput."""
    n = max(1, totals.seen)
    row: dict[str, Any] = {
        "role": fitting.role, "epoch": epoch + 1, "lr": lr,
        "loss": float(totals.loss_sum) / n, "train_accuracy": float(totals.correct) / n,
        "val_accuracy": val_scores["accuracy"],
    }
    row.update({k: float(v) / n for k, v in totals.part_sums.items()})
    row.update({f"val_{k}": v for k, v in val_scores.items() if k != "accuracy"})
    row["images_per_s"] = totals.seen / totals.train_s if totals.train_s > 0 else 0.0
    row["epoch_s"] = time.perf_counter() - epoch_started
    return row


def fit(
    model: nn.Module,
    fitting: Fitting,
    train_set: ViewDataset,
    step_fn: StepFn,
    validation: ValidationSet,
    checkpoints: CheckpointTarget,
    reporter: Reporter | None = None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs``; keep the best epoch by the ``cfg.select_by`` validation score
    (ties broken by ``cfg.tie_break``: ``is_new_best``).

    ``fitting.balance``: ``sampler`` draws classes evenly (resolved by the caller from ``cfg.balance``;
    ``loss`` lives in ``step_fn``).
    Writes ``<role>.last.pt`` (resume state) and ``<role>.best.pt`` in ``checkpoint_dir``.
    Under torch.distributed every rank trains its slice of each global batch (DDP averages the
    gradients); metrics are summed over ranks and only rank 0 writes or reports.
    """
    role, cfg, dist_ctx, seed = fitting.role, fitting.cfg, fitting.dist_ctx, fitting.seed
    reporter = (reporter or Reporter()) if dist_ctx.is_main else Reporter()
    drop_last, steps_per_epoch = epoch_shape(len(train_set), cfg.batch_size)
    trainer = prepare_training(model, fitting, cfg.epochs * steps_per_epoch)
    checkpointer = RoleCheckpointer(checkpoints.folder, role, checkpoints.model_args, checkpoints.meta,
                                    is_main=dist_ctx.is_main)
    restored = checkpointer.restore(trainer) if checkpoints.resume else None
    if restored is not None:
        reporter.log(f"{role}: resuming after epoch {restored.first_epoch}/{cfg.epochs}")
    progress = restored or FitProgress()
    loader, sampler = make_loader(train_set, fitting, drop_last, progress.first_epoch)
    reporter.stage_start(role, cfg.epochs, steps_per_epoch, progress.first_epoch)
    for epoch in range(progress.first_epoch, cfg.epochs):
        # -- seed: every epoch's randomness depends only on (seed, epoch), so resume is exact
        torch.manual_seed(derive_seed(seed, SEED_TORCH, epoch))
        sampler.set_epoch(epoch, derive_seed(seed, SEED_SHUFFLE, epoch))
        # -- train
        epoch_started = time.perf_counter()
        totals = train_one_epoch(fitting, trainer, loader, step_fn, epoch, steps_per_epoch, reporter)
        _check_finite(fitting, epoch, totals, progress.best_epoch)
        # -- validate, then log the epoch's row
        val_scores = validate(trainer.model, validation.inputs, validation.labels, fitting.setup.device,
                              validation.classes, validation.reference)
        lr = trainer.optimizer.param_groups[0]["lr"]
        row = _history_row(fitting, epoch, lr, totals, val_scores, epoch_started)
        progress.history.append(row)
        # -- checkpoint: best weights, then the resume state (both atomic; rank 0 only)
        score, loss = val_scores[cfg.select_by], val_scores["loss"]
        if is_new_best(score, loss, progress, cfg.tie_break):
            progress.best_score, progress.best_epoch, progress.best_loss = score, epoch + 1, loss
            checkpointer.save_best(trainer.model, epoch=epoch + 1, val_scores=val_scores)
        checkpointer.save_last(trainer, epoch=epoch, progress=progress)
        barrier(dist_ctx)  # no rank runs ahead of the checkpoint it would resume from
        reporter.epoch_end(role, row)
        if on_epoch is not None and dist_ctx.is_main:
            on_epoch(progress.history)
    reporter.stage_end(role)
    return FitResult(progress.best_epoch, progress.best_score, progress.history)
