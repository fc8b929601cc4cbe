"""What the stages of one run share: recipe, run folder, device, decoded data and models.

Each piece is made on first use, so a resumed run pays only for what its remaining stages need,
and a stage body reads ``ctx.teacher`` instead of knowing how the teacher is loaded.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kit.data import decode_line, decode_teacher_splits, index_line, preprocess_spec
from kit.device import DeviceSetup, resolve_device
from kit.errors import DataError
from kit.evaluate import predict_logits
from kit.models import load_model
from kit.progress import Reporter
from kit.recipe import Recipe, recipe_hash
from kit.rundir import CHECKPOINT_DIR, SPLIT_NAME, checkpoint_path, mark_stage, read_split_rows, read_state, write_history
from kit.train.distributed import SINGLE, DistContext, barrier
from kit.train.roles import TrainContext
from kit.views import build_view

log = logging.getLogger("kit")


class LogReporter(Reporter):
    """Forwards messages and epoch rows to the run's log; wraps the caller's reporter."""

    def __init__(self, inner: Reporter | None) -> None:
        self.inner = inner or Reporter()

    def stage_start(self, *a: Any) -> None:
        self.inner.stage_start(*a)

    def step(self, *a: Any) -> None:
        self.inner.step(*a)

    def epoch_end(self, role: str, row: dict[str, Any]) -> None:
        log.info("%s epoch %d: %s", role, row["epoch"], ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("role", "epoch")))
        self.inner.epoch_end(role, row)

    def stage_end(self, role: str) -> None:
        self.inner.stage_end(role)

    def log(self, message: str) -> None:
        log.info(message)
        self.inner.log(message)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class RunContext:
    def __init__(self, recipe: Recipe, run_dir: Path, reporter: LogReporter, resume: bool, dctx: DistContext = SINGLE) -> None:
        self.recipe, self.run_dir, self.reporter, self.resume, self.dctx = recipe, run_dir, reporter, resume, dctx
        # The state as the run found it: every rank decides from the same snapshot which stages to skip.
        self.state = read_state(run_dir)
        self.state["recipe_hash"] = recipe_hash(recipe)
        self.finished_before = set(self.state.get("stages", {}))

    @property
    def is_main(self) -> bool:
        return self.dctx.is_main

    def log(self, message: str) -> None:
        self.reporter.log(message)

    def mark(self, stage: str, seconds: float, **extra: Any) -> None:
        """Record a finished stage (rank 0 writes; the others only train)."""
        if self.is_main:
            mark_stage(self.run_dir, self.state, stage, seconds, **extra)

    @cached_property
    def setup(self) -> DeviceSetup:
        setup = resolve_device(self.recipe.device)
        if self.dctx.enabled and setup.device.type == "cuda":
            setup = DeviceSetup(torch.device("cuda", self.dctx.local_rank), setup.amp_dtype)
        return setup

    @cached_property
    def checkpoint_dir(self) -> Path:
        path = self.run_dir / CHECKPOINT_DIR
        if self.is_main:
            path.mkdir(exist_ok=True)
        barrier(self.dctx)
        return path

    # -- data --------------------------------------------------------------------------------------

    @cached_property
    def data(self) -> "LineData":
        return LineData.decode(self)

    @cached_property
    def pipelines(self) -> dict[str, Any]:
        """The weak and strong views, at the size they are drawn at: the teacher's (every model's views are
        drawn there when the teacher reads larger images, see ``kit.data.PairedViewDataset``)."""
        spec = self.data.teacher_spec
        return {v: build_view(getattr(self.recipe.views, v), f"views.{v}", spec.image_size, spec.num_channels)
                for v in ("weak", "strong")}

    @cached_property
    def train(self) -> TrainContext:
        d = self.data
        return TrainContext(self.recipe, d.splits, d.classes, d.spec, self.pipelines, self.setup, self.checkpoint_dir,
                            self.reporter, self.resume, self.dctx, teacher_spec=d.teacher_spec, teacher_splits=d.teacher_splits)

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        """What every checkpoint of the run records about the data it was trained on."""
        return {"classes": self.data.classes, "preprocess": self.data.spec.to_dict(), "recipe_hash": self.state["recipe_hash"]}

    def history(self, role: str) -> Callable[[list[dict[str, Any]]], None] | None:
        return (lambda rows: write_history(self.run_dir, role, rows)) if self.is_main else None

    # -- models ------------------------------------------------------------------------------------

    def load_role(self, role: str) -> torch.nn.Module:
        model, _ = load_model(checkpoint_path(self.run_dir, role), expect_classes=self.data.classes,
                              expect_in_chans=self.data.spec.num_channels)
        return model

    @cached_property
    def teacher(self) -> torch.nn.Module:
        model = self.load_role("teacher")
        model.to(self.setup.device).eval()
        return model

    @cached_property
    def teacher_val_logits(self) -> np.ndarray:
        """The teacher's validation logits, computed once: the teacher check reads them, and students
        report their agreement with the teacher's decisions each epoch."""
        val = self.data.teacher_splits["val"]
        return predict_logits(self.teacher, val.tensors(self.data.teacher_spec), self.setup.device).numpy()

    @property
    def teacher_val_pred(self) -> np.ndarray:
        return self.teacher_val_logits.argmax(1)


class LineData:
    """The line's images indexed, split and decoded once for the whole run."""

    def __init__(self, index, spec, splits, unreadable, teacher_spec=None, teacher_splits=None) -> None:
        self.index, self.spec, self.splits, self.unreadable = index, spec, splits, unreadable
        # The teacher's input (``teacher.image_size``): the same images decoded at its size; else the student's.
        self.teacher_spec = teacher_spec or spec
        self.teacher_splits = teacher_splits or splits

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    @classmethod
    def decode(cls, ctx: RunContext) -> "LineData":
        recipe = ctx.recipe
        index = index_line(recipe)
        spec = preprocess_spec(recipe)
        splits, unreadable = decode_line(index, recipe, spec)
        teacher_spec, teacher_splits = decode_teacher_splits(recipe, spec, splits)
        if teacher_splits is not None:
            ctx.log(f"data: the teacher reads {teacher_spec.image_size[0]}x{teacher_spec.image_size[1]} px, the student "
                    f"{spec.image_size[0]}x{spec.image_size[1]} px; views are drawn at the teacher's size")
        data = cls(index, spec, splits, unreadable, teacher_spec, teacher_splits)
        for bad in unreadable:
            ctx.log(f"skipped unreadable image: {bad}")
        for dropped, kept in index.duplicates_dropped:
            ctx.log(f"dropped duplicate {dropped} (same content as {kept})")
        ctx.log(f"data: {len(index.classes)} classes {index.classes}; images {data.counts}; "
                f"{len(index.duplicates_dropped)} duplicates dropped; {len(unreadable)} unreadable skipped")
        data.check_recorded_split(ctx.run_dir)
        return data

    def rows(self) -> list[tuple[str, str, str]]:
        return [(str(s.path), self.classes[s.label], name) for name, split in self.splits.items() for s in split.samples]

    def check_recorded_split(self, run_dir: Path) -> None:
        """A resumed run must train on the images it started with: the folder may have changed since."""
        if not (run_dir / SPLIT_NAME).is_file():
            return
        if sorted(read_split_rows(run_dir)) != sorted(self.rows()):
            raise DataError(f"{run_dir}: the line's images changed since this run started ({SPLIT_NAME} no longer "
                            "matches data.root); start a new run")
