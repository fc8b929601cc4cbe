"""The ``kit`` command: one thin command per library function.

Every user mistake (``KitError``, ``DeployError``) is printed as one line and exits 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.errors import DeployError
from kit.errors import ArgumentError, KitError
from kit.progress import Reporter

if TYPE_CHECKING:
    from kit.verdict import Release, Verdict
    from kit.verify.record import KpiRecord, Operating

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="Inspection deployment kit: recipe -> robust edge model -> KPI report.")
# Logs and CI are not terminals: give tables room instead of rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `kill`, a CI timeout) unwinds like Ctrl-C: files being written are
    removed by their atomic writers, the last complete epoch's checkpoint stays."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


# What the `train` extra brings: without it `kit` can only say which extra to install.
TRAINING_MODULES = {"torch", "timm", "albumentations", "onnx", "pydantic", "yaml", "jinja2", "matplotlib"}

# Library parameters whose option is not simply --<name-with-dashes>.
_FLAGS = {"overwrite": "--force"}


def _flag(parameter: str) -> str:
    """How the CLI spells a library parameter named in an ``ArgumentError``."""
    return _FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except (KitError, DeployError) as exc:
            text = exc.worded(_flag) if isinstance(exc, ArgumentError) else str(exc)
            for line in text.splitlines() or [type(exc).__name__]:
                console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in TRAINING_MODULES:
                raise
            message = (f"`kit {fn.__name__.replace('_', '-')}` needs the training side, and {missing} is not installed "
                       "here: pip install 'inspection-kit[train]' (the edge runtime alone is `deploy`)")
            console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            name = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
            console.print(f"[yellow]{name}[/]: every finished epoch and stage is kept; "
                          "continue with `kit run RUN_DIR --resume`", highlight=False)
            raise typer.Exit(143 if isinstance(exc, _Terminated) else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


class RichReporter(Reporter):
    """Progress bars with epoch, loss and images/s."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None
        self.status = ""

    def stage_start(self, role: str, epochs: int, steps_per_epoch: int, first_epoch: int) -> None:
        self.progress = Progress(  # one bar per stage; a finished stage's bar stays on screen
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task(role, total=epochs, completed=first_epoch, status="")

    def step(self, role: str, epoch: int, step: int, loss: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, status=f"{self.status} step {step} loss {loss:.3f}")

    def epoch_end(self, role: str, row: dict[str, Any]) -> None:
        self.status = f"val acc {row['val_accuracy']:.3f}  {row['images_per_s']:.0f} img/s"
        if "val_agreement" in row:
            self.status += f"  agree {row['val_agreement']:.3f}"
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=1, status=self.status)

    def stage_end(self, role: str) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress, self.task, self.status = None, None, ""

    def log(self, message: str) -> None:
        console.print(message, highlight=False, markup=False)


@app.command()
@_user_errors
def run(
    target: Path = typer.Argument(..., help="A recipe YAML, or a run directory to continue with --resume."),
    out: Path = typer.Option(Path("runs"), "--out", help="Root folder; the run goes to OUT/<line>/<run-id>/."),
    name: Optional[str] = typer.Option(None, "--name", help="Run id (default: a timestamp)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last complete epoch."),
    stop_after: str = typer.Option("report", "--stop-after", help="Last stage to run: train | export | verify | report."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Training processes on this machine (one per GPU); >1 uses torch.distributed."),
    nnodes: str = typer.Option("1", "--nnodes", help="Machines taking part (or MIN:MAX for elastic training)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT every node can reach (multi-node)."),
    rdzv_id: Optional[str] = typer.Option(None, "--rdzv-id", help="Job id shared by the nodes of one run (multi-node)."),
) -> None:
    """Train teacher and student, export the edge bundle, verify it against the recipe's KPIs and
    write the management report (HTML, in the recipe's report.language).

    Exits with the verdict: 0 GO, 1 NO-GO (or a failed parity gate), 3 GO AFTER A SHADOW PERIOD.
    Example: kit run recipes/sample_line.yaml
    """
    from kit.run import Launch, run_line

    result = run_line(target, out_root=out, name=name, resume=resume, reporter=RichReporter(), stop_after=stop_after,
                      launch=Launch(nproc_per_node, nnodes, rdzv_endpoint, rdzv_id))
    if not result.metrics:  # the launcher, or a torch.distributed worker other than rank 0: rank 0 reports
        return
    if result.metrics.get("task") == "anomaly":
        _print_anomaly(result.kpi)
    else:
        _print_metrics(result.metrics)
        if result.parity is not None:
            _print_parity(result.parity)
        if result.kpi is not None:
            _print_kpi(result.kpi)
    typer.echo(str(result.run_dir))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _is_anomaly_run(run_dir: Path) -> bool:
    """Whether the run's recipe has ``task: anomaly`` (its export, verify and report are ``kit.anomaly``'s)."""
    from kit.recipe import read_recipe_lock
    from kit.rundir import LOCK_NAME

    return (Path(run_dir) / LOCK_NAME).is_file() and read_recipe_lock(Path(run_dir) / LOCK_NAME).task == "anomaly"


def _print_anomaly(record: Any) -> None:
    """An anomaly run's figures and its one verdict (``kit.anomaly.report.recommend``)."""
    if record is None:
        return
    from kit.anomaly.report import stored_recommendation

    op, cert, fig = record.operating_test, record.certificate, record.figures
    console.print(f"operating point: {cert['message']}", highlight=False, markup=False)
    auroc = "unmeasured (no defective test part)" if fig["auroc"] is None else f"{fig['auroc']:.4f}"
    console.print(f"test ({record.test['n']} images, {record.test['n_good']} good; {record.deployed_runtime}): image AUROC "
                  f"{auroc}; false rejects {op['false_reject_rate']['k']}/{op['false_reject_rate']['n']}, escapes "
                  f"{op['escape_rate']['k']}/{op['escape_rate']['n']}, sent to review "
                  f"{op['n'] - op['automation_rate']['k']}/{op['n']}", highlight=False, markup=False)
    rec = stored_recommendation(record)
    console.print(f"verdict: {rec.verdict}", highlight=False, markup=False)
    for reason in rec.reasons:
        console.print(f"  - {reason}", highlight=False, markup=False)


def _print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title=f"test split ({metrics['split_sizes']['test']} images)")
    for col in ("model", "accuracy", "macro-F1", "lowest recall"):
        table.add_column(col)
    for role in ("teacher", "student"):
        m = metrics[role]
        worst = min(m["per_class"].items(), key=lambda kv: kv[1]["recall"])
        table.add_row(role, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{worst[1]['recall']:.3f} ({worst[0]})")
    console.print(table)
    console.print(f"fidelity to the teacher (same top-1 decision) {metrics['agreement']:.3f}; accuracy gap {metrics['accuracy_gap']:+.3f}")


@app.command()
@_user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory (runs/<line>/<run-id>)."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Comma list: onnx,onnx-int8,tensorrt-fp16,tensorrt-int8,triton (default: the recipe's export.formats)."),
) -> None:
    """Export the student as an edge bundle and check it rung by rung (parity ladder).

    Writes RUN_DIR/bundle/ (model.onnx, model.int8.onnx, TensorRT plans where a GPU exists,
    model.json, parity.json). Exits 1 when a parity gate fails.
    Example: kit export runs/sample_line/20261129-101500 --formats onnx,onnx-int8
    """
    from kit.export import ParityGateError, export_bundle

    chosen = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    if _is_anomaly_run(run_dir):
        from kit.anomaly.export import export_anomaly_bundle

        parity = export_anomaly_bundle(run_dir, chosen, log=lambda m: console.print(m, highlight=False, markup=False))
        _print_gate(parity["gate"], "parity gate")
        typer.echo(str(Path(run_dir) / "bundle"))
        return
    try:
        result = export_bundle(run_dir, chosen, log=lambda m: console.print(m, highlight=False, markup=False))
        _print_parity(result.parity)
    except ParityGateError:
        from kit.io import read_json
        from kit.rundir import parity_path

        _print_parity(read_json(parity_path(run_dir)))
        raise
    typer.echo(str(result.bundle_dir))


def _print_parity(parity: dict[str, Any]) -> None:
    from rich import box

    table = Table(title=f"parity ladder ({parity['test_images']} test images)", box=box.SIMPLE_HEAD)
    widths = {"rung": 13, "acc": 5, "vs": 7, "agree": 5, "max|dp|": 7, "mean|dp|": 8, "flips": 5, "t-agree": 7}
    for col, width in widths.items():
        table.add_column(col, no_wrap=True, min_width=width)
    for row in parity["rungs"]:
        vp, vt = row.get("vs_parent"), row.get("vs_teacher")
        table.add_row(
            row["rung"], f"{row['accuracy']:.3f}", row.get("parent", ""),
            f"{vp['agreement']:.3f}" if vp else "", f"{vp['max_abs_delta_p']:.1e}" if vp else "",
            f"{vp['mean_abs_delta_p']:.1e}" if vp else "", str(vp["decisions_flipped"]) if vp else "",
            f"{vt['agreement']:.3f}" if vt else "",
        )
    console.print(table)
    console.print("  vs: the rung compared with; t-agree: fidelity to the teacher (same top-1 decision)", highlight=False)
    for row in parity["rungs"]:
        console.print(f"  {row['rung']}: {row['runtime']}", highlight=False)
    _print_gate(parity["gate"], "parity gate")


@app.command()
@_user_errors
def verify(
    run_dir: Path = typer.Argument(..., help="A run directory with an exported bundle."),
) -> None:
    """Measure the bundle against the recipe's KPI targets: accuracy, agreement, robustness,
    calibration, operating threshold, latency.

    Writes RUN_DIR/verify/kpi.json and CSV tables. Exits with the verdict: 0 GO, 1 NO-GO (a target missed),
    3 GO AFTER A SHADOW PERIOD (a target met on its value only, or not confirmed on test).
    Example: kit verify runs/sample_line/20261129-101500
    """
    from kit.rundir import kpi_path
    from kit.verify import verify_run

    if _is_anomaly_run(run_dir):
        from kit.anomaly.record import record_path
        from kit.anomaly.verify import verify_anomaly_run

        from kit.anomaly.verdict import release_of

        record = verify_anomaly_run(run_dir, log=lambda m: console.print(m, highlight=False, markup=False))
        _print_anomaly(record)
        typer.echo(str(record_path(run_dir)))
        if release_of(record).exit_code:
            raise typer.Exit(release_of(record).exit_code)
        return
    result = verify_run(run_dir, log=lambda m: console.print(m, highlight=False, markup=False))
    _print_kpi(result.kpi)
    typer.echo(str(kpi_path(result.verify_dir.parent)))
    if result.verdict.exit_code:
        raise typer.Exit(result.verdict.exit_code)


@app.command()
@_user_errors
def threshold(
    run_dir: Path = typer.Argument(..., help="A run directory with an exported bundle."),
    target: str = typer.Option(..., "--target", help="accepted_accuracy=0.995 or max_escape_rate=0.001 (with --ok-class)."),
    ok_class: Optional[str] = typer.Option(None, "--ok-class", help="The good-part class escapes are counted into."),
) -> None:
    """Re-tune the operating confidence threshold on the validation split, without re-exporting.

    Updates bundle/model.json (and verify/kpi.json when verification has run).
    Example: kit threshold runs/sample_line/RUN --target accepted_accuracy=0.995
    """
    from kit.verify import retune_threshold
    from kit.verify.threshold import parse_target

    if _is_anomaly_run(run_dir):
        raise ArgumentError("target", f"{run_dir}: an anomaly run has no confidence threshold to re-tune; change "
                            "anomaly.max_false_reject_rate or anomaly.review_fraction in the recipe and run "
                            f"`kit verify {run_dir}`", prefix=False)

    from kit.verify.record import Operating

    operating = retune_threshold(run_dir, parse_target(target, ok_class), log=lambda m: console.print(m, highlight=False, markup=False))
    _print_operating(Operating.model_validate(operating))


@app.command()
@_user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A verified run directory."),
    lang: Optional[str] = typer.Option(None, "--lang", help="en | ja (default: the recipe's report.language)."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write report.pdf (needs the `report` extra: weasyprint)."),
    shadow: Optional[Path] = typer.Option(None, "--shadow", help="A `kit shadow` result (shadow.json or its folder): adds the shadow period section."),
) -> None:
    """Write the management report: go/no-go, KPI table, accuracy gap, speed against the line,
    savings, robustness, latency, operating point, parity, appendix.

    Writes RUN_DIR/report/report.html (self-contained) and, with --pdf, report.pdf. Exits with the verdict kit verify
    stored: 0 GO, 1 NO-GO, 3 GO AFTER A SHADOW PERIOD; 4 when a file or figure changed after kit verify (TAMPERED).
    Example: kit report runs/sample_line/RUN --lang ja --pdf --shadow shadow/shadow.json
    """
    from kit.report import build_report
    from kit.verdict import EXIT_CODES, RELEASE_LABELS, TAMPERED_EXIT

    if _is_anomaly_run(run_dir):
        from kit.anomaly.report import build_anomaly_report
        from kit.rundir import report_html_path

        if pdf or (lang not in (None, "en")) or shadow is not None:
            console.print("note: an anomaly run's report is written in English, as HTML, without the shadow section "
                          "(--lang, --pdf and --shadow are for classifier runs; `kit shadow` writes its own page)",
                          highlight=False, markup=False)
        rec = build_anomaly_report(run_dir, log=lambda m: console.print(m, highlight=False, markup=False))
        for problem in rec.tampered:
            console.print(f"[bold red]TAMPERED:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        if not rec.tampered:
            console.print(f"verdict: {rec.verdict}", highlight=False, markup=False)
        typer.echo(str(report_html_path(run_dir)))
        code = TAMPERED_EXIT if rec.tampered else EXIT_CODES[next(k for k, v in RELEASE_LABELS.items() if v == rec.verdict)]
        if code:
            raise typer.Exit(code)
        return
    result = build_report(run_dir, lang=lang, pdf=pdf, log=lambda m: console.print(m, highlight=False, markup=False),
                          shadow=shadow)
    if result.tampered:  # the stored verdict is not repeated: its figures are not the ones kit verify wrote
        for problem in result.tampered:
            console.print(f"[bold red]TAMPERED:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    else:
        _print_release(result.verdict)
    typer.echo(str(result.html))
    if result.pdf:
        typer.echo(str(result.pdf))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
@_user_errors
def monitor(
    bundle: Path = typer.Argument(..., help="The deployed bundle folder (RUN_DIR/bundle)."),
    images: List[Path] = typer.Argument(..., help="Recent images from the line (files or folders)."),
    out: Path = typer.Option(Path("monitor"), "--out", help="Folder for drift.json and drift.png."),
) -> None:
    """Drift check of recent line images against the bundle's reference profile (the same command
    as the torch-free `deploy monitor`). Exits 2 on drift.

    Example: kit monitor runs/sample_line/RUN/bundle /data/line7/today
    """
    from deploy.cli import monitor as deploy_monitor

    deploy_monitor(bundle, images, out=out, runtime="auto", threads=0)


@app.command("init-line")
@_user_errors
def init_line(
    images: Path = typer.Argument(..., help="Folder with one subfolder per class (or train/val/test folders of those); one folder of good parts alone gets a task: anomaly recipe."),
    name: str = typer.Option(..., "--name", help="The line's name; the recipe becomes recipes/NAME.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the recipe (default: recipes/NAME.yaml)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing recipe."),
) -> None:
    """Scaffold a commented recipe from a folder of labelled images: classes and counts, imbalance,
    tiny classes and duplicates, image size and channels from the data, sensible model defaults;
    task: anomaly when a defect class has too few images for a classifier, or there are good parts only.

    Example: kit init-line /data/line7 --name line7
    """
    from kit.onboard.init_line import init_line as scaffold

    path, survey = scaffold(images, name, out, overwrite=force)
    console.print(f"{len(survey.classes)} class{'es' if len(survey.classes) != 1 else ''}, {survey.total} images: "
                  + ", ".join(f"{c} {survey.counts[c]}" for c in survey.classes), highlight=False, markup=False)
    for warning in survey.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    typer.echo(str(path))


@app.command()
@_user_errors
def calibrate(
    images: Path = typer.Argument(..., help="Unlabelled images from the camera (any folder layout)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe to update (its image size, ROI and flips are used)."),
    write: bool = typer.Option(False, "--write", help="Rewrite the recipe's views (default: print the diff)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of the measured distributions (default: calibration.png here)."),
    max_images: int = typer.Option(400, "--max-images", min=10, help="Images to measure (a seeded sample)."),
) -> None:
    """Measure the camera's imaging conditions (brightness, contrast, illumination, sharpness,
    noise, orientation) and propose weak and strong views that cover them with a margin.

    Example: kit calibrate /data/line7/unlabelled --recipe recipes/line7.yaml --write
    """
    from kit.onboard.calibrate import apply_to_recipe, calibrate as measure, plot_calibration, views_yaml
    from kit.recipe import load_recipe

    loaded = load_recipe(recipe) if recipe is not None else None
    cal = measure(images, loaded, max_images=max_images)
    table = Table(title=f"imaging conditions of {cal.images} images")
    for col in ("statistic", "5 %", "median", "95 %"):
        table.add_column(col)
    for name, q in cal.percentiles.items():
        table.add_row(name, f"{q['p5']:.3g}", f"{q['p50']:.3g}", f"{q['p95']:.3g}")
    console.print(table)
    png = plot_calibration(cal, plot or Path("calibration.png"))
    if recipe is not None:
        diff = apply_to_recipe(cal, recipe, write)
        typer.echo(diff if diff else "# the recipe's views already match the proposal")
        if write:
            console.print(f"updated {recipe}", highlight=False, markup=False)
    else:
        typer.echo(views_yaml(cal))
    console.print(f"distributions and extreme images: {png}", highlight=False, markup=False)


@app.command()
@_user_errors
def corruptions() -> None:
    """List the robustness suite's corruption families and their default severity tables.

    Example: kit corruptions
    """
    from kit.views.corruptions import get_corruption, list_corruptions

    table = Table(title="corruption families (override in verify.corruptions.severities)")
    for col in ("family", "group", "severities 1..5", "unit"):
        table.add_column(col)
    for name in list_corruptions():
        fam = get_corruption(name)
        table.add_row(name, fam.group, ", ".join(f"{v:g}" for v in fam.severities), fam.unit)
    Console().print(table)


@app.command()
@_user_errors
def doctor(out: Path = typer.Option(Path("runs"), "--out", help="Where runs will be written (for the free-disk check).")) -> None:
    """What this machine offers the kit: Python, torch and CUDA, ONNX Runtime providers, TensorRT,
    CPU threads, PDF and Japanese-font support, free disk; flags combinations known to fail.

    Exits 1 when a finding is a failure. Example: kit doctor
    """
    from kit.doctor import diagnose

    findings = diagnose(out)
    table = Table(title="kit doctor")
    for col in ("", "check", "found", "what to do"):
        table.add_column(col)
    marks = {"ok": "[green]ok[/]", "info": "[blue]info[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
    for f in findings:
        table.add_row(marks[f.status], escape(f.topic), escape(f.value), escape(f.hint))
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    if any(f.status == "fail" for f in findings):
        raise typer.Exit(1)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _print_kpi(kpi: KpiRecord) -> None:
    from rich import box

    table = Table(title=f"test split ({kpi.test_images} images); deployed runtime: {kpi.deployed_runtime}", box=box.SIMPLE_HEAD)
    for col in ("model", "acc %", "macro-F1", "fidelity %", "KL", "runs on"):
        table.add_column(col, no_wrap=col != "runs on")
    for name, m in kpi.models.items():
        table.add_row(name, _pct(m["accuracy"]), f"{m['macro_f1']:.3f}", _pct(m.get("agreement")),
                      "-" if m.get("mean_kl") is None else f"{m['mean_kl']:.3f}", m["runtime"])
    console.print(table)

    rob = kpi.robustness
    held = [f for f, v in rob["families"].items() if v["coverage"] == "held-out"]
    table = Table(title=f"robustness: {len(rob['families'])} corruption families x 5 severities "
                        f"(held-out: {', '.join(held) or 'none'})", box=box.SIMPLE_HEAD)
    for col in ("model", "clean %", "corrupted %", "relative", "in-recipe %", "held-out %", "held-out rel.", "flip %", "fidelity %"):
        table.add_column(col, no_wrap=True)
    for name, s in rob["summary"].items():
        rel = s["all"]["relative_robustness"]
        hrel = s["held_out"]["relative_robustness"]
        table.add_row(name, _pct(s["clean_accuracy"]), _pct(s["all"]["mean_accuracy"]), "-" if rel is None else f"{rel:.3f}",
                      _pct(s["in_recipe"]["mean_accuracy"]), _pct(s["held_out"]["mean_accuracy"]),
                      "-" if hrel is None else f"{hrel:.3f}", _pct(s["all"]["flip_rate"]), _pct(s["all"]["teacher_agreement"]))
    console.print(table)

    lat = kpi.latency
    table = Table(title=f"latency (ms; takt {lat['takt_ms'] or '-'} ms/part; torch threads {lat['threads']['torch_threads']}, "
                        f"ONNX Runtime threads {lat['threads']['onnxruntime_intra_op_threads']})", box=box.SIMPLE_HEAD)
    for col in ("model", "mode", "batch", "p50", "p95", "p99", "img/s", "file MB", "+RSS MB"):
        table.add_column(col, no_wrap=True)
    for r in lat["rows"]:
        table.add_row(r["model"], r["mode"].replace("_", "-"), str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['images_per_s']:.0f}", f"{r['file_mb']:.1f}",
                      "-" if r["added_rss_mb"] is None else f"{r['added_rss_mb']:.0f}")
    console.print(table)
    console.print("  +RSS MB: peak resident memory while loading and timing the model, above the process before it", highlight=False)
    cal = kpi.calibration
    console.print(f"calibration: temperature {cal['temperature']:.3f}; test ECE {cal['test']['ece_before']:.3f} -> "
                  f"{cal['test']['ece_after']:.3f}", highlight=False)
    _print_operating(kpi.operating)
    _print_gate(kpi.gate, summary=False)
    _print_release(kpi.verdict)


def _print_release(rel: Release) -> None:
    """The run's one verdict (``kpi.json`` ``release``), worded as page one and the log word it."""
    from kit.verify.release import describe_release

    colour = {"go": "bold green", "shadow": "bold yellow", "no_go": "bold red", "none": "bold"}[rel.verdict]
    console.print(f"[{colour}]verdict: {escape(describe_release(rel))}[/]", highlight=False)


def _print_operating(op: Operating) -> None:
    t = op.test
    escape = f"; escapes {t['escapes']} of {t['defective_parts']} defective parts" if "escapes" in t else ""
    if "escapes" in t and not t.get("accepted"):  # nothing decided alone: zero escapes would read as a pass
        escape = "; escapes and false rejects unmeasured (no part decided without a person)"
    reached = "" if op.reached in (None, True) else " [bold red](target not reached on val: every part goes to a person)[/]"
    console.print(
        f"operating threshold {op.threshold if op.threshold is not None else 'none'}"
        f"{' for ' + op.target if op.target else ''}{reached}: test automation {_pct(t['automation_rate'])} %, "
        f"accepted accuracy {_pct(t['accepted_accuracy'])} %{escape}", highlight=False)


def _print_gate(verdict: Verdict | dict[str, Any], name: str = "KPI gate", summary: bool = True) -> None:
    """Any verdict of ``kit.verdict``: the parity ladder's (a dict from parity.json) and the KPI gate's print the same way.
    A check met on its value while the pessimistic end of its interval is past the limit reads "value only", never
    "pass"; the KPI gate's summary is the release verdict (``_print_release``), not a line of its own."""
    from kit.verdict import Verdict
    from kit.verify.release import point_only

    if isinstance(verdict, dict):
        verdict = Verdict.model_validate(verdict)
    for c in verdict.checks:
        value = "-" if c.value is None else f"{c.value:.4g}"
        if not c.gated:
            console.print(f"[dim]info[/] {c.description}: {value}", highlight=False)
            continue
        thin = point_only(c)
        mark = "[yellow]value only[/]" if thin else "[green]pass[/]" if c.passed else "[bold red]FAIL[/]"
        bound = f"; pessimistic end {c.bound:.4g} is past the limit" if thin else ""
        console.print(f"{mark} {escape(c.target)}: {escape(c.description)} = {value} (limit {c.op} {c.limit:g}{bound})",
                      highlight=False)
    if summary:
        console.print(f"[bold green]{name} passed[/]" if verdict.passed else f"[bold red]{name} failed[/]: {escape(', '.join(verdict.failed))}")


@app.command()
@_user_errors
def views(
    recipe: Path = typer.Argument(..., help="The line's recipe YAML."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: <line>.views.png in the current folder)."),
    per_class: int = typer.Option(2, "--per-class", min=1, help="Images per class."),
) -> None:
    """Preview the weak and strong views on real images of the line, without training.

    Example: kit views recipes/sample_line.yaml --out views.png
    """
    from kit.data.preview import preview_views

    path = preview_views(recipe, out, per_class=per_class)
    typer.echo(str(path))


@app.command("sample-data")
@_user_errors
def sample_data(
    out: Optional[Path] = typer.Argument(None, help="Folder to write <class>/<image>.png into, defect masks into OUT_masks (default for --line sample: sample_data/sample_line)."),
    line: str = typer.Option("sample", "--line", help="Which synthetic line: sample (six classes, 96 px, committed) or sparse (90 % good parts, defects a few px across, 256 px)."),
    seed: int = typer.Option(0, "--seed"),
    size: Optional[int] = typer.Option(None, "--size", min=32, help="Image side in px (default: the line's own size, 96 for sample, 256 for sparse)."),
) -> None:
    """Regenerate a synthetic line (deterministic for a seed).

    Example: kit sample-data sample_data/sample_line
    Example: kit sample-data --line sparse /tmp/sparse
    """
    from kit.sample_line import SAMPLE_LINES, generate_line

    counts = generate_line(line, out, seed=seed, size_px=size)
    typer.echo(f"{sum(counts.values())} images in {out or SAMPLE_LINES[line].committed_dir}: {counts}")


# -- after go-live (issue 17) ---------------------------------------------------------------------------

@app.command()
@_user_errors
def shadow(
    log: List[Path] = typer.Option(..., "--log", help="Decision log files or folders (repeat the option)."),
    inspector: Optional[Path] = typer.Option(None, "--inspector", help="Inspectors' CSV: part_id or image_sha256, label (a class, or ok/ng), time."),
    study: Optional[Path] = typer.Option(None, "--study", help="Attribute agreement study CSV: part, appraiser, trial, call, "
                                         "reference (where known); the model joins as one more appraiser."),
    out: Path = typer.Option(Path("shadow"), "--out", help="Folder for shadow.json, shadow.html and shadow_parts.csv."),
    target: str = typer.Option("max_escape_rate=0.01", "--target", help="What automation must guarantee: max_escape_rate=E or accepted_accuracy=A."),
    ok_class: Optional[str] = typer.Option(None, "--ok-class", help="The good-part class (default: `ok`, or the class the logs accept)."),
    lang: str = typer.Option("en", "--lang", help="en | ja: the language of shadow.html."),
) -> None:
    """Join the model's decisions (decision logs) with the inspectors' decisions on the same parts:
    agreement, parts the model would have automated, its escapes and false rejects per class with
    intervals, unmatched parts, and a recommendation: keep shadowing, or automate at threshold t.

    With --study, also an attribute agreement study (AIAG MSA): within and between appraisers, each
    appraiser against the reference (effectiveness, miss and false-alarm rates with 95 % intervals, AIAG
    verdict), Cohen's and Fleiss' kappa, and the parts a claim needs; without --inspector the study's
    reference calls are the inspectors' decisions.

    Example: kit shadow --log /var/log/line7 --inspector inspectors.csv --out shadow/ --target max_escape_rate=0.005
    Example: kit shadow --log /var/log/line7 --study msa.csv --out shadow/
    """
    from kit.feedback.shadow import shadow_period, write_shadow
    from kit.verify.threshold import parse_target

    result = shadow_period(log, inspector, parse_target(target, ok_class), ok_class=ok_class, study_csv=study)
    files = write_shadow(result, out, lang)
    c, s = result["counts"], result["summary"]
    console.print(f"{c['matched']} parts joined of {c['inspector_rows']} inspector rows and {c['decisions']} decisions; "
                  f"not joined: {c['inspector_without_decision']} inspector rows without a decision, "
                  f"{c['decision_without_inspector']} decisions without an inspector, {c['unknown_labels']} unknown labels, "
                  f"{c['repeated_inspector_rows']} repeated rows", highlight=False, markup=False)
    for name, key in (("agreement", "agreement_ok_ng"), ("automated", "automated"), ("escapes", "escapes"),
                      ("false rejects", "false_rejects")):
        r = s[key]
        console.print(f"  {name}: {r['k']} / {r['n']} ({_pct(r['rate'])} %, 95 % CI {_pct(r['low'])}-{_pct(r['high'])} %)",
                      highlight=False, markup=False)
    console.print(result["recommendation"]["message"], highlight=False, markup=False)
    if result.get("study"):
        _print_study(result["study"])
    typer.echo(str(files.html))


def _print_study(study: dict) -> None:
    """The attribute agreement study as an MSA tool prints it: one row per appraiser, then between appraisers."""
    from rich.table import Table
    from rich.text import Text

    from kit.feedback.attribute_study import sample_size_sentences

    def cell(r: Optional[dict], level: bool = False) -> str:
        if r is None or not r["n"]:
            return "-"
        text = f"{r['k']}/{r['n']} {_pct(r['rate'])} % ({_pct(r['low'])}-{_pct(r['high'])})"
        return text + (f" {r['aiag']}" if level and r.get("aiag") else "")

    def kappa(k: Optional[dict]) -> str:
        if not k or k.get("kappa") is None:
            return "-"
        return f"{k['kappa']:.2f}" + (f" [{k['low']:.2f}, {k['high']:.2f}]" if k.get("low") is not None else "")

    table = Table(title="Attribute agreement study (AIAG MSA; 95 % Clopper-Pearson intervals)", title_justify="left")
    for column in ("appraiser", "decisions", "within appraiser", "effectiveness", "miss rate (escapes)",
                   "false alarms (false rejects)", "kappa vs reference", "AIAG verdict"):
        table.add_column(column, overflow="fold")
    for a in study["appraisers"]:
        v = a["versus_reference"]
        table.add_row(*map(Text, (a["appraiser"], str(a["decisions"]), cell(a["within"]), cell(v["effectiveness"], True),
                                  cell(v["miss_rate"], True), cell(v["false_alarm_rate"], True),
                                  kappa(a["kappa_reference"]), a["aiag"] or "-")))  # Text: a name is never markup
    console.print(table)
    b = study["between"]
    console.print(f"between the inspectors (all trials): all agree on {cell(b['agreement'])}, Fleiss' kappa "
                  f"{kappa(b['fleiss'])}; all equal the reference on {cell(b['all_match_reference'])}",
                  highlight=False, markup=False)
    if study.get("between_with_model"):
        m = study["between_with_model"]
        console.print(f"with the model (first trials): all agree on {cell(m['agreement'])}, Fleiss' kappa "
                      f"{kappa(m['fleiss'])}", highlight=False, markup=False)
    for sentence in sample_size_sentences(study):
        console.print(f"sample size: {sentence}", highlight=False, markup=False)


@app.command()
@_user_errors
def ingest(
    queue_csv: Path = typer.Argument(..., help="A reviewed QUEUE_DIR/queue.csv (label column filled in)."),
    recipe: Path = typer.Option(..., "--recipe", help="The line's recipe: its data gets the reviewed images."),
) -> None:
    """Add reviewed parts to the line's data under a dated folder (or the manifest), dropping exact
    duplicates; refuses, one line each, labels that are not classes of the line or that contradict
    the label of the same image. Exits 1 when a row was refused (the others are added).

    Example: kit ingest review/queue.csv --recipe recipes/line7.yaml
    """
    from kit.feedback.ingest import ingest_queue

    result = ingest_queue(queue_csv, recipe)
    for line in result.refused:
        console.print(f"[bold red]refused:[/] {escape(line)}", highlight=False, soft_wrap=True)
    labels = ", ".join(f"{k} {v}" for k, v in result.by_label.items())
    console.print(f"added {len(result.added)} images{' (' + labels + ')' if labels else ''}; already in the data "
                  f"{result.duplicates}; not reviewed yet {result.unreviewed}; refused {len(result.refused)}",
                  highlight=False, markup=False)
    if result.manifest is not None:
        typer.echo(str(result.manifest))
    elif result.destination is not None:
        typer.echo(str(result.destination))
    if result.refused:
        raise typer.Exit(1)


@app.command()
@_user_errors
def audit(
    run_dir: Path = typer.Argument(..., help="A run directory (recipe.lock.yaml and split.csv; student.pt for --init student)."),
    folds: int = typer.Option(3, "--folds", min=2, help="k of the k-fold out-of-fold predictions."),
    init: str = typer.Option("auto", "--init", help="scratch (a model trained per fold: true out-of-fold predictions; auto) | student (the run's student as features, a linear head per fold: fast, misses labels it memorised)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs per fold with --init scratch (default 20)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size for --init scratch (default: the recipe's)."),
    max_distance: int = typer.Option(4, "--max-distance", min=0, max=32, help="Near-duplicates: at most this many of 64 hash bits apart."),
) -> None:
    """List the images whose label is most likely wrong (confident learning: training images out of fold,
    validation and test images by the fold models, which never saw them) and near-duplicates across splits
    (perceptual hash) that leak train into test.

    Writes RUN_DIR/audit/ (audit.html with thumbnails, label_issues.csv, near_duplicates.csv, audit.json).
    Example: kit audit runs/sample_line/RUN
    """
    from kit.feedback.audit import AuditSettings, audit_run
    from kit.rundir import AUDIT_HTML

    settings = AuditSettings(folds=folds, epochs=epochs, init=init, image_size_px=image_size, max_distance=max_distance)
    result = audit_run(run_dir, settings, log=lambda m: console.print(m, highlight=False, markup=False))
    for r in result.issues[:min(10, max(1, result.summary["flagged"]))]:
        console.print(f"  {r['rank']:>3}. {r['label']} -> {r['suggested']} (p {r['label_probability']:.2f}): {r['path']}",
                      highlight=False, markup=False)
    for split, b in result.summary["by_split"].items():
        console.print(f"  {split}: {b['flagged']} of {b['images']} labels flagged ({b['scored_by']})", highlight=False,
                      markup=False)
    typer.echo(str(result.audit_dir / AUDIT_HTML))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
