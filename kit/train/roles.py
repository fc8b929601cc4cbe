"""Teacher and student training: build the model, its views and its step function, and the run
stages that train (or load) each role and leave its checkpoint in the run directory."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy.preprocess import PreprocessSpec
from kit.data.balance import class_weights, imbalance_ratio, resolve_balance
from kit.data.dataset import TEACHER_VIEW_PREFIX, DecodedSplit, PairedViewDataset, ViewDataset
from kit.device import DeviceSetup, resolve_workers
from kit.distill.methods import get_method
from kit.models import EnsembleModel, create_model, ensemble_args, load_model, model_args, save_checkpoint
from kit.rundir import checkpoint_path, ensemble_member_role
from kit.recipe.schema import Recipe
from kit.train.checkpoint import publish_best
from kit.train.distributed import SINGLE, DistContext, barrier
from kit.train.loop import CheckpointTarget, Fitting, FitResult, Reporter, ValidationSet, fit


def _build(recipe: Recipe, role: str, num_classes: int, in_chans: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    cfg = getattr(recipe, role)
    torch.manual_seed(seed)  # identical initial weights for a given recipe seed
    pretrained_file = recipe.resolve_path(cfg.pretrained_file) if cfg.pretrained_file else None
    model = create_model(cfg.arch, num_classes, in_chans, pretrained=cfg.pretrained, pretrained_file=pretrained_file,
                         drop_rate=cfg.drop_rate, where=role)
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
    # The teacher's input when it reads larger images (teacher.image_size); None: the student's spec and splits.
    teacher_spec: PreprocessSpec | None = None
    teacher_splits: dict[str, DecodedSplit] | None = None

    @property
    def paired(self) -> bool:
        """Teacher and student read different sizes: every view is drawn at the teacher's."""
        return self.teacher_spec is not None and self.teacher_spec != self.spec

    def teacher_input(self) -> tuple[PreprocessSpec, dict[str, DecodedSplit]]:
        return (self.teacher_spec, self.teacher_splits) if self.paired else (self.spec, self.splits)


def _fitting(ctx: TrainContext, role: str, cfg: Any, seed: int, balance: str) -> Fitting:
    return Fitting(role, cfg, ctx.setup, resolve_workers(ctx.recipe.data.num_workers, ctx.setup), ctx.dist_ctx, balance, seed)


def _checkpoints(ctx: TrainContext, meta: dict[str, Any], args: dict[str, Any]) -> CheckpointTarget:
    return CheckpointTarget(ctx.checkpoint_dir, meta, args, ctx.resume)


def _balance(ctx: TrainContext, role: str, cfg: Any) -> tuple[str, Tensor | None]:
    """The role's resolved ``balance`` mode, and the cross-entropy class weights when it is ``loss``."""
    labels = ctx.splits["train"].labels
    mode = resolve_balance(cfg.balance, labels, len(ctx.classes))
    if ctx.reporter is not None and ctx.dist_ctx.is_main:
        section = "teacher" if cfg is ctx.recipe.teacher else "student"
        ctx.reporter.log(f"{role}: balance {mode} ({section}.balance: {cfg.balance}; largest/smallest training class "
                         f"{imbalance_ratio(labels, len(ctx.classes)):.1f}x)")
    if mode != "loss":
        return mode, None
    return mode, torch.from_numpy(class_weights(labels, len(ctx.classes))).to(ctx.setup.device)


def train_teacher(ctx: TrainContext, meta: dict[str, Any], on_epoch=None, role: str = "teacher") -> FitResult:
    """Cross-entropy on the recipe's ``teacher.train_views`` (weak, strong or a 50/50 mix).

    ``role`` names the checkpoint files and history rows: ``teacher``, or an ensemble member's.
    """
    recipe, cfg = ctx.recipe, ctx.recipe.teacher
    spec, splits = ctx.teacher_input()
    model, args = _build(recipe, "teacher", len(ctx.classes), spec.num_channels, recipe.seed)
    view = cfg.train_views
    train_set = ViewDataset(splits["train"], spec, ctx.pipelines, [view], seed=recipe.seed)
    balance, weight = _balance(ctx, role, cfg)
    meta = {**meta, "preprocess": spec.to_dict()}  # what the teacher reads, should it differ from the student

    def step(net: nn.Module, views: dict[str, Tensor], target: Tensor):
        (logits,) = net(views[view])
        loss = F.cross_entropy(logits, target, weight=weight, label_smoothing=cfg.label_smoothing)
        return loss, {"ce": loss.detach()}, logits

    validation = ValidationSet(splits["val"].tensors(spec), splits["val"].labels, ctx.classes)
    return fit(model, _fitting(ctx, role, cfg, recipe.seed, balance), train_set, step, validation,
               _checkpoints(ctx, meta, args), ctx.reporter, on_epoch)


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
    if role == "student" and cfg.init_from:
        _init_from_run(ctx, model)
    if ctx.paired:  # views drawn at the teacher's size; the student reads them resized (same transform)
        train_set = PairedViewDataset(ctx.teacher_splits["train"], ctx.teacher_spec, ctx.spec, ctx.pipelines,
                                      list(method.views), seed=recipe.seed + 1, with_teacher=method.uses_teacher)
    else:
        train_set = ViewDataset(ctx.splits["train"], ctx.spec, ctx.pipelines, list(method.views), seed=recipe.seed + 1)
    teacher_views = [(TEACHER_VIEW_PREFIX + name) if ctx.paired else name for name in method.views]
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
                stacked = teacher(torch.cat([views[name] for name in teacher_views])).float()
            stacked = stacked.clone()  # a normal tensor again: the loss may save it for backward
            teacher_logits = dict(zip(method.views, stacked.split(len(target))))
        student_logits = {k: v.float() for k, v in student_logits.items()}
        extra = {"class_weight": weight} if weight is not None else {}
        loss, parts = method.loss(student_logits, teacher_logits, target, method_cfg, **extra)
        return loss, parts, student_logits[method.views[0]]

    balance, weight = _balance(ctx, role, cfg)
    val = ctx.splits["val"]
    validation = ValidationSet(val.tensors(ctx.spec), val.labels, ctx.classes, teacher_val_pred)
    return fit(model, _fitting(ctx, role, cfg, recipe.seed + 1, balance), train_set, step, validation,
               _checkpoints(ctx, meta, args), ctx.reporter, on_epoch)


def _init_from_run(ctx: TrainContext, model: nn.Module) -> None:
    """``student.init_from: RUN_DIR``: start from that run's deployed student (same architecture, classes in
    the same order, same channels); the fine-tuning then runs the recipe's student settings."""
    from kit.errors import CheckpointError

    source = checkpoint_path(ctx.recipe.resolve_path(ctx.recipe.student.init_from), "student")
    if not source.is_file():
        raise CheckpointError(f"student.init_from: {source} not found; point it at a finished run directory (one with student.pt)")
    previous, _ = load_model(source, expect_arch=ctx.recipe.student.arch, expect_classes=ctx.classes,
                             expect_in_chans=ctx.spec.num_channels)
    model.load_state_dict(previous.state_dict())
    if ctx.reporter is not None and ctx.dist_ctx.is_main:
        ctx.reporter.log(f"student: initialised from {source}")


# -- run stages (walked by ``kit.run.stages``; ``ctx`` is the run's ``RunContext``) ----------------

def _publish_best(ctx: Any, role: str) -> None:
    """The best epoch's weights become ``<role>.pt``; the resume state is no longer needed."""
    if ctx.is_main:
        publish_best(ctx.checkpoint_dir, role, checkpoint_path(ctx.run_dir, role))
    barrier(ctx.dctx)  # every rank loads what rank 0 just wrote


def run_teacher_stage(ctx: Any) -> dict[str, Any]:
    """Train the teacher (or each member of ``teacher.ensemble``), or take it from ``teacher.checkpoint``."""
    recipe = ctx.recipe
    teacher_spec = ctx.data.teacher_spec
    meta = {**ctx.checkpoint_meta, "role": "teacher", "preprocess": teacher_spec.to_dict()}
    if recipe.teacher.checkpoint:
        source = recipe.resolve_path(recipe.teacher.checkpoint)
        model, body = load_model(source, expect_arch=recipe.teacher.arch, expect_classes=ctx.data.classes,
                                 expect_in_chans=ctx.data.spec.num_channels)
        check_trained_size("teacher.checkpoint", source, body, teacher_spec, ctx.data.spec.image_size)
        if ctx.is_main:
            save_checkpoint(checkpoint_path(ctx.run_dir, "teacher"), model, body["model_args"], **meta, source=str(source))
        barrier(ctx.dctx)
        ctx.log(f"teacher: loaded {source}")
        return {}
    if recipe.teacher.ensemble is not None:
        train_teacher_ensemble(ctx, meta, on_epoch=ctx.history)
        return {}
    train_teacher(ctx.train, meta, on_epoch=ctx.history("teacher"))
    _publish_best(ctx, "teacher")
    return {}


# -- a teacher built from several models (``teacher.ensemble``) ------------------------------------

ENSEMBLE_SEED_STRIDE = 100  # member i trains with seed recipe.seed + 100 * i


def ensemble_member_recipes(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """(role, recipe) of each member to train: ``teacher.arch`` (or ``ensemble.archs[i]``) with its own
    seed, so members differ in initialisation, augmentation and batch order, which is what makes
    their average better than any one of them."""
    ensemble = recipe.teacher.ensemble
    archs = ensemble.archs or [recipe.teacher.arch] * ensemble.members
    return [(ensemble_member_role(i), recipe.model_copy(update={
        "seed": recipe.seed + ENSEMBLE_SEED_STRIDE * i,
        "teacher": recipe.teacher.model_copy(update={"arch": arch, "ensemble": None}),
    })) for i, arch in enumerate(archs)]


def train_teacher_ensemble(ctx: Any, meta: dict[str, Any], on_epoch: Callable[[str], Any]) -> None:
    """Train every member under its own role, then save their average as ``teacher.pt``.

    ``ctx`` is the run's ``RunContext``; ``on_epoch(role)`` gives a member's history callback. An
    ensemble of ``checkpoints`` trains nothing: the checkpoints are the members.
    """
    recipe = ctx.recipe
    if recipe.teacher.ensemble.checkpoints is not None:
        sources = [recipe.resolve_path(file) for file in recipe.teacher.ensemble.checkpoints]
        _save_ensemble(ctx, sources, meta, record_sources=True)
        return
    sources = [_train_member(ctx, role, member, meta, on_epoch(role)) for role, member in ensemble_member_recipes(recipe)]
    _save_ensemble(ctx, sources, meta, record_sources=False)


def _train_member(ctx: Any, role: str, member: Recipe, meta: dict[str, Any], on_epoch) -> Path:
    """One member, trained like a single teacher; its best weights wait in ``checkpoints/<role>.pt``
    for the ensemble (a resumed run does not train a finished member again)."""
    path = checkpoint_path(ctx.checkpoint_dir, role)
    if ctx.resume and path.is_file():
        ctx.log(f"{role}: already trained ({path})")
        return path
    train_teacher(replace(ctx.train, recipe=member), {**meta, "role": role}, on_epoch=on_epoch, role=role)
    if ctx.is_main:
        publish_best(ctx.checkpoint_dir, role, path)
    barrier(ctx.dctx)
    return path


def check_trained_size(field: str, source: Path, body: dict[str, Any], teacher_spec: PreprocessSpec,
                       student_size: tuple[int, int]) -> None:
    """A teacher checkpoint must have been trained on the input size this recipe gives the teacher."""
    trained_at = (body.get("preprocess") or {}).get("image_size")
    if trained_at is None or tuple(trained_at) == tuple(teacher_spec.image_size):
        return
    from kit.errors import CheckpointError

    h, w = trained_at
    if tuple(trained_at) == tuple(student_size):
        fix = "leave teacher.image_size out (that is data.image_size)"
    elif h >= student_size[0] and w >= student_size[1]:
        fix = f"set teacher.image_size: [{h}, {w}]"
    else:
        fix = f"it reads smaller images than this student ({student_size[0]}x{student_size[1]}): retrain it or lower data.image_size"
    raise CheckpointError(f"{field}: {source} was trained on {h}x{w} px images, this recipe gives the teacher "
                          f"{teacher_spec.image_size[0]}x{teacher_spec.image_size[1]}; {fix}")


def _save_ensemble(ctx: Any, sources: list[Path], meta: dict[str, Any], *, record_sources: bool) -> None:
    """Every member must fit the line's classes and channels; their average becomes ``teacher.pt``.
    ``record_sources``: note where each member came from (not for members trained in ``checkpoints/``,
    which goes when the run finishes)."""
    loaded = [load_model(p, expect_classes=ctx.train.classes, expect_in_chans=ctx.train.spec.num_channels) for p in sources]
    for p, (_, body) in zip(sources, loaded):
        check_trained_size("teacher.ensemble.checkpoints", p, body, ctx.train.teacher_input()[0], ctx.train.spec.image_size)
    members = [{"role": body.get("role"), "arch": body["model_args"]["arch"], "val_accuracy": body.get("val_accuracy"),
                **({"source": str(p)} if record_sources else {})} for p, (_, body) in zip(sources, loaded)]
    if ctx.is_main:
        save_checkpoint(checkpoint_path(ctx.run_dir, "teacher"), EnsembleModel([m for m, _ in loaded]),
                        ensemble_args([body["model_args"] for _, body in loaded]), **meta, ensemble=members)
    barrier(ctx.dctx)
    described = ", ".join(f"{m['arch']} (val acc {m['val_accuracy']:.3f})" if m["val_accuracy"] is not None else m["arch"]
                          for m in members)
    ctx.log(f"teacher: ensemble of {len(members)}: {described}")


def run_student_stage(ctx: Any, role: str, method: str, settings: Any) -> dict[str, Any]:
    """Distil a student with ``method``: the main student, or a comparison student on the same budget."""
    teacher = ctx.teacher if get_method(method).uses_teacher else None
    train_student(ctx.train, method, settings, teacher, {**ctx.checkpoint_meta, "role": role, "method": method},
                  role=role, teacher_val_pred=ctx.teacher_val_pred, on_epoch=ctx.history(role))
    _publish_best(ctx, role)
    return {"method": method}
