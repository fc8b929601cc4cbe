"""``deploy``: the edge command, torch-free.

``deploy predict BUNDLE IMAGE_OR_DIR...`` prints one JSON line per image; ``deploy bench`` times the
runtimes; ``deploy monitor`` checks recent images for drift against the bundle's reference profile.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List

import typer

from deploy.errors import DeployError
from deploy.preprocess import IMAGE_SUFFIXES

if TYPE_CHECKING:  # deploy.monitor pulls in scipy: only the monitor command pays for it
    from deploy.monitor import MonitorFiles

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Edge runtime of the inspection kit (no torch needed).")


@app.callback()
def _root() -> None:
    """Edge runtime of the inspection kit (no torch needed)."""


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``DeployError`` -> ``error: ...`` on stderr and exit 1: the user gets what to fix, not a
    traceback. Every command uses it, so they fail the same way; other exceptions are bugs and keep
    their traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DeployError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _expand(inputs: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


@app.command()
@_one_line_errors
def predict(
    bundle: Path = typer.Argument(..., help="An exported bundle folder (RUN_DIR/bundle)."),
    inputs: List[Path] = typer.Argument(..., help="Image files or folders of images."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | tensorrt | tensorrt-fp16 | tensorrt-int8"),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
) -> None:
    """Classify images with a bundle; one JSON line per image.

    Example: deploy predict runs/sample_line/RUN/bundle part_0001.png
    """
    from deploy.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, runtime, intra_op_threads=threads or None)
    typer.echo(f"# {predictor.describe()}", err=True)
    for decision in predictor.predict_paths(_expand(inputs)):
        typer.echo(json.dumps(decision.to_dict(), ensure_ascii=False))


@app.command()
@_one_line_errors
def bench(
    bundle: Path = typer.Argument(..., help="An exported bundle folder."),
    runtime: List[str] = typer.Option(["onnx", "onnx-int8"], "--runtime", help="Runtimes to time (repeat the option)."),
    batch: List[int] = typer.Option([1], "--batch", help="Batch sizes (repeat the option)."),
    images: List[Path] = typer.Option([], "--images", help="Images for the end-to-end timing (files or folders)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
    iters: int = typer.Option(100, "--iters", min=5),
) -> None:
    """Latency p50/p95/p99 and throughput per runtime and batch size; JSON lines.

    Example: deploy bench runs/sample_line/RUN/bundle --runtime onnx --runtime onnx-int8 --batch 1 --batch 32
    """
    from deploy.bench import bench_end_to_end, bench_model
    from deploy.predictor import Predictor

    paths = _expand(images)
    for name in runtime:
        predictor = Predictor.from_bundle(bundle, name, intra_op_threads=threads or None)
        for b in batch:
            row = {"runtime": name, "providers": predictor.describe(), "threads": threads or "default",
                   "model_only": bench_model(predictor, b, iters=iters)}
            if paths:
                row["end_to_end"] = bench_end_to_end(predictor, paths, b, iters=max(5, iters // 2))
            typer.echo(json.dumps(row))


@app.command()
@_one_line_errors
def monitor(
    bundle: Path = typer.Argument(..., help="The deployed bundle folder."),
    inputs: List[Path] = typer.Argument(..., help="Recent images from the line (files or folders)."),
    out: Path = typer.Option(Path("monitor"), "--out", help="Folder for drift.json and drift.png."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | tensorrt ..."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
) -> None:
    """Compare recent line images with the bundle's reference profile: imaging statistics
    (brightness, contrast, illumination, sharpness, noise, orientation), model confidence,
    abstain rate and class mix. Prints ok / watch / drift per check; exits 2 on drift.

    Example: deploy monitor runs/sample_line/RUN/bundle /data/line7/today --out monitor/today
    """
    from deploy.monitor import monitor as run_monitor
    from deploy.monitor import write_monitor_report

    report = run_monitor(bundle, _expand(inputs), runtime=runtime, intra_op_threads=threads or None)
    files = write_monitor_report(report, out)
    for line in _monitor_lines(report, files):
        typer.echo(line)
    if report["status"] == "drift":
        raise typer.Exit(2)


def _monitor_lines(report: dict[str, Any], files: MonitorFiles) -> list[str]:
    """The human summary of a monitor report: one line per check, then the verdict and where it went."""
    lines = []
    for r in report["checks"]:
        test = "chi2" if r["check"] == "predicted_classes" else "KS"
        p = "" if r["ks_p_value"] is None else f"  {test} p={r['ks_p_value']:.2g}"
        med = "" if r["reference_median"] is None else f"  median {r['reference_median']:.3g} -> {r['new_median']:.3g}"
        lines.append(f"{r['status']:>5}  {r['check']:<18} PSI {r['psi']:.3f}{p}{med}")
    if report["abstain"]:
        a = report["abstain"]
        lines.append(f"abstain rate {a['reference_rate']:.1%} -> {a['new_rate']:.1%} (threshold {a['threshold']:.3f})")
    lines += [f"note: {note}" for note in report["notes"]]
    if files.drift_png is None:
        lines.append('note: drift.png not written: matplotlib is not installed (pip install "inspection-kit[plot]")')
    lines.append(f"{report['status'].upper()}: {report['images']} images vs {report['reference_images']} reference; "
                 f"{files.drift_json}{' and drift.png' if files.drift_png else ''}")
    return lines


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
