"""The stage table of ``kit run`` and the one loop that walks it.

A stage is a name, a body, and how to tell that it already finished. The loop handles what every
stage needs the same way: skipping finished stages on resume, timing, recording the state (which
drops the stages after it, see ``kit.rundir.mark_stage``), handing training over from all
processes to rank 0, and where ``--stop-after`` ends the chain. Stage bodies live next to what
they do (``kit.data.stage``, ``kit.train.roles``, ``kit.evaluate``, ``kit.export``, ``kit.verify``,
``kit.report``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kit.distill.methods import default_settings
from kit.io import read_json
from kit.rundir import (
    BUNDLE_DIR, CERTIFY_SPLIT, METRICS_NAME, SPLIT_NAME, comparison_role, kpi_path, parity_path, read_state, report_html_path, stage_status,
)
from kit.run.context import RunContext
from kit.train.distributed import shutdown
from kit.verdict import Release
from kit.verify.record import KpiRecord, read_kpi

# ``kit run --stop-after X`` -> the last stage that runs
STOP_POINTS = {"train": "evaluate", "export": "export", "verify": "verify", "report": "report"}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None  # from export, when the chain got that far
    kpi: KpiRecord | None = None  # from verify (``kit.verify.record``)
    report: Path | None = None  # report/report.html

    @property
    def passed(self) -> bool:
        """Every gate that ran (parity, KPI) passed."""
        return (self.parity is None or bool(self.parity["passed"])) and (self.kpi is None or self.kpi.gate.passed)

    @property
    def verdict(self) -> Release | None:
        """The run's one release verdict as ``kit verify`` stored it; None before verification."""
        if self.kpi is None:
            return None
        if isinstance(self.kpi, KpiRecord):
            return self.kpi.verdict
        from kit.anomaly.verdict import release_of

        return release_of(self.kpi)

    @property
    def exit_code(self) -> int:
        """``kit run``'s exit status: 1 for a failed parity gate, else the verdict's (``kit.verdict.EXIT_CODES``)."""
        if self.parity is not None and not self.parity["passed"]:
            return 1
        return 0 if self.verdict is None else self.verdict.exit_code


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], dict[str, Any] | None]  # returns extra fields for state.json
    is_done: Callable[[RunContext], bool]
    all_ranks: bool = False  # training: every torch.distributed process takes part
    records_itself: bool = False  # also a command of its own, so it writes its own state entry
    result: tuple[str, Callable[[RunContext], Any]] | None = None  # RunResult field <- reader of the stage's output
    skip_note: Callable[[RunContext], str] | None = None  # said when a finished stage is skipped


def _trained(name: str) -> Callable[[RunContext], bool]:
    return lambda ctx: name in ctx.finished_before


def _current(name: str, statuses: tuple[str, ...], output: Callable[[Path], Path]) -> Callable[[RunContext], bool]:
    """Finished with one of ``statuses`` and its output still there (the state is read afresh: the
    command may have been run on its own since)."""
    return lambda ctx: stage_status(read_state(ctx.run_dir), name) in statuses and output(ctx.run_dir).exists()


def _data(ctx: RunContext) -> dict[str, Any]:
    """The data stage, then the pre-flight of the operating target: a validation split too small to certify it even
    with no error is said now, before any training, not after the whole run."""
    from kit.data.stage import run_data_stage
    from kit.verify.threshold import certifiability_problems

    extra = run_data_stage(ctx)
    recipe, data = ctx.recipe, ctx.data
    if recipe.task == "anomaly":
        return extra
    certify = data.splits.get(CERTIFY_SPLIT, data.splits["val"])  # the images the certificate is computed on
    held_out = CERTIFY_SPLIT in data.splits
    for problem in certifiability_problems(recipe.verify.threshold, certify.labels, data.classes,
                                           recipe.line.ok_class):
        where = (f" (counted on the {len(certify.labels)} validation images held out of every choice to certify on, "
                 f"verify.certify_share {recipe.verify.certify_share:g}: the validation split needs about "
                 f"1 / {recipe.verify.certify_share:g} times the images added)") if held_out else ""
        ctx.log(f"warning: {problem}{where}; as it stands the run ends with every part sent to a person")
    return extra


def _export(ctx: RunContext) -> None:
    from kit.export import export_bundle

    export_bundle(ctx.run_dir, log=ctx.log)


def _verify(ctx: RunContext) -> None:
    from kit.verify import verify_run

    verify_run(ctx.run_dir, log=ctx.log)


def _report(ctx: RunContext) -> None:
    from kit.report import build_report

    build_report(ctx.run_dir, log=ctx.log)


def build_anomaly_stages() -> list[Stage]:
    """``task: anomaly``: data -> teacher (good parts against synthetic defects) -> student (feature regression) ->
    evaluate -> export -> verify -> report (``kit.anomaly``)."""
    from kit.anomaly.export import export_anomaly_bundle
    from kit.anomaly.record import read_anomaly_record, record_path
    from kit.anomaly.report import build_anomaly_report
    from kit.anomaly.stages import run_anomaly_evaluate_stage, run_anomaly_student_stage, run_anomaly_teacher_stage
    from kit.anomaly.verify import verify_anomaly_run

    return [
        Stage("data", _data, lambda ctx: "data" in ctx.finished_before and (ctx.run_dir / SPLIT_NAME).is_file(),
              all_ranks=True),
        Stage("teacher", run_anomaly_teacher_stage, _trained("teacher")),
        Stage("student", run_anomaly_student_stage, _trained("student")),
        Stage("evaluate", run_anomaly_evaluate_stage, lambda ctx: "evaluate" in ctx.finished_before
              and (ctx.run_dir / METRICS_NAME).is_file(),
              result=("metrics", lambda ctx: read_json(ctx.run_dir / METRICS_NAME))),
        Stage("export", lambda ctx: export_anomaly_bundle(ctx.run_dir, log=ctx.log) and None,
              _current("export", ("done",), lambda d: d / BUNDLE_DIR), records_itself=True,
              result=("parity", lambda ctx: read_json(parity_path(ctx.run_dir)))),
        Stage("verify", lambda ctx: verify_anomaly_run(ctx.run_dir, log=ctx.log) and None,
              _current("verify", ("done", "gate-failed"), record_path), records_itself=True,
              result=("kpi", lambda ctx: read_anomaly_record(ctx.run_dir))),
        Stage("report", lambda ctx: build_anomaly_report(ctx.run_dir, log=ctx.log) and None,
              _current("report", ("done",), report_html_path), records_itself=True,
              result=("report", lambda ctx: report_html_path(ctx.run_dir))),
    ]


def build_stages(recipe: Any) -> list[Stage]:
    """data -> teacher -> teacher-check -> student -> comparison students -> evaluate -> export -> verify -> report."""
    if recipe.task == "anomaly":
        return build_anomaly_stages()
    from kit.evaluate import run_evaluate_stage
    from kit.train.roles import run_student_stage, run_teacher_stage
    from kit.verify.teacher_check import run_teacher_check_stage

    main = recipe.distill.method
    stages = [
        Stage("data", _data, lambda ctx: "data" in ctx.finished_before and (ctx.run_dir / SPLIT_NAME).is_file(),
              all_ranks=True),
        Stage("teacher", run_teacher_stage, _trained("teacher"), all_ranks=True),
        Stage("teacher-check", run_teacher_check_stage, _trained("teacher-check"), all_ranks=True),
        Stage("student", lambda ctx: run_student_stage(ctx, "student", main, recipe.distill), _trained("student"),
              all_ranks=True),
    ]
    for method in recipe.compare:
        role = comparison_role(method)
        stages.append(Stage(role, lambda ctx, r=role, m=method: run_student_stage(ctx, r, m, default_settings(m)),
                            _trained(role), all_ranks=True))
    stages += [
        Stage("evaluate", run_evaluate_stage, lambda ctx: "evaluate" in ctx.finished_before
              and (ctx.run_dir / METRICS_NAME).is_file(),
              result=("metrics", lambda ctx: read_json(ctx.run_dir / METRICS_NAME))),
        Stage("export", _export, _current("export", ("done",), lambda d: d / BUNDLE_DIR), records_itself=True,
              result=("parity", lambda ctx: read_json(parity_path(ctx.run_dir))),
              skip_note=lambda ctx: f"export: already done ({ctx.run_dir / BUNDLE_DIR})"),
        Stage("verify", _verify, _current("verify", ("done", "gate-failed"), kpi_path), records_itself=True,
              result=("kpi", lambda ctx: read_kpi(ctx.run_dir)),
              skip_note=lambda ctx: f"verify: already done ({kpi_path(ctx.run_dir)}; verdict {read_kpi(ctx.run_dir).verdict.label}); "
                                    f"`kit verify {ctx.run_dir}` measures again"),
        Stage("report", _report, _current("report", ("done",), report_html_path), records_itself=True,
              result=("report", lambda ctx: report_html_path(ctx.run_dir)),
              skip_note=lambda ctx: f"report: already done ({report_html_path(ctx.run_dir)})"),
    ]
    return stages


def walk_stages(ctx: RunContext, stages: list[Stage], stop_after: str = "report") -> RunResult:
    """Run each stage that has not finished, in order, up to ``STOP_POINTS[stop_after]``."""
    last = STOP_POINTS[stop_after]
    result = RunResult(ctx.run_dir)
    torch.manual_seed(ctx.recipe.seed)
    where = f"; {ctx.dctx.world_size} processes (torch.distributed)" if ctx.dctx.enabled else ""
    ctx.log(f"run {ctx.run_dir} on {ctx.setup.describe()}{where}; recipe {ctx.state['recipe_hash'][:12]}")
    handed_over = False
    for stage in stages:
        if not stage.all_ranks and not handed_over:
            handed_over = True
            if ctx.dctx.enabled:
                shutdown()  # training was the distributed part; rank 0 goes on alone
            if not ctx.is_main:
                return result
        if stage.is_done(ctx):
            if stage.skip_note is not None:
                ctx.log(stage.skip_note(ctx))
        else:
            started = time.perf_counter()
            extra = stage.run(ctx)
            if not stage.records_itself:
                ctx.mark(stage.name, time.perf_counter() - started, **(extra or {}))
        if stage.result is not None:
            setattr(result, stage.result[0], stage.result[1](ctx))
        if stage.name == last:
            break
    return result
