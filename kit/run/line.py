"""``run_line``: recipe -> teacher -> distilled student(s) -> metrics -> edge bundle -> KPI
verification -> report, in one resumable run directory (``kit.rundir`` lists its files).

Everything ``kit run`` does is here, so a Python caller can do the same: continue a run, find
the newest unfinished run of a recipe, or start the torch.distributed workers.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kit.errors import ArgumentError, KitError, RunDirError
from kit.progress import Reporter
from kit.recipe import Recipe, load_recipe, read_recipe_lock, recipe_hash, write_recipe_lock
from kit.rundir import LOCK_NAME, LOG_NAME, read_state, stage_status
from kit.run.stages import STOP_POINTS, RunResult, build_stages, walk_stages

log = logging.getLogger("kit")


@dataclass(frozen=True)
class Launch:
    """How many training processes, on how many machines (torch.distributed's elastic launcher)."""

    nproc_per_node: int = 1
    nnodes: str = "1"  # or MIN:MAX for elastic training
    rdzv_endpoint: str | None = None  # HOST:PORT every node can reach
    rdzv_id: str | None = None

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes != "1"


def new_run_dir(out_root: str | Path, line: str, name: str | None = None) -> Path:
    base = Path(out_root) / line
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / name, 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{name}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def prepare_run(recipe_path: str | Path | None, *, out_root: str | Path = "runs", name: str | None = None,
                resume_dir: str | Path | None = None) -> tuple[Recipe, Path]:
    """A new run directory with its recipe lock, or the existing one to resume."""
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if not (run_dir / LOCK_NAME).is_file():
            raise RunDirError(f"{run_dir}: not a run directory (no {LOCK_NAME}); start a new run with `kit run RECIPE`")
        return read_recipe_lock(run_dir / LOCK_NAME), run_dir
    if recipe_path is None:
        raise ValueError("prepare_run needs a recipe path or a run directory to resume")
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
        if stage_status(read_state(run_dir), "report") == "done":
            continue
        try:
            if recipe_hash(read_recipe_lock(run_dir / LOCK_NAME)) == wanted:
                return run_dir
        except KitError:  # an unreadable lock is simply not resumable
            continue
    return None


def resolve_target(target: str | Path, out_root: str | Path, resume: bool,
                   log_message=lambda m: None) -> tuple[Path | None, Path | None]:
    """``(recipe_path, resume_dir)`` for a recipe file or a run directory; with ``resume`` a recipe
    resumes its newest unfinished run (a new run when there is none)."""
    target = Path(target)
    if target.is_dir():
        if not resume:
            raise ArgumentError("resume", f"{target}: is a run directory; add {{resume}} to continue it, or pass a recipe file",
                                prefix=False)
        return None, target
    if not resume:
        return target, None
    found = find_resumable(out_root, load_recipe(target))
    if found is None:
        log_message(f"no unfinished run of {target} under {out_root}; starting a new one")
        return target, None
    return None, found


def run_line(
    target: str | Path,
    *,
    out_root: str | Path = "runs",
    name: str | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    stop_after: str = "report",
    launch: Launch = Launch(),
) -> RunResult:
    """The whole chain for one line: train (teacher, student, comparison students, test metrics)
    -> export (edge bundle + parity ladder) -> verify (KPIs on the bundle) -> report (HTML).

    ``target``: a recipe file, or (with ``resume``) a run directory. ``resume`` with a recipe
    continues its newest unfinished run under ``out_root``. Finished stages are not repeated. A failed
    parity gate stops the chain with ``ParityGateError``; a missed KPI is in ``RunResult.kpi``
    (``passed``). With ``launch.distributed`` the training runs in torch.distributed worker processes
    and the returned result has only ``run_dir``: read the run directory for the figures.
    """
    if stop_after not in STOP_POINTS:
        raise ArgumentError("stop_after", f"unknown stage {stop_after!r}; choose from {', '.join(STOP_POINTS)}")
    from kit.train.distributed import launched_by_torchrun

    if launch.distributed and not launched_by_torchrun():
        return _launch_workers(target, out_root, name, resume, stop_after, launch)
    recipe_path, resume_dir = resolve_target(target, out_root, resume, (reporter or Reporter()).log)
    if launched_by_torchrun():
        return _run_as_worker(recipe_path, out_root, name, resume_dir, reporter, stop_after)
    recipe, run_dir = prepare_run(recipe_path, out_root=out_root, name=name, resume_dir=resume_dir)
    handler = _attach_file_log(run_dir)
    try:
        return _walk(recipe, run_dir, reporter, resume_dir is not None, stop_after)
    except KitError:
        if resume_dir is None and not read_state(run_dir).get("stages"):
            # Nothing finished (bad data, say): no half-made run directory is left to confuse a resume.
            _detach(handler)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        _detach(handler)


def _walk(recipe: Recipe, run_dir: Path, reporter: Reporter | None, resume: bool, stop_after: str, dctx=None) -> RunResult:
    from kit.run.context import LogReporter, RunContext
    from kit.train.distributed import SINGLE

    ctx = RunContext(recipe, run_dir, LogReporter(reporter), resume, dctx or SINGLE)
    return walk_stages(ctx, build_stages(recipe), stop_after)


def _launch_workers(target, out_root, name, resume, stop_after, launch: Launch) -> RunResult:
    """Start the workers under torch.distributed's elastic launcher; each runs ``kit run`` itself.
    A recipe to resume is resolved here, once, so every worker continues the same run."""
    from kit.train.distributed import launch as elastic_launch

    if launch.nnodes != "1" and not launch.rdzv_endpoint:
        raise ArgumentError("nnodes", "a multi-node run needs {rdzv_endpoint} HOST:PORT (the same on every node)")
    if launch.nnodes != "1" and not name:
        raise ArgumentError("nnodes", "a multi-node run needs {name}, the same on every node (it names the run directory)")
    recipe_path, resume_dir = resolve_target(target, out_root, resume)
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    if resume_dir is not None:
        argv, run_dir = ["run", str(resume_dir), "--resume"], Path(resume_dir)
    else:
        argv, run_dir = ["run", str(recipe_path)], Path(out_root) / load_recipe(recipe_path).line.name / name
    argv += ["--out", str(out_root), "--name", name, "--stop-after", stop_after]
    try:
        elastic_launch(argv, launch.nproc_per_node, launch.nnodes, launch.rdzv_endpoint, launch.rdzv_id)
    except Exception as exc:  # torch.distributed.elastic's ChildFailedError: the workers printed their own errors
        raise KitError(f"distributed run failed ({type(exc).__name__}); the workers' messages are above") from None
    return RunResult(run_dir)


def _run_as_worker(recipe_path, out_root, name, resume_dir, reporter, stop_after) -> RunResult:
    """One worker of a ``torchrun`` launch: rank 0 makes (or reopens) the run directory and is the
    only writer; every rank trains; rank 0 alone goes on to export, verify and report."""
    from kit.device import resolve_device
    from kit.train.distributed import broadcast_object, init_distributed, shutdown

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
            return _walk(recipe, run_dir, reporter if dctx.is_main else None, resume_dir is not None, stop_after, dctx)
        finally:
            if handler is not None:
                _detach(handler)
    finally:
        shutdown()


def _attach_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _detach(handler: logging.Handler) -> None:
    log.removeHandler(handler)
    handler.close()
