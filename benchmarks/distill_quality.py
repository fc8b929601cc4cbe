"""Distillation quality: the same student trained with none, kd and crld, plus CRLD ablations
(within-view terms only, cross-view terms only, no confidence masks), from one teacher, with the
same epochs, over several seeds. Reports mean and spread of clean accuracy, macro-F1, agreement
with the teacher, and corruption accuracy on in-recipe and held-out families (kit.verify's suite).

    python benchmarks/distill_quality.py                                  # sample line, small budget
    python benchmarks/distill_quality.py --datasets x-sdd --seeds 3 --epochs 20 --image-size 64
    python benchmarks/distill_quality.py --datasets sample,x-sdd --epochs 40 --image-size 96   # the recipes' budget

x-sdd is read through recipes/x-sdd.yaml (../shared/datasets/x-sdd); it is skipped with a message
where absent. Prints one table per dataset and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from benchmarks.common import append_results, markdown_table  # noqa: E402
from kit.data import decode_line, index_line, preprocess_spec  # noqa: E402
from kit.errors import DataError  # noqa: E402
from kit.evaluate import agreement, classification_metrics, predict_logits  # noqa: E402
from kit.models import load_model  # noqa: E402
from kit.recipe import Recipe, load_recipe  # noqa: E402
from kit.recipe.load import recipe_to_dict  # noqa: E402
from kit.recipe.schema import CRLDConfig, KDConfig, NoDistillConfig  # noqa: E402
from kit.train import StageContext, resolve_device, train_student, train_teacher  # noqa: E402
from kit.verify.corruptions import coverage, list_corruptions  # noqa: E402
from kit.verify.robustness import run_suite  # noqa: E402
from kit.verify.scorers import model_scorer  # noqa: E402
from kit.views import build_view  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"sample": REPO / "recipes" / "sample_line.yaml", "x-sdd": REPO / "recipes" / "x-sdd.yaml"}
METHODS: dict[str, tuple[str, Any]] = {
    "none": ("none", NoDistillConfig()),
    "kd": ("kd", KDConfig()),
    "crld": ("crld", CRLDConfig()),
    "crld-within-only": ("crld", CRLDConfig(cross_weight=0.0)),
    "crld-cross-only": ("crld", CRLDConfig(within_weight=0.0)),
    "crld-no-masks": ("crld", CRLDConfig(tau_weak=0.0, tau_strong=0.0)),
}


def _scaled(recipe: Recipe, image_size: int | None, epochs: int | None, teacher_epochs: int | None, seed: int) -> Recipe:
    d = recipe_to_dict(recipe)
    if image_size:
        d["data"]["image_size"] = [image_size, image_size]
    if epochs:
        d["student"]["epochs"] = epochs
    if teacher_epochs:
        d["teacher"]["epochs"] = teacher_epochs
    d["data"]["num_workers"] = 0
    d["seed"] = seed
    out = Recipe.model_validate(d)
    out._base_dir = recipe._base_dir
    return out


def bench_dataset(name: str, args: argparse.Namespace) -> list[dict[str, Any]] | None:
    try:
        base = load_recipe(DATASETS[name])
        recipe = _scaled(base, args.image_size, args.epochs, args.teacher_epochs, seed=0)
        index = index_line(recipe)
    except DataError as exc:
        print(f"{name}: skipped ({exc})")
        return None
    spec = preprocess_spec(recipe)
    splits, _ = decode_line(index, recipe, spec)
    setup = resolve_device(args.device)
    pipelines = {v: build_view(getattr(recipe.views, v), f"views.{v}", recipe.data.image_size, spec.num_channels)
                 for v in ("weak", "strong")}
    families = list_corruptions()
    cover = coverage(pipelines["strong"], families)
    test_x = splits["test"].tensors(spec)
    test_y = splits["test"].labels
    cap = np.sort(np.random.default_rng(0).permutation(len(test_y))[: args.max_corruption_images])  # a class-balanced-ish subset
    meta = {"classes": index.classes, "preprocess": spec.to_dict(), "recipe_hash": "benchmark"}
    work = Path(tempfile.mkdtemp(prefix=f"kit-distill-{name}-"))

    started = time.perf_counter()
    ctx = StageContext(recipe, splits, index.classes, spec, pipelines, setup, work, None, False)
    train_teacher(ctx, {**meta, "role": "teacher"})
    teacher, _ = load_model(work / "teacher.best.pt")
    teacher.to(setup.device).eval()
    teacher_pred = predict_logits(teacher, test_x, setup.device).argmax(1).numpy()
    teacher_val = predict_logits(teacher, splits["val"].tensors(spec), setup.device).argmax(1).numpy()
    teacher_suite = run_suite([model_scorer("teacher", teacher, setup.device, work / "teacher.best.pt")], splits["test"].images[cap], test_y[cap], spec,
                              families, cover, run_seed=0)["summary"]["teacher"]
    print(f"{name}: teacher {recipe.teacher.arch} trained in {time.perf_counter() - started:.0f} s; "
          f"test accuracy {np.mean(teacher_pred == test_y):.3f}")

    raw: list[dict[str, Any]] = [{"method": "teacher", "seed": 0, "accuracy": float(np.mean(teacher_pred == test_y)),
                                  "macro_f1": classification_metrics(test_y, teacher_pred, index.classes)["macro_f1"],
                                  "agreement": 1.0, "in_recipe": teacher_suite["in_recipe"]["mean_accuracy"],
                                  "held_out": teacher_suite["held_out"]["mean_accuracy"], "seconds": 0.0}]
    for seed in range(args.seeds):
        seeded = _scaled(base, args.image_size, args.epochs, args.teacher_epochs, seed=seed)
        for label in args.methods:
            method, cfg = METHODS[label]
            role = f"student-{label}-s{seed}"
            t0 = time.perf_counter()
            ctx = StageContext(seeded, splits, index.classes, spec, pipelines, setup, work, None, False)
            train_student(ctx, method, cfg, teacher, {**meta, "role": role, "method": method}, role=role, teacher_val_pred=teacher_val)
            student, _ = load_model(work / f"{role}.best.pt")
            student.to(setup.device)
            pred = predict_logits(student, test_x, setup.device).argmax(1).numpy()
            suite = run_suite([model_scorer("teacher", teacher, setup.device, work / "teacher.best.pt"), model_scorer("student", student, setup.device, work / f"{role}.best.pt")],
                              splits["test"].images[cap], test_y[cap], spec, families, cover, run_seed=0)["summary"]["student"]
            row = {"method": label, "seed": seed, "accuracy": float(np.mean(pred == test_y)),
                   "macro_f1": classification_metrics(test_y, pred, index.classes)["macro_f1"],
                   "agreement": agreement(pred, teacher_pred), "in_recipe": suite["in_recipe"]["mean_accuracy"],
                   "held_out": suite["held_out"]["mean_accuracy"], "seconds": time.perf_counter() - t0}
            raw.append(row)
            print(f"{name} seed {seed} {label:<17} acc {row['accuracy']:.3f} held-out {row['held_out']:.3f} "
                  f"in-recipe {row['in_recipe']:.3f} ({row['seconds']:.0f} s)")
    if not args.no_record:
        (REPO / "benchmarks" / f"distill_quality_{name}.json").write_text(json.dumps(raw, indent=1))
    return raw


def summarize(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in dict.fromkeys(r["method"] for r in raw):
        rows = [r for r in raw if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "seeds": len(rows)}
        for key in ("accuracy", "macro_f1", "agreement", "held_out", "in_recipe"):
            v = np.array([r[key] for r in rows], float) * (100 if key != "macro_f1" else 1)
            entry[key] = f"{v.mean():.1f} ± {v.std():.1f}" if key != "macro_f1" else f"{v.mean():.3f} ± {v.std():.3f}"
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sample", help="comma list of: sample, x-sdd")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="student epochs (recipe value when 0)")
    parser.add_argument("--teacher-epochs", type=int, default=20, help="teacher epochs (recipe value when 0)")
    parser.add_argument("--image-size", type=int, default=48, help="px (recipe value when 0)")
    parser.add_argument("--max-corruption-images", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        raw = bench_dataset(name, args)
        if raw is None:
            continue
        rows = summarize(raw)
        columns = ["method", "seeds", "accuracy", "macro_f1", "agreement", "held_out", "in_recipe"]
        recipe = load_recipe(DATASETS[name])
        title = (f"Distillation quality: {name}, {args.image_size or recipe.data.image_size[0]} px, teacher {recipe.teacher.arch} "
                 f"({args.teacher_epochs or recipe.teacher.epochs} ep), student {recipe.student.arch} "
                 f"({args.epochs or recipe.student.epochs} ep), {args.seeds} seeds")
        table = markdown_table(rows, columns)
        print(title)
        print(table)
        if not args.no_record:
            append_results(title, table, notes="test split; accuracy, agreement, held_out and in_recipe in % (mean ± std over "
                                               "seeds); held_out/in_recipe = mean accuracy over the corruption families "
                                               "the strong view does not / does cover, 5 severities each")


if __name__ == "__main__":
    main()
