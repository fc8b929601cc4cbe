"""One training loop for teachers and students, readable top to bottom.

Phases per epoch: seed, train (forward per view, loss from the method, backward, step, lr),
validate on clean preprocessed tensors, log a history row, checkpoint (atomically: the last
state for resume, the best weights by validation accuracy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kit.data.dataset import SEED_SHUFFLE, SEED_TORCH, ViewDataset, derive_seed
from kit.errors import TrainingDiverged
from kit.evaluate import agreement, predict_logits
from kit.io import write_atomic
from kit.models import load_checkpoint_file, save_checkpoint
from kit.train.distributed import SINGLE, DistContext, SplitBatchSampler, all_reduce_sum, barrier, wrap_for_training
from kit.recipe.schema import TrainConfig
from kit.progress import Reporter
from kit.train.device import DeviceSetup

# (model, {view: input batch}, target) -> (loss, {part: tensor}, logits of the first view)
StepFn = Callable[[nn.Module, dict[str, Tensor], Tensor], tuple[Tensor, dict[str, Tensor], Tensor]]


@dataclass
class FitResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _plain(model: nn.Module) -> nn.Module:
    """The model as a single process would save it (SyncBatchNorm back to BatchNorm)."""
    if not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return model
    import copy

    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            bn.load_state_dict(module.state_dict())
            parent = plain.get_submodule(name.rsplit(".", 1)[0]) if "." in name else plain
            setattr(parent, name.rsplit(".", 1)[-1], bn)
    return plain


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


def fit(
    model: nn.Module,
    *,
    role: str,
    cfg: TrainConfig,
    train_set: ViewDataset,
    val_inputs: Tensor,
    val_labels: np.ndarray,
    step_fn: StepFn,
    setup: DeviceSetup,
    seed: int,
    num_workers: int,
    checkpoint_dir: Path,
    checkpoint_meta: dict[str, Any],
    model_args: dict[str, Any],
    val_reference: np.ndarray | None = None,
    reporter: Reporter | None = None,
    resume: bool = False,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
    dist_ctx: DistContext = SINGLE,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs``; keep the best epoch by validation accuracy.

    ``val_reference``: the teacher's validation predictions, for student agreement.
    Writes ``<role>.last.pt`` (resume state) and ``<role>.best.pt`` in ``checkpoint_dir``.
    Under torch.distributed every rank trains its slice of each global batch (DDP averages the
    gradients); metrics are summed over ranks and only rank 0 writes or reports.
    """
    reporter = (reporter or Reporter()) if dist_ctx.is_main else Reporter()
    device = setup.device
    model.to(device)
    if device.type == "cuda":
        if dist_ctx.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BatchNorm over the global batch
        model.to(memory_format=torch.channels_last)
    net = wrap_for_training(model, dist_ctx, device)
    if cfg.compile:
        net = torch.compile(net)  # checkpoints keep the plain model's names: only the wrapper is compiled
    view_names = train_set.view_names

    drop_last = len(train_set) > cfg.batch_size  # a last batch of one breaks BatchNorm
    steps_per_epoch = len(train_set) // cfg.batch_size if drop_last else 1
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if setup.needs_grad_scaler else None

    last_path, best_path = checkpoint_dir / f"{role}.last.pt", checkpoint_dir / f"{role}.best.pt"
    history: list[dict[str, Any]] = []
    first_epoch, best_acc, best_epoch = 0, -1.0, -1
    if resume and last_path.is_file():
        state = load_checkpoint_file(last_path)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        first_epoch, best_acc, best_epoch = state["epoch"] + 1, state["best_val_accuracy"], state["best_epoch"]
        history = list(state["history"])
        reporter.log(f"{role}: resuming after epoch {state['epoch'] + 1}/{cfg.epochs}")

    # One loader for the whole stage: workers persist across epochs (the epoch travels with each
    # index); the sampler draws the single-process batches, split across ranks under DDP.
    sampler = SplitBatchSampler(len(train_set), cfg.batch_size, dist_ctx, 0, drop_last, epoch=first_epoch)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    reporter.stage_start(role, cfg.epochs, steps_per_epoch, first_epoch)
    for epoch in range(first_epoch, cfg.epochs):
        # -- seed: every epoch's randomness depends only on (seed, epoch), so resume is exact
        torch.manual_seed(derive_seed(seed, SEED_TORCH, epoch))
        sampler.set_epoch(epoch, derive_seed(seed, SEED_SHUFFLE, epoch))
        # -- train
        net.train()
        sums: dict[str, Tensor] = {}
        loss_sum, correct, seen, steps = torch.zeros((), device=device), torch.zeros((), device=device), 0, 0
        started = time.perf_counter()
        for step, batch in enumerate(loader):
            *inputs, target = batch
            non_blocking = device.type == "cuda"
            target = target.to(device, non_blocking=non_blocking)
            views = {}
            for name, x in zip(view_names, inputs):
                x = x.to(device, non_blocking=non_blocking)
                views[name] = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
            with setup.autocast():
                loss, parts, logits = step_fn(net, views, target)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if cfg.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if cfg.grad_clip_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
                optimizer.step()
            scheduler.step()
            # -- bookkeeping stays on the device; one sync per epoch, not per step
            loss_sum += loss.detach() * len(target)
            correct += (logits.detach().argmax(1) == target).sum()
            for k, v in parts.items():
                sums[k] = sums.get(k, torch.zeros((), device=device)) + v.detach().float() * len(target)
            seen += len(target)
            steps += 1
            if step % 5 == 0 or step == steps_per_epoch - 1:
                reporter.step(role, epoch, step + 1, float(loss.detach()))
        train_s = time.perf_counter() - started
        if dist_ctx.enabled:  # one all-reduce per epoch: every rank then logs the global figures
            totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device),
                                  *[sums[k] for k in sorted(sums)]])
            all_reduce_sum(dist_ctx, totals)
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
            sums = {k: totals[3 + i] for i, k in enumerate(sorted(sums))}
        if not torch.isfinite(loss_sum):
            raise TrainingDiverged(
                f"{role}: the training loss became NaN/inf in epoch {epoch + 1}; lower {role}.lr (now {cfg.lr:g}) "
                f"or {role}.grad_clip_norm (now {cfg.grad_clip_norm}); the best epoch so far ({best_epoch}) is kept"
            )

        # -- validate on clean, runtime-identical inputs
        val_logits = predict_logits(model, val_inputs, device)
        val_pred = val_logits.argmax(1).numpy()
        val_acc = float(np.mean(val_pred == val_labels))
        row: dict[str, Any] = {
            "role": role, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
            "loss": float(loss_sum) / max(1, seen), "train_accuracy": float(correct) / max(1, seen),
            "val_accuracy": val_acc,
        }
        row.update({k: float(v) / max(1, seen) for k, v in sums.items()})
        if val_reference is not None:
            row["val_agreement"] = agreement(val_pred, val_reference)
        row["images_per_s"] = seen / train_s if train_s > 0 else 0.0
        row["epoch_s"] = time.perf_counter() - started
        history.append(row)

        # -- checkpoint: best weights, then the resume state (both atomic; rank 0 only)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            if dist_ctx.is_main:
                save_checkpoint(best_path, _plain(model), model_args, **checkpoint_meta, epoch=epoch + 1, val_accuracy=val_acc)
        state = {
            "format": "inspection-kit/model", "version": 1, "model_args": model_args,
            "state_dict": {k: v.detach().cpu() for k, v in _plain(model).state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "best_val_accuracy": best_acc, "best_epoch": best_epoch, "history": history,
        }
        if dist_ctx.is_main:
            write_atomic(last_path, lambda tmp: torch.save(state, tmp))
        barrier(dist_ctx)  # no rank runs ahead of the checkpoint it would resume from
        reporter.epoch_end(role, row)
        if on_epoch is not None and dist_ctx.is_main:
            on_epoch(history)
    reporter.stage_end(role)
    return FitResult(best_epoch=best_epoch, best_val_accuracy=best_acc, history=history)
