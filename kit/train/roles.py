"""Teacher and student training: build the model, its views and its step function, and the run
stages that train (or load) each role and leave its checkpoint in the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy.preprocess import PreprocessSpec
from kit.data.dataset import DecodedSplit, ViewDataset
from kit.distill.methods import get_method
from kit.models import create_model, load_model, model_args, save_checkpoint
from kit.rundir import checkpoint_path
from kit.recipe.schema import Recipe
from kit.train.checkpoint import publish_best
from kit.train.device import DeviceSetup, resolve_workers
from kit.train.distributed import SINGLE, DistContext, barrier
from kit.train.loop import FitResult, Reporter, fit


def _build(recipe: Recipe, role: str, num_classes: int, in_chans: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    cfg = getattr(recipe, role)
    torch.manual_seed(seed)  # identical initial weights for a given recipe seed
    pretrained = recipe.resolve_path(cfg.pretrained_file) if cfg.pretrained_file else None
    model = create_model(cfg.arch, num_classes, in_chans, pretrained_file=pretrained, drop_rate=cfg.drop_rate)
    return model, model_args(cfg.arch, num_classes, in_chans)


@dataclass
class TrainContext:
    """What the training of every role in one run shares."""

    recipe: Recipe
    splits: dict[str, DecodedSplit]
    classes: list[str]
    spec: PreprocessSpec
    pipelines: dict[str, A.Compose]
    setup: DeviceSetup
    checkpoint_dir: Path
    reporter: Reporter | None = None
    resume: bool = False
    dist_ctx: DistContext = SINGLE


def _fit(ctx: TrainContext, role: str, cfg: Any, model: nn.Module, args: dict[str, Any], train_set: ViewDataset,
         step, seed: int, meta: dict[str, Any], on_epoch, val_reference: np.ndarray | None = None) -> FitResult:
    return fit(
        model, role=role, cfg=cfg, train_set=train_set,
        val_inputs=ctx.splits["val"].tensors(ctx.spec), val_labels=ctx.splits["val"].labels,
        step_fn=step, setup=ctx.setup, seed=seed, num_workers=resolve_workers(ctx.recipe.data.num_workers, ctx.setup),
        checkpoint_dir=ctx.checkpoint_dir, checkpoint_meta=meta, model_args=args, val_reference=val_reference,
        reporter=ctx.reporter, resume=ctx.resume, on_epoch=on_epoch, dist_ctx=ctx.dist_ctx,
    )


def train_teacher(ctx: TrainContext, meta: dict[str, Any], on_epoch=None) -> FitResult:
    """Cross-entropy on the recipe's ``teacher.train_views`` (weak, strong or a 50/50 mix)."""
    recipe, cfg = ctx.recipe, ctx.recipe.teacher
    model, args = _build(recipe, "teacher", len(ctx.classes), ctx.spec.num_channels, recipe.seed)
    view = cfg.train_views
    train_set = ViewDataset(ctx.splits["train"], ctx.spec, ctx.pipelines, [view], seed=recipe.seed)

    def step(net: nn.Module, views: dict[str, Tensor], target: Tensor):
        (logits,) = net(views[view])
        loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
        return loss, {"ce": loss.detach()}, logits

    return _fit(ctx, "teacher", cfg, model, args, train_set, step, recipe.seed, meta, on_epoch)


def train_student(
    ctx: TrainContext,
    method_name: str,
    method_cfg: Any,
    teacher: nn.Module | None,
    meta: dict[str, Any],
    role: str = "student",
    teacher_val_pred: np.ndarray | None = None,
    on_epoch=None,
) -> FitResult:
    """The student sees each of the method's views in its own forward pass (own BN statistics);
    the frozen teacher sees all views in one eval-mode, gradient-free batch."""
    recipe, cfg = ctx.recipe, ctx.recipe.student
    method = get_method(method_name)
    model, args = _build(recipe, "student", len(ctx.classes), ctx.spec.num_channels, recipe.seed + 1)
    train_set = ViewDataset(ctx.splits["train"], ctx.spec, ctx.pipelines, list(method.views), seed=recipe.seed + 1)
    if method.uses_teacher:
        if teacher is None:
            raise ValueError(f"method {method_name!r} needs a teacher")
        teacher.to(ctx.setup.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def step(net: nn.Module, views: dict[str, Tensor], target: Tensor):
        student_logits = dict(zip(method.views, net(*[views[name] for name in method.views])))
        teacher_logits = None
        if method.uses_teacher:
            with torch.inference_mode():  # all views in one batch; no autograd bookkeeping at all
                stacked = teacher(torch.cat([views[name] for name in method.views])).float()
            stacked = stacked.clone()  # a normal tensor again: the loss may save it for backward
            teacher_logits = dict(zip(method.views, stacked.split(len(target))))
        student_logits = {k: v.float() for k, v in student_logits.items()}
        loss, parts = method.loss(student_logits, teacher_logits, target, method_cfg)
        return loss, parts, student_logits[method.views[0]]

    return _fit(ctx, role, cfg, model, args, train_set, step, recipe.seed + 1, meta, on_epoch, teacher_val_pred)


# -- run stages (walked by ``kit.run.stages``; ``ctx`` is the run's ``RunContext``) ----------------

def _publish_best(ctx: Any, role: str) -> None:
    """The best epoch's weights become ``<role>.pt``; the resume state is no longer needed."""
    if ctx.is_main:
        publish_best(ctx.checkpoint_dir, role, checkpoint_path(ctx.run_dir, role))
    barrier(ctx.dctx)  # every rank loads what rank 0 just wrote


def run_teacher_stage(ctx: Any) -> dict[str, Any]:
    """Train the teacher, or take it from ``teacher.checkpoint``."""
    recipe = ctx.recipe
    meta = {**ctx.checkpoint_meta, "role": "teacher"}
    if recipe.teacher.checkpoint:
        source = recipe.resolve_path(recipe.teacher.checkpoint)
        model, body = load_model(source, expect_arch=recipe.teacher.arch, expect_classes=ctx.data.classes,
                                 expect_in_chans=ctx.data.spec.num_channels)
        if ctx.is_main:
            save_checkpoint(checkpoint_path(ctx.run_dir, "teacher"), model, body["model_args"], **meta, source=str(source))
        barrier(ctx.dctx)
        ctx.log(f"teacher: loaded {source}")
        return {}
    train_teacher(ctx.train, meta, on_epoch=ctx.history("teacher"))
    _publish_best(ctx, "teacher")
    return {}


def run_student_stage(ctx: Any, role: str, method: str, settings: Any) -> dict[str, Any]:
    """Distil a student with ``method``: the main student, or a comparison student on the same budget."""
    teacher = ctx.teacher if get_method(method).uses_teacher else None
    train_student(ctx.train, method, settings, teacher, {**ctx.checkpoint_meta, "role": role, "method": method},
                  role=role, teacher_val_pred=ctx.teacher_val_pred, on_epoch=ctx.history(role))
    _publish_best(ctx, role)
    return {"method": method}
