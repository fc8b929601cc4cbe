"""Distillation quality: the same student trained with none, kd and crld, plus CRLD ablations
(within-view terms only, cross-view terms only, no confidence masks), from one teacher, with the
same epochs, over several seeds. Reports mean and spread of clean accuracy, macro-F1, agreement
with the teacher, and corruption accuracy on in-recipe and held-out families (kit.verify's suite).

    python benchmarks/distill_quality.py                                  # sample line, small budget
    python benchmarks/distill_quality.py --datasets x-sdd --seeds 3 --epochs 20 --image-size 64
    python benchmarks/distill_quality.py --datasets x-sdd --epochs 0 --teacher-epochs 0 --image-size 0   # the recipe's budget
    python benchmarks/distill_quality.py ... --jobs 3 --work-dir /tmp/dq   # GPU: seeds in parallel; resumable

x-sdd is read through recipes/x-sdd.yaml (../shared/datasets/x-sdd); it is skipped with a message
where absent. The sparse line (90 % good parts, defects a few pixels across, recipes/sparse_line.yaml)
is generated into sample_data/sparse_line on first use. ``--balance none --select-by accuracy``
trains as the kit did before class balancing (the "before" rows). Prints one table per dataset and
appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from benchmarks.common import append_results, markdown_table  # noqa: E402
from kit.data import decode_line, decode_teacher_splits, index_line, preprocess_spec  # noqa: E402
from kit.errors import DataError  # noqa: E402
from kit.evaluate import agreement, classification_metrics, predict_logits  # noqa: E402
from kit.models import load_model  # noqa: E402
from kit.onboard.init_line import detect_ok_class  # noqa: E402
from kit.recipe import Recipe, load_recipe  # noqa: E402
from kit.recipe.load import recipe_to_dict  # noqa: E402
from kit.distill.methods import CRLDConfig, KDConfig, NoDistillConfig  # noqa: E402
from kit.train import TrainContext, resolve_device, train_student, train_teacher  # noqa: E402
from kit.views.corruptions import coverage, list_corruptions  # noqa: E402
from kit.verify.robustness import run_suite  # noqa: E402
from kit.scorers import model_scorer  # noqa: E402
from kit.views import build_view  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"sample": REPO / "recipes" / "sample_line.yaml", "x-sdd": REPO / "recipes" / "x-sdd.yaml",
            "sparse": REPO / "recipes" / "sparse_line.yaml"}
GENERATED = {"sparse": REPO / "sample_data" / "sparse_line"}  # made on the fly, never committed
# Order matters when a run is cut short: the headline methods first, then the ablations.
METHODS: dict[str, tuple[str, Any]] = {
    "none": ("none", NoDistillConfig()),
    "kd": ("kd", KDConfig()),
    "crld": ("crld", CRLDConfig()),
    "crld-within-only": ("crld", CRLDConfig(cross_weight=0.0)),
    "crld-cross-only": ("crld", CRLDConfig(within_weight=0.0)),
    "crld-no-masks": ("crld", CRLDConfig(tau_weak=0.0, tau_strong=0.0)),
    # A tuning candidate, not an ablation: cross-view terms weighted above within-view ones.
    "crld-cross-heavy": ("crld", CRLDConfig(within_weight=1.0, cross_weight=2.0)),
}
DEFAULT_METHODS = ["none", "kd", "crld", "crld-within-only", "crld-cross-only", "crld-no-masks"]


def _scaled(recipe: Recipe, args: argparse.Namespace, seed: int) -> Recipe:
    d = recipe_to_dict(recipe)
    if args.image_size:
        d["data"]["image_size"] = [args.image_size, args.image_size]
    if args.epochs:
        d["student"]["epochs"] = args.epochs
    if args.teacher_epochs:
        d["teacher"]["epochs"] = args.teacher_epochs
    d["data"]["num_workers"] = args.workers
    if args.teacher_views:
        d["teacher"]["train_views"] = args.teacher_views
    if args.teacher_image_size:
        d["teacher"]["image_size"] = [args.teacher_image_size, args.teacher_image_size]
    strong = d["views"]["strong"]  # steps are one-key mappings: {lighting: {severity: 2, p: 0.8}}
    missing = set(args.view_severity) - {next(iter(step)) for step in strong}
    if missing:
        raise SystemExit(f"--view-severity: the strong view of {recipe.line.name} has no preset {sorted(missing)[0]!r}")
    for step in strong:
        (preset, kwargs), = step.items()
        if preset in args.view_severity:
            step[preset] = {**(kwargs or {}), "severity": args.view_severity[preset]}
    for role in ("teacher", "student"):
        if args.balance:
            d[role]["balance"] = args.balance
        if args.select_by:
            d[role]["select_by"] = args.select_by
    d["seed"] = seed
    out = Recipe.model_validate(d)
    out._base_dir = recipe._base_dir
    return out


@dataclass
class Bench:
    """What one dataset's runs share; rebuilt identically in every worker process (cheap: decode only)."""

    name: str
    base: Recipe
    splits: dict[str, Any]
    classes: list[str]
    spec: Any
    setup: Any
    pipelines: dict[str, Any]
    families: list[str]
    cover: dict[str, Any]
    cap: np.ndarray
    work: Path
    teacher_spec: Any = None  # --teacher-image-size: the teacher's own input; None: the student's
    teacher_splits: dict[str, Any] | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return {"classes": self.classes, "preprocess": self.spec.to_dict(), "recipe_hash": "benchmark"}

    def context(self, args: argparse.Namespace, seed: int) -> TrainContext:
        return TrainContext(_scaled(self.base, args, seed), self.splits, self.classes, self.spec, self.pipelines,
                            self.setup, self.work, None, False, teacher_spec=self.teacher_spec,
                            teacher_splits=self.teacher_splits)

    def suite(self, scorers: list) -> dict[str, Any]:
        test = self.splits["test"]
        images_at = {self.teacher_spec: self.teacher_splits["test"].images[self.cap]} if self.teacher_splits else None
        return run_suite(scorers, test.images[self.cap], test.labels[self.cap], self.spec, self.families, self.cover,
                         run_seed=0, images_at=images_at)["summary"]


def prepare(name: str, args: argparse.Namespace, work: Path) -> Bench:
    if name in GENERATED and not GENERATED[name].is_dir():
        from kit.sample_line import generate_line

        generate_line(name, GENERATED[name])
    base = load_recipe(DATASETS[name])
    recipe = _scaled(base, args, seed=0)
    index = index_line(recipe)
    spec = preprocess_spec(recipe)
    splits, _ = decode_line(index, recipe, spec)
    teacher_spec, teacher_splits = decode_teacher_splits(recipe, spec, splits)
    pipelines = {v: build_view(getattr(recipe.views, v), f"views.{v}", recipe.view_size, spec.num_channels)
                 for v in ("weak", "strong")}
    families = list_corruptions()
    n_test = len(splits["test"].labels)
    cap = np.sort(np.random.default_rng(0).permutation(n_test)[: args.max_corruption_images])
    return Bench(name, base, splits, index.classes, spec, resolve_device(args.device), pipelines, families,
                 coverage(pipelines["strong"], families), cap, work, teacher_spec if teacher_splits else None, teacher_splits)


def _teacher(bench: Bench, args: argparse.Namespace):
    """Train the reference teacher once per work folder; later calls (and workers) load it. A call cut short
    leaves the best epoch so far but no ``teacher.done``: the next call resumes the teacher instead of taking
    that half-trained epoch for the finished teacher."""
    path, done = bench.work / "teacher.best.pt", bench.work / "teacher.done"
    if not done.is_file():
        started = time.perf_counter()
        train_teacher(replace(bench.context(args, seed=0), resume=True), {**bench.meta, "role": "teacher"})
        done.write_text("finished\n")
        print(f"{bench.name}: teacher trained in {time.perf_counter() - started:.0f} s", flush=True)
    teacher, _ = load_model(path)
    return teacher.to(bench.setup.device).eval(), path


def _predict(model, bench: Bench, split: str, teacher: bool = False) -> np.ndarray:
    """Top-1 on a split; ``teacher``: at the teacher's own input size (``--teacher-image-size``)."""
    splits, spec = (bench.teacher_splits, bench.teacher_spec) if teacher and bench.teacher_splits else (bench.splits, bench.spec)
    return predict_logits(model, splits[split].tensors(spec), bench.setup.device).argmax(1).numpy()


def _row(bench: Bench, method: str, seed: int, pred: np.ndarray, teacher_pred: np.ndarray, suite: dict[str, Any],
         seconds: float) -> dict[str, Any]:
    labels = bench.splits["test"].labels
    ok_name = bench.base.line.ok_class or detect_ok_class(bench.classes)  # as the recipe, else init-line, names it
    ok = bench.classes.index(ok_name) if ok_name in bench.classes else None
    defective = labels != ok if ok is not None else np.zeros(len(labels), bool)
    escaped = float(np.mean(pred[defective] == ok)) if defective.any() else None
    return {"method": method, "seed": seed, "accuracy": float(np.mean(pred == labels)),
            "macro_f1": classification_metrics(labels, pred, bench.classes)["macro_f1"], "escaped": escaped,
            "agreement": agreement(pred, teacher_pred), "in_recipe": suite["in_recipe"]["mean_accuracy"],
            "held_out": suite["held_out"]["mean_accuracy"], "seconds": seconds}


def _append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:  # one line per finished model: a cut run keeps what it measured
        fh.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def seed_rows(name: str, args: argparse.Namespace, seed: int, work: Path) -> list[dict[str, Any]]:
    """Every requested method for one seed, skipping those already in the rows file (resume)."""
    bench = prepare(name, args, work)
    teacher, _ = _teacher(bench, args)
    teacher_pred, teacher_val = _predict(teacher, bench, "test", teacher=True), _predict(teacher, bench, "val", teacher=True)
    rows_path = work / "rows.jsonl"
    done = {(r["method"], r["seed"]) for r in read_rows(rows_path)}
    out = []
    for label in args.methods:
        if (label, seed) in done:
            continue
        method, cfg = METHODS[label]
        role = f"student-{label}-s{seed}"
        t0 = time.perf_counter()
        train_student(bench.context(args, seed), method, cfg, teacher, {**bench.meta, "role": role, "method": method},
                      role=role, teacher_val_pred=teacher_val)
        student, _ = load_model(work / f"{role}.best.pt")
        # The teacher's corrupted-image scores are not in a row: score the student alone.
        suite = bench.suite([model_scorer("student", student, bench.setup.device, work / f"{role}.best.pt")])["student"]
        row = _row(bench, label, seed, _predict(student, bench, "test"), teacher_pred, suite, time.perf_counter() - t0)
        _append_row(rows_path, row)
        out.append(row)
        print(f"{name} seed {seed} {label:<17} acc {row['accuracy']:.3f} held-out {row['held_out']:.3f} "
              f"in-recipe {row['in_recipe']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return out


SETTINGS = ("image_size", "epochs", "teacher_epochs", "teacher_views", "view_severity", "max_corruption_images", "device",
            "balance", "select_by", "teacher_image_size")


def _claim_work_dir(work: Path, args: argparse.Namespace) -> None:
    """Rows from other settings must never be summarised together: a work folder keeps its settings."""
    settings = {k: getattr(args, k) for k in SETTINGS}
    path = work / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in SETTINGS if before.get(k, 0 if k == "teacher_image_size" else None) != settings[k]]
        if changed:
            raise SystemExit(f"{work}: made with other settings ({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); "
                             f"use another --work-dir")
    else:
        path.write_text(json.dumps(settings, indent=1))


def held_out_families(name: str, args: argparse.Namespace) -> list[str]:
    base = load_recipe(DATASETS[name])
    recipe = _scaled(base, args, seed=0)
    strong = build_view(recipe.views.strong, "views.strong", recipe.view_size, preprocess_spec(recipe).num_channels)
    return [f for f, where in coverage(strong, list_corruptions()).items() if where == "held-out"]


def _variant_tag(args: argparse.Namespace) -> str:
    """File-name suffix of a tuned configuration, so its rows never overwrite the recipe's own."""
    parts = [f"teacher-{args.teacher_views}"] if args.teacher_views else []
    parts += [f"{k}{v}" for k, v in args.view_severity.items()]
    parts += [f"balance-{args.balance}"] if args.balance else []
    parts += [f"select-{args.select_by}"] if args.select_by else []
    parts += [f"teacher{args.teacher_image_size}px"] if args.teacher_image_size else []
    return "_" + "-".join(parts) if parts else ""


def open_bench(name: str, args: argparse.Namespace, prefix: str) -> Bench | None:
    """The dataset's bench in its work folder (``--work-dir``/NAME, else a new temporary one), claimed for these
    settings; None, with one line, when the dataset is absent (x-sdd outside this machine)."""
    work = Path(args.work_dir) / name if args.work_dir else Path(tempfile.mkdtemp(prefix=f"{prefix}-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench = prepare(name, args, work)
    except DataError as exc:
        print(f"{name}: skipped ({exc})")
        return None
    _claim_work_dir(work, args)
    return bench


def bench_dataset(name: str, args: argparse.Namespace) -> list[dict[str, Any]] | None:
    bench = open_bench(name, args, "kit-distill")
    if bench is None:
        return None
    work = bench.work
    rows_path = work / "rows.jsonl"
    teacher, teacher_path = _teacher(bench, args)
    if not any(r["method"] == "teacher" for r in read_rows(rows_path)):
        suite = bench.suite([model_scorer("teacher", teacher, bench.setup.device, teacher_path, spec=bench.teacher_spec)])["teacher"]
        pred = _predict(teacher, bench, "test", teacher=True)
        _append_row(rows_path, _row(bench, "teacher", 0, pred, pred, suite, 0.0))
    print(f"{name}: rows in {rows_path}", flush=True)
    del teacher
    seeds = range(args.seeds)
    if args.jobs > 1:
        # Seeds in parallel processes (spawned: CUDA does not survive fork); each appends its own rows.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            for future in [pool.submit(seed_rows, name, args, seed, work) for seed in seeds]:
                future.result()
    else:
        for seed in seeds:
            seed_rows(name, args, seed, work)
    raw = read_rows(rows_path)
    if not args.no_record:
        (REPO / "benchmarks" / f"distill_quality_{name}{_variant_tag(args)}.json").write_text(json.dumps(raw, indent=1))
    return raw


def summarize(raw: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    out = []
    for method in ["teacher", *methods]:
        rows = [r for r in raw if r["method"] == method]
        if not rows:
            continue
        entry: dict[str, Any] = {"method": method, "seeds": len(rows)}
        for key in ("accuracy", "macro_f1", "escaped", "agreement", "held_out", "in_recipe"):
            if any(r.get(key) is None for r in rows):  # no good-part class (x-sdd), or rows from before the column
                entry[key] = "-"
                continue
            v = np.array([r[key] for r in rows], float) * (100 if key != "macro_f1" else 1)
            entry[key] = f"{v.mean():.1f} ± {v.std():.1f}" if key != "macro_f1" else f"{v.mean():.3f} ± {v.std():.3f}"
        entry["train_s"] = f"{np.mean([r['seconds'] for r in rows]):.0f}" if method != "teacher" else ""
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sample", help="comma list of: sample, x-sdd, sparse")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list of: {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="student epochs (recipe value when 0)")
    parser.add_argument("--teacher-epochs", type=int, default=20, help="teacher epochs (recipe value when 0)")
    parser.add_argument("--image-size", type=int, default=48, help="px (recipe value when 0)")
    parser.add_argument("--max-corruption-images", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes (useful on a GPU)")
    parser.add_argument("--workers", default=None, help="DataLoader workers per process (default: 0 on CPU, "
                                                         "the cores shared among --jobs on CUDA)")
    parser.add_argument("--work-dir", default=None, help="keep checkpoints and rows.jsonl here; a second call resumes")
    parser.add_argument("--from-rows", default=None, type=Path, help="summarise and record a rows.jsonl (a run cut short)")
    parser.add_argument("--teacher-views", choices=["weak", "strong", "mix"], default=None,
                        help="views the teacher trains on (recipe value by default)")
    parser.add_argument("--view-severity", default="", help="strong-view preset severities, e.g. angle=3,blur=3")
    parser.add_argument("--balance", choices=["auto", "none", "sampler", "loss"], default=None,
                        help="teacher and student balance (recipe value by default; none = before class balancing)")
    parser.add_argument("--select-by", choices=["macro_f1", "balanced_accuracy", "accuracy"], default=None,
                        help="best-epoch criterion (recipe value by default; accuracy = before)")
    parser.add_argument("--teacher-image-size", type=int, default=0,
                        help="px the teacher reads (teacher.image_size; default: the student's)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    try:
        args.view_severity = {k.strip(): int(v) for k, v in (item.split("=") for item in args.view_severity.split(",") if item.strip())}
    except ValueError:
        parser.error(f"--view-severity: expected preset=N pairs like angle=3,blur=3 (got {args.view_severity!r})")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if args.workers is None:
        cuda = resolve_device(args.device).device.type == "cuda"
        args.workers = max(1, ((os.cpu_count() or 2) - 1) // args.jobs) if cuda else 0
    else:
        args.workers = int(args.workers)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        raw = read_rows(args.from_rows) if args.from_rows else bench_dataset(name, args)
        if not raw:
            continue
        rows = summarize(raw, args.methods)
        columns = ["method", "seeds", "accuracy", "macro_f1", "escaped", "agreement", "held_out", "in_recipe", "train_s"]
        recipe = load_recipe(DATASETS[name])
        title = (f"Distillation quality: {name}, {args.image_size or recipe.data.image_size[0]} px, teacher {recipe.teacher.arch} "
                 f"({args.teacher_epochs or recipe.teacher.epochs} ep), student {recipe.student.arch} "
                 f"({args.epochs or recipe.student.epochs} ep), {args.seeds} seeds")
        tuned = [f"teacher views {args.teacher_views}"] if args.teacher_views else []
        tuned += [f"strong view {k} severity {v}" for k, v in args.view_severity.items()]
        tuned += [f"balance {args.balance}"] if args.balance else []
        tuned += [f"best epoch by {args.select_by}"] if args.select_by else []
        tuned += [f"teacher reads {args.teacher_image_size} px"] if args.teacher_image_size else []
        if tuned:
            title += ", " + ", ".join(tuned)
        table = markdown_table(rows, columns)
        print(title)
        print(table)
        if not args.no_record:
            append_results(title, table, notes="test split; accuracy, agreement, held_out and in_recipe in % (mean ± std over "
                                               "seeds, population std: ddof 0); escaped = share of defective test parts called good (- where "
                                               "the line has no good-part class); held_out/in_recipe = mean accuracy over the corruption families "
                                               "the strong view does not / does cover, 5 severities each (held-out "
                                               f"here: {', '.join(held_out_families(name, args))}); train_s = "
                                               "seconds per student, training and its corruption suite")


if __name__ == "__main__":
    main()
