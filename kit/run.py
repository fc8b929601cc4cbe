"""``kit run``: recipe -> teacher -> distilled student(s) -> metrics -> edge bundle -> KPI
verification, in one resumable run directory.

Run directory (``runs/<line>/<run-id>/``)::

    recipe.lock.yaml   resolved recipe + hash (what every later stage reads)
    state.json         which stages finished, with timings (what --resume reads)
    split.csv          every image with its split and label
    views.png          original / weak / strong examples per class
    teacher.pt         best teacher (state dict + rebuild args + classes)
    student.pt         best student
    student-<m>.pt     comparison students (recipe ``compare:``), same budget, method <m>
    history.csv        one row per epoch and role: losses, mask fractions, lr, images/s
    metrics.json       test accuracy, macro-F1, per-class recall, agreement
    run.log            the log
    checkpoints/       per-epoch resume state while a stage runs
    bundle/            the edge bundle (``kit export``)
    verify/            KPIs measured on the bundle (``kit verify``)
    report/            the management report (``kit report``)
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kit.data import decode_line, index_line, preprocess_spec
from kit.errors import KitError, RunDirError
from kit.evaluate import agreement, classification_metrics, predict_logits
from kit.io import read_json, write_json_atomic, write_text_atomic
from kit.models import load_model, save_checkpoint
from kit.recipe import Recipe, load_recipe, read_recipe_lock, recipe_hash, write_recipe_lock
from kit.rundir import BUNDLE_DIR, LOCK_NAME, SPLIT_NAME, mark_stage, read_state
from kit.train import Reporter, StageContext, resolve_device, train_student, train_teacher
from kit.train.device import DeviceSetup
from kit.train.distributed import SINGLE, DistContext, barrier, broadcast_object, init_distributed, launched_by_torchrun, shutdown
from kit.views import build_view
from kit.views.preview import render_views_preview

log = logging.getLogger("kit")


STOP_POINTS = ("train", "export", "verify", "report")  # where `kit run --stop-after` may end the chain


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    parity: dict[str, Any] | None = None  # from export, when the chain got that far
    kpi: dict[str, Any] | None = None  # from verify
    report: Path | None = None  # report/report.html

    @property
    def passed(self) -> bool:
        """Every gate that ran (parity, KPI) passed."""
        return (self.parity is None or bool(self.parity["passed"])) and (self.kpi is None or bool(self.kpi["gate"]["passed"]))


class _LogReporter(Reporter):
    """Forwards messages to the logger; wraps the caller's reporter."""

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


def new_run_dir(out_root: str | Path, line: str, name: str | None = None) -> Path:
    base = Path(out_root) / line
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / name, 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{name}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def _write_history(run_dir: Path, role: str, rows: list[dict[str, Any]]) -> None:
    """history.csv holds every role; a stage rewrites only its own rows."""
    path = run_dir / "history.csv"
    kept: list[dict[str, Any]] = []
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            kept = [r for r in csv.DictReader(fh) if r.get("role") != role]
    all_rows = kept + rows
    columns: list[str] = []
    for r in all_rows:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for r in all_rows:
        writer.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def _write_split(run_dir: Path, classes: list[str], splits: dict[str, Any]) -> None:
    """The images each split really used (unreadable files skipped during decoding are left out)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "split"])
    for name, split in splits.items():
        for sample in split.samples:
            writer.writerow([str(sample.path), classes[sample.label], name])
    write_text_atomic(run_dir / SPLIT_NAME, buf.getvalue())


def _finish_stage_checkpoint(checkpoint_dir: Path, role: str, final_path: Path) -> None:
    """The best epoch's weights become ``<role>.pt``; the resume state is no longer needed."""
    (checkpoint_dir / f"{role}.best.pt").replace(final_path)
    (checkpoint_dir / f"{role}.last.pt").unlink(missing_ok=True)


def _attach_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def prepare_run(recipe_path: str | Path | None, *, out_root: str | Path = "runs", name: str | None = None,
                resume_dir: str | Path | None = None) -> tuple[Recipe, Path]:
    """A new run directory with its recipe lock, or the existing one to resume."""
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if not (run_dir / LOCK_NAME).is_file():
            raise RunDirError(f"{run_dir}: not a run directory (no {LOCK_NAME}); start a new run with `kit run RECIPE`")
        return read_recipe_lock(run_dir / LOCK_NAME), run_dir
    assert recipe_path is not None
    recipe = load_recipe(recipe_path)
    run_dir = new_run_dir(out_root, recipe.line.name, name)
    write_recipe_lock(recipe, run_dir / LOCK_NAME, source=recipe_path)
    return recipe, run_dir


def find_resumable(out_root: str | Path, recipe: Recipe) -> Path | None:
    """The newest unfinished run of this exact recipe under ``out_root``."""
    base = Path(out_root) / recipe.line.name
    if not base.is_dir():
        return None
    wanted = recipe_hash(recipe)
    for run_dir in sorted((p for p in base.iterdir() if (p / LOCK_NAME).is_file()), key=lambda p: p.stat().st_mtime, reverse=True):
        if read_state(run_dir).get("stages", {}).get("report", {}).get("status") == "done":
            continue
        try:
            if recipe_hash(read_recipe_lock(run_dir / LOCK_NAME)) == wanted:
                return run_dir
        except Exception:  # an unreadable lock is simply not resumable
            continue
    return None


def run_line(
    recipe_path: str | Path | None = None,
    *,
    out_root: str | Path = "runs",
    name: str | None = None,
    resume_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    stop_after: str = "report",
) -> RunResult:
    """The whole chain for one line: train (teacher, student, comparison students, test metrics)
    -> export (edge bundle + parity ladder) -> verify (KPIs on the bundle) -> report (HTML).

    Stages already finished in ``resume_dir`` are not repeated. A failed parity gate stops the
    chain with ``ParityGateError``; a missed KPI is reported in ``RunResult.kpi`` (``passed``).
    """
    if stop_after not in STOP_POINTS:
        raise ValueError(f"stop_after must be one of {STOP_POINTS} (got {stop_after!r})")
    if launched_by_torchrun():
        return _run_line_distributed(recipe_path, out_root, name, resume_dir, reporter, stop_after)
    recipe, run_dir = prepare_run(recipe_path, out_root=out_root, name=name, resume_dir=resume_dir)
    handler = _attach_file_log(run_dir)
    try:
        return _chain(recipe, run_dir, _LogReporter(reporter), resume_dir is not None, stop_after)
    except KitError:
        if resume_dir is None and not read_state(run_dir).get("stages"):
            # Nothing finished (bad data, say): no half-made run directory is left to confuse --resume.
            log.removeHandler(handler)
            handler.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _run_line_distributed(recipe_path, out_root, name, resume_dir, reporter, stop_after) -> RunResult:
    """One worker of a ``torchrun`` launch: rank 0 makes (or reopens) the run directory and is the
    only writer; every rank trains; rank 0 alone goes on to export, verify and report."""
    source = load_recipe(recipe_path) if resume_dir is None else read_recipe_lock(Path(resume_dir) / LOCK_NAME)
    dctx = init_distributed(resolve_device(source.device).device.type)
    try:
        run_dir = None
        if dctx.is_main:
            _, run_dir = prepare_run(recipe_path, out_root=out_root, name=name, resume_dir=resume_dir)
        run_dir = Path(broadcast_object(dctx, str(run_dir)))
        recipe = read_recipe_lock(run_dir / LOCK_NAME)
        handler = _attach_file_log(run_dir) if dctx.is_main else None
        try:
            return _chain(recipe, run_dir, _LogReporter(reporter if dctx.is_main else None), resume_dir is not None,
                          stop_after, dctx)
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
    finally:
        shutdown()


def _chain(recipe: Recipe, run_dir: Path, wrapped: _LogReporter, resume: bool, stop_after: str,
           dctx: DistContext = SINGLE) -> RunResult:
    """train -> export -> verify -> report, each skipped when it already finished."""
    result = _run_stages(recipe, run_dir, wrapped, resume=resume, dctx=dctx)
    if dctx.enabled:
        shutdown()  # training was the distributed part; rank 0 goes on alone
    if stop_after == "train" or not dctx.is_main:
        return result
    from kit.export import export_bundle

    done = read_state(run_dir)["stages"]
    if done.get("export", {}).get("status") == "done" and (run_dir / BUNDLE_DIR).is_dir():
        wrapped.log(f"export: already done ({run_dir / BUNDLE_DIR})")
        result.parity = read_json(run_dir / BUNDLE_DIR / "parity.json")
    else:
        result.parity = export_bundle(run_dir, log=wrapped.log).parity
    if stop_after == "export":
        return result
    from kit.verify import KPI_NAME, VERIFY_DIR, verify_run

    kpi_path = run_dir / VERIFY_DIR / KPI_NAME
    if done.get("verify", {}).get("status") in ("done", "gate-failed") and kpi_path.is_file():
        wrapped.log(f"verify: already done ({kpi_path}); `kit verify {run_dir}` measures again")
        result.kpi = read_json(kpi_path)
    else:
        result.kpi = verify_run(run_dir, log=wrapped.log).kpi
    if stop_after == "verify":
        return result
    from kit.report import REPORT_DIR, build_report

    html = run_dir / REPORT_DIR / "report.html"
    if read_state(run_dir)["stages"].get("report", {}).get("status") == "done" and html.is_file():
        wrapped.log(f"report: already done ({html})")
        result.report = html
    else:
        result.report = build_report(run_dir, log=wrapped.log).html
    return result


def _run_stages(recipe: Recipe, run_dir: Path, reporter: _LogReporter, resume: bool, dctx: DistContext = SINGLE) -> RunResult:
    state = read_state(run_dir)
    state["recipe_hash"] = recipe_hash(recipe)
    done = state.setdefault("stages", {})
    setup = resolve_device(recipe.device)
    if dctx.enabled and setup.device.type == "cuda":
        setup = DeviceSetup(torch.device("cuda", dctx.local_rank), setup.amp_dtype)
    main = dctx.is_main

    def mark(stage: str, seconds: float, **extra: Any) -> None:
        if main:
            mark_stage(run_dir, state, stage, seconds, **extra)

    def finish(role: str, path: Path) -> None:
        if main:
            _finish_stage_checkpoint(checkpoint_dir, role, path)
        barrier(dctx)  # every rank loads what rank 0 just wrote

    def history(role: str):
        return (lambda rows: _write_history(run_dir, role, rows)) if main else None

    torch.manual_seed(recipe.seed)
    where = f"; {dctx.world_size} processes (torch.distributed)" if dctx.enabled else ""
    reporter.log(f"run {run_dir} on {setup.describe()}{where}; recipe {state['recipe_hash'][:12]}")

    # -- data: index, split, decode once
    started = time.perf_counter()
    index = index_line(recipe)
    spec = preprocess_spec(recipe)
    splits, unreadable = decode_line(index, recipe, spec)
    for bad in unreadable:
        reporter.log(f"skipped unreadable image: {bad}")
    for dropped, kept in index.duplicates_dropped:
        reporter.log(f"dropped duplicate {dropped} (same content as {kept})")
    counts = {k: len(v) for k, v in splits.items()}
    reporter.log(f"data: {len(index.classes)} classes {index.classes}; images {counts}; "
                 f"{len(index.duplicates_dropped)} duplicates dropped; {len(unreadable)} unreadable skipped")
    channels = spec.num_channels
    pipelines = {v: build_view(getattr(recipe.views, v), f"views.{v}", recipe.data.image_size, channels) for v in ("weak", "strong")}
    if main:
        _write_split(run_dir, index.classes, splits)
        if not (run_dir / "views.png").is_file():
            render_views_preview(splits["train"], index.classes, pipelines, run_dir / "views.png", seed=recipe.seed)
    mark("data", time.perf_counter() - started, counts=counts,
         duplicates_dropped=len(index.duplicates_dropped), unreadable=len(unreadable))

    checkpoint_dir = run_dir / "checkpoints"
    if main:
        checkpoint_dir.mkdir(exist_ok=True)
    barrier(dctx)
    meta = {"classes": index.classes, "preprocess": spec.to_dict(), "recipe_hash": state["recipe_hash"]}
    ctx = StageContext(recipe, splits, index.classes, spec, pipelines, setup, checkpoint_dir, reporter, resume, dctx)

    # -- teacher: trained here, or taken from a checkpoint
    teacher_path = run_dir / "teacher.pt"
    if "teacher" not in done:
        started = time.perf_counter()
        if recipe.teacher.checkpoint:
            source = recipe.resolve_path(recipe.teacher.checkpoint)
            model, body = load_model(source, expect_arch=recipe.teacher.arch, expect_classes=index.classes, expect_in_chans=channels)
            if main:
                save_checkpoint(teacher_path, model, body["model_args"], **{**meta, "role": "teacher", "source": str(source)})
            barrier(dctx)
            reporter.log(f"teacher: loaded {source}")
        else:
            train_teacher(ctx, {**meta, "role": "teacher"}, on_epoch=history("teacher"))
            finish("teacher", teacher_path)
        mark("teacher", time.perf_counter() - started)
    teacher, _ = load_model(teacher_path, expect_classes=index.classes, expect_in_chans=channels)
    teacher.to(setup.device).eval()
    val_inputs, test_inputs = splits["val"].tensors(spec), splits["test"].tensors(spec)
    teacher_val_pred = predict_logits(teacher, val_inputs, setup.device).argmax(1).numpy()

    # -- student: distilled by the recipe's method
    student_path = run_dir / "student.pt"
    if "student" not in done:
        started = time.perf_counter()
        method = recipe.distill.method
        train_student(ctx, method, recipe.distill, teacher, {**meta, "role": "student", "method": method},
                      teacher_val_pred=teacher_val_pred, on_epoch=history("student"))
        finish("student", student_path)
        mark("student", time.perf_counter() - started, method=method)
    student, _ = load_model(student_path, expect_classes=index.classes, expect_in_chans=channels)

    # -- comparison students: same architecture and budget, other methods
    compared: dict[str, torch.nn.Module] = {}
    for method in recipe.compare:
        role = comparison_role(method)
        path = run_dir / f"{role}.pt"
        if role not in done:
            started = time.perf_counter()
            train_student(ctx, method, default_method_config(method), teacher, {**meta, "role": role, "method": method},
                          role=role, teacher_val_pred=teacher_val_pred, on_epoch=history(role))
            finish(role, path)
            mark(role, time.perf_counter() - started, method=method)
        compared[method], _ = load_model(path, expect_classes=index.classes, expect_in_chans=channels)
    if not main:
        return RunResult(run_dir=run_dir, metrics={})

    # -- evaluate on the held-back test split (rank 0)
    started = time.perf_counter()
    metrics = evaluate_models({"teacher": teacher, "student": student}, test_inputs, splits["test"].labels, index.classes, setup.device)
    for method, model in compared.items():
        m = evaluate_models({"teacher": teacher, "student": model}, test_inputs, splits["test"].labels, index.classes, setup.device)
        metrics.setdefault("compare", {})[method] = {**m["student"], "agreement": m["agreement"], "accuracy_gap": m["accuracy_gap"]}
    metrics["line"] = recipe.line.name
    metrics["distill_method"] = recipe.distill.method
    metrics["split_sizes"] = counts
    metrics["recipe_hash"] = state["recipe_hash"]
    metrics["stage_seconds"] = {k: v.get("seconds") for k, v in done.items()}
    write_json_atomic(run_dir / "metrics.json", metrics)
    mark_stage(run_dir, state, "evaluate", time.perf_counter() - started)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    t, s = metrics["teacher"], metrics["student"]
    reporter.log(
        f"test: teacher acc {t['accuracy']:.3f} / macro-F1 {t['macro_f1']:.3f}; student acc {s['accuracy']:.3f} / "
        f"macro-F1 {s['macro_f1']:.3f}; agreement {metrics['agreement']:.3f}"
    )
    return RunResult(run_dir=run_dir, metrics=metrics)


def comparison_role(method: str) -> str:
    """Role (and checkpoint name) of the comparison student trained with ``method``."""
    return f"student-{method}"


def default_method_config(method: str) -> Any:
    """A method's recipe defaults: comparison students use the method as published."""
    from kit.recipe.schema import CRLDConfig, KDConfig, NoDistillConfig

    return {"crld": CRLDConfig, "kd": KDConfig, "none": NoDistillConfig}[method]()


def evaluate_models(models: dict[str, torch.nn.Module], inputs: torch.Tensor, labels: np.ndarray,
                    classes: list[str], device: torch.device) -> dict[str, Any]:
    preds = {name: predict_logits(m, inputs, device).argmax(1).numpy() for name, m in models.items()}
    out: dict[str, Any] = {name: classification_metrics(labels, p, classes) for name, p in preds.items()}
    if "teacher" in preds and "student" in preds:
        out["agreement"] = agreement(preds["teacher"], preds["student"])
        out["accuracy_gap"] = out["teacher"]["accuracy"] - out["student"]["accuracy"]
    out["classes"] = classes
    return out
