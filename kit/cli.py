"""The ``kit`` command: one thin command per library function.

Every user mistake (``KitError``, ``DeployError``) is printed as one line and exits 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.errors import DeployError
from kit.errors import KitError
from kit.progress import Reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="Inspection deployment kit: recipe -> robust edge model -> KPI report.")
console = Console(stderr=True)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (KitError, DeployError) as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: checkpoints are intact; continue with `kit run RUN_DIR --resume`")
            raise typer.Exit(130) from None

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
) -> None:
    """Train the teacher, distil the student and evaluate both.

    Example: kit run recipes/sample_line.yaml
    """
    from kit.recipe import load_recipe
    from kit.run import find_resumable, run_line

    resume_dir = None
    recipe_path: Path | None = target
    if target.is_dir():
        if not resume:
            raise KitError(f"{target}: is a run directory; add --resume to continue it, or pass a recipe file")
        resume_dir, recipe_path = target, None
    elif resume:
        resume_dir = find_resumable(out, load_recipe(target))
        if resume_dir is None:
            console.print(f"no unfinished run of {target} under {out}; starting a new one")
        else:
            recipe_path = None
    result = run_line(recipe_path, out_root=out, name=name, resume_dir=resume_dir, reporter=RichReporter())
    _print_metrics(result.metrics)
    typer.echo(str(result.run_dir))


def _print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title=f"test split ({metrics['split_sizes']['test']} images)")
    for col in ("model", "accuracy", "macro-F1", "lowest recall"):
        table.add_column(col)
    for role in ("teacher", "student"):
        m = metrics[role]
        worst = min(m["per_class"].items(), key=lambda kv: kv[1]["recall"])
        table.add_row(role, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{worst[1]['recall']:.3f} ({worst[0]})")
    console.print(table)
    console.print(f"teacher-student agreement {metrics['agreement']:.3f}; accuracy gap {metrics['accuracy_gap']:+.3f}")


@app.command()
@_user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory (runs/<line>/<run-id>)."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Comma list: onnx,onnx-int8,tensorrt-fp16,tensorrt-int8 (default: the recipe's export.formats)."),
) -> None:
    """Export the student as an edge bundle and check it rung by rung (parity ladder).

    Writes RUN_DIR/bundle/ (model.onnx, model.int8.onnx, TensorRT plans where a GPU exists,
    model.json, parity.json). Exits 1 when a parity gate fails.
    Example: kit export runs/sample_line/20261129-101500 --formats onnx,onnx-int8
    """
    from kit.export import ParityGateError, export_bundle

    chosen = None
    if formats:
        chosen = [f.strip() for f in formats.split(",") if f.strip()]
        from typing import get_args

        from kit.recipe.schema import ExportFormat

        valid = get_args(ExportFormat)
        for f in chosen:
            if f not in valid:
                raise KitError(f"--formats: unknown format {f!r}; choose from {', '.join(valid)}")
    try:
        result = export_bundle(run_dir, chosen, log=lambda m: console.print(m, highlight=False, markup=False))
        _print_parity(result.parity)
    except ParityGateError:
        from kit.io import read_json

        _print_parity(read_json(Path(run_dir) / "bundle" / "parity.json"))
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
    console.print("  vs: the rung compared with; t-agree: top-1 agreement with the teacher", highlight=False)
    for row in parity["rungs"]:
        console.print(f"  {row['rung']}: {row['runtime']}", highlight=False)
    for gate in parity["gates"]:
        mark = "[green]pass[/]" if gate["passed"] else "[bold red]FAIL[/]"
        console.print(f"{mark} {gate['rung']}: {gate['check']} = {gate['value']:.6g} (limit {gate['op']} {gate['limit']:g})")


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
    from kit.preview import preview_views

    path = preview_views(recipe, out, per_class=per_class)
    typer.echo(str(path))


@app.command("sample-data")
@_user_errors
def sample_data(
    out: Path = typer.Argument(Path("sample_data/sample_line"), help="Folder to write <class>/<image>.png into."),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(96, "--size", min=32, help="Image side in px."),
) -> None:
    """Regenerate the synthetic sample line (deterministic for a seed).

    Example: kit sample-data sample_data/sample_line
    """
    from kit.sample_line import generate_sample_line

    counts = generate_sample_line(out, seed=seed, size_px=size)
    typer.echo(f"{sum(counts.values())} images in {out}: {counts}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
