"""One role's two training checkpoint files, and the progress that resume continues from.

``<role>.best.pt`` holds the best epoch's weights as a self-describing model checkpoint (what
``kit.models.load_model`` reads; ``publish_best`` makes it ``<role>.pt`` when its training ends).
``<role>.last.pt`` holds everything an interrupted training needs to continue exactly: weights,
optimiser, schedule, grad-scaler state, the epoch, the best score so far and the history rows.
Both are written atomically and only by rank 0, so a killed run never leaves half a file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kit.io import write_atomic
from kit.models import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint_file, save_checkpoint


class Trainable(Protocol):
    """The objects whose state a resume restores (``kit.train.loop.Trainer`` is one)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    grad_scaler: torch.amp.GradScaler


@dataclass
class FitProgress:
    """Where a role's training stands: the next epoch to run, the best epoch so far, one history row per epoch."""

    first_epoch: int = 0  # 0-based index of the next epoch to train
    best_score: float = -1.0  # the validation score the recipe's ``select_by`` names, of the best epoch
    best_epoch: int = -1  # 1-based, as written in history; -1 until an epoch is validated
    best_loss: float = float("inf")  # the best epoch's validation loss (the val_loss tie break)
    history: list[dict[str, Any]] = field(default_factory=list)


def plain_model(model: nn.Module) -> nn.Module:
    """The model as a single process would save it (SyncBatchNorm back to BatchNorm), so a
    checkpoint from a multi-GPU run loads anywhere, the edge export included."""
    if not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return model
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
            bn.load_state_dict(module.state_dict())
            parent = plain.get_submodule(name.rsplit(".", 1)[0]) if "." in name else plain
            setattr(parent, name.rsplit(".", 1)[-1], bn)
    return plain


def role_checkpoint_paths(checkpoint_dir: Path, role: str) -> tuple[Path, Path]:
    """(resume state, best weights) of one role: the only place these two names are spelled."""
    return Path(checkpoint_dir) / f"{role}.last.pt", Path(checkpoint_dir) / f"{role}.best.pt"


def publish_best(checkpoint_dir: Path, role: str, final_path: Path) -> None:
    """When a role has finished training: its best weights become ``final_path`` and the resume state,
    no longer needed, is removed."""
    last_path, best_path = role_checkpoint_paths(checkpoint_dir, role)
    best_path.replace(final_path)
    last_path.unlink(missing_ok=True)


class RoleCheckpointer:
    """Reads and writes ``<role>.last.pt`` and ``<role>.best.pt`` in ``checkpoint_dir``.

    ``model_args`` and ``meta`` (classes, preprocessing, role, recipe hash) go into every file, so
    each one rebuilds its model on its own. Only the main process (``is_main``) writes.
    """

    def __init__(self, checkpoint_dir: Path, role: str, model_args: dict[str, Any], meta: dict[str, Any],
                 *, is_main: bool = True) -> None:
        self.last_path, self.best_path = role_checkpoint_paths(checkpoint_dir, role)
        self.model_args, self.meta, self.is_main = model_args, meta, is_main

    def restore(self, trainer: Trainable) -> FitProgress | None:
        """Load the resume state into ``trainer``; None when there is none to resume.

        A state saved without a grad scaler (CPU, bfloat16) leaves the scaler untouched; a
        disabled scaler ignores any state it is given.
        """
        if not self.last_path.is_file():
            return None
        state = load_checkpoint_file(self.last_path)
        trainer.model.load_state_dict(state["state_dict"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):
            trainer.grad_scaler.load_state_dict(state["grad_scaler"])
        best = state.get("best_score", state.get("best_val_accuracy"))  # resume states before select_by
        return FitProgress(first_epoch=state["epoch"] + 1, best_score=best, best_epoch=state["best_epoch"],
                           best_loss=state.get("best_loss", float("inf")), history=list(state["history"]))

    def save_best(self, model: nn.Module, *, epoch: int, val_scores: dict[str, float]) -> None:
        """The weights of a new best epoch (1-based ``epoch``), as a loadable model checkpoint that
        records its validation scores."""
        if self.is_main:
            save_checkpoint(self.best_path, plain_model(model), self.model_args, **self.meta, epoch=epoch,
                            val_accuracy=val_scores["accuracy"], val_scores=dict(val_scores))

    def save_last(self, trainer: Trainable, *, epoch: int, progress: FitProgress) -> None:
        """The resume state after the 0-based ``epoch``. The grad scaler is stored as None when it is
        disabled, as resume states always have been when no scaler was needed."""
        if not self.is_main:
            return
        scaler = trainer.grad_scaler
        state = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_args": self.model_args,
            "state_dict": {k: v.detach().cpu() for k, v in plain_model(trainer.model).state_dict().items()},
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch, "best_score": progress.best_score, "best_epoch": progress.best_epoch,
            "best_loss": progress.best_loss,
            "history": progress.history,
        }
        write_atomic(self.last_path, lambda tmp: torch.save(state, tmp))
