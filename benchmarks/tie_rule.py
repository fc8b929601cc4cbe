"""Which epoch to keep when several share the best validation score (issue 31: on easy lines validation
saturates, e.g. macro-F1 1.000 from epoch 17 to 40, and keeping the first tied epoch kept an under-trained student).

One CRLD student per seed is trained once; every epoch's weights, validation score and validation loss and its
test predictions are recorded, so each rule is scored on the same training trajectory:

- ``first``: the earliest epoch with the best score (the kit's rule before this benchmark);
- ``last``: the latest such epoch;
- ``val_loss``: among them, the lowest validation cross-entropy;
- ``average``: the mean of their weights (BatchNorm statistics averaged too), scored like any other model.

    python benchmarks/tie_rule.py --datasets sample,x-sdd,sparse --seeds 3

Budgets are the distillation benchmark's reduced ones per dataset (``--epochs`` / ``--image-size`` override them);
``--work-dir`` keeps the teacher and one row per finished seed, so a run that was stopped resumes. Appends one table
per dataset to benchmarks/RESULTS.md and its rows to benchmarks/tie_rule_<dataset>_<budget>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kit.train.loop as training_loop  # noqa: E402
from benchmarks.common import append_results, markdown_table  # noqa: E402
from benchmarks.distill_quality import (DATASETS, METHODS, SETTINGS, Bench, _append_row, _teacher, open_bench,  # noqa: E402
                                        read_rows)
from kit.evaluate import classification_metrics, predict_logits  # noqa: E402
from kit.models import load_model  # noqa: E402
from kit.recipe import load_recipe  # noqa: E402
from kit.train import train_student  # noqa: E402
from kit.train.loop import SCORE_TIE  # noqa: E402

RULES = ("first", "last", "val_loss", "average")
# The reduced budgets of the distillation tables in RESULTS.md: (image px, teacher epochs, student epochs).
BUDGETS = {"sample": (48, 20, 12), "x-sdd": (64, 20, 15), "sparse": (64, 20, 15)}


class EpochRecorder:
    """Wraps ``kit.train.loop.validate``: after each epoch's validation, keeps the weights, the validation score and
    loss, and the test predictions of that epoch's model."""

    def __init__(self, bench: Bench, select_by: str) -> None:
        self.bench, self.select_by, self.epochs = bench, select_by, []
        self.test_inputs = bench.splits["test"].tensors(bench.spec)
        self._validate = training_loop.validate

    def __enter__(self) -> "EpochRecorder":
        training_loop.validate = self._record
        return self

    def __exit__(self, *exc: Any) -> None:
        training_loop.validate = self._validate

    def _record(self, model, *args, **kwargs) -> dict[str, float]:
        scores = self._validate(model, *args, **kwargs)
        pred = predict_logits(model, self.test_inputs, self.bench.setup.device).argmax(1).numpy()
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.epochs.append({"score": scores[self.select_by], "loss": scores["loss"], "pred": pred, "state": state})
        return scores


def _averaged(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of floating-point tensors; integer buffers (BatchNorm's batch count) from the last state."""
    return {k: (torch.stack([s[k] for s in states]).mean(0) if states[-1][k].is_floating_point() else states[-1][k])
            for k in states[-1]}


def choose(epochs: list[dict[str, Any]], rule: str) -> list[int]:
    """The 0-based epochs a rule keeps (several for ``average``)."""
    best = max(e["score"] for e in epochs)
    tied = [i for i, e in enumerate(epochs) if e["score"] >= best - SCORE_TIE]
    if rule == "first":
        return tied[:1]
    if rule == "last":
        return tied[-1:]
    if rule == "val_loss":
        lowest = min(epochs[i]["loss"] for i in tied)
        return [max(i for i in tied if epochs[i]["loss"] <= lowest)]
    return tied


def seed_row(bench: Bench, args: argparse.Namespace, seed: int, teacher, teacher_val: np.ndarray) -> dict[str, Any]:
    method, cfg = METHODS["crld"]
    role = f"student-crld-s{seed}"
    context = bench.context(args, seed)
    started = time.perf_counter()
    with EpochRecorder(bench, context.recipe.student.select_by) as recorder:
        train_student(context, method, cfg, teacher, {**bench.meta, "role": role, "method": method}, role=role,
                      teacher_val_pred=teacher_val)
    labels, classes = bench.splits["test"].labels, bench.classes
    model, _ = load_model(bench.work / f"{role}.best.pt")
    row: dict[str, Any] = {"seed": seed, "epochs": len(recorder.epochs), "seconds": time.perf_counter() - started,
                           "best_score": max(e["score"] for e in recorder.epochs)}
    for rule in RULES:
        kept = choose(recorder.epochs, rule)
        if rule == "average":
            model.load_state_dict(_averaged([recorder.epochs[i]["state"] for i in kept]))
            pred = predict_logits(model, recorder.test_inputs, bench.setup.device).argmax(1).numpy()
        else:
            pred = recorder.epochs[kept[0]]["pred"]
        metrics = classification_metrics(labels, pred, classes)
        row[rule] = {"epochs": [i + 1 for i in kept], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    return row


def bench_dataset(name: str, args: argparse.Namespace) -> list[dict[str, Any]] | None:
    size, teacher_epochs, epochs = BUDGETS[name] if args.budget == "reduced" else (0, 0, 0)  # 0: the recipe's own
    args.image_size, args.epochs = args.image_size or size, args.epochs or epochs
    args.teacher_epochs = args.teacher_epochs or teacher_epochs
    bench = open_bench(name, args, "kit-tie")
    if bench is None:
        return None
    teacher, _ = _teacher(bench, args)
    teacher_val = predict_logits(teacher, bench.splits["val"].tensors(bench.spec), bench.setup.device).argmax(1).numpy()
    rows_path = bench.work / "tie_rows.jsonl"
    done = {r["seed"] for r in read_rows(rows_path)}
    for seed in range(args.seeds):
        if seed in done:
            continue
        row = seed_row(bench, args, seed, teacher, teacher_val)
        _append_row(rows_path, row)
        print(f"{name} seed {seed}: best val score {row['best_score']:.3f} on epochs {row['average']['epochs']}; "
              + "; ".join(f"{r} {row[r]['accuracy']:.3f}" for r in RULES) + f" ({row['seconds']:.0f} s)", flush=True)
    return read_rows(rows_path)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rule in RULES:
        acc = np.array([r[rule]["accuracy"] for r in rows]) * 100
        f1 = np.array([r[rule]["macro_f1"] for r in rows])
        gain = acc - np.array([r["first"]["accuracy"] for r in rows]) * 100
        out.append({"rule": rule, "seeds": len(rows), "accuracy": f"{acc.mean():.1f} ± {acc.std():.1f}",
                    "macro_f1": f"{f1.mean():.3f} ± {f1.std():.3f}", "vs_first": f"{gain.mean():+.1f}",
                    "epochs kept": " / ".join(",".join(map(str, r[rule]["epochs"])) for r in rows)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sample", help="comma list of: sample, x-sdd, sparse")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="student epochs (the dataset's reduced budget when 0)")
    parser.add_argument("--teacher-epochs", type=int, default=0, help="teacher epochs (the dataset's reduced budget when 0)")
    parser.add_argument("--image-size", type=int, default=0, help="px (the dataset's reduced budget when 0)")
    parser.add_argument("--budget", choices=["reduced", "recipe"], default="reduced",
                        help="reduced: the distillation tables' budget per dataset; recipe: the recipe's own")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", default=None, help="keep the teacher and rows here; a second call resumes")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    defaults = {"teacher_views": None, "view_severity": {}, "max_corruption_images": 200, "balance": None,
                "select_by": None, "teacher_image_size": 0, "workers": 0}
    for key, value in defaults.items():
        setattr(args, key, value)
    assert set(SETTINGS) <= set(vars(args))
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        image_size, epochs, teacher_epochs = args.image_size, args.epochs, args.teacher_epochs
        rows = bench_dataset(name, args)
        if rows:
            recipe = load_recipe(DATASETS[name])
            title = (f"Tie rule for the best epoch: {name}, {args.image_size or recipe.data.image_size[0]} px, teacher "
                     f"{args.teacher_epochs or recipe.teacher.epochs} ep, CRLD student {args.epochs or recipe.student.epochs} ep, "
                     f"{len(rows)} seeds ({args.budget} budget)")
            table = markdown_table(summarize(rows), ["rule", "seeds", "accuracy", "macro_f1", "vs_first", "epochs kept"])
            print(title)
            print(table)
            if not args.no_record:
                append_results(title, table, notes="test split; accuracy in % and macro-F1, mean ± population std over "
                                                   "seeds; vs_first = mean accuracy gain over the first tied epoch "
                                                   "(points); epochs kept per seed (1-based), the tied ones for average")
                (Path(__file__).resolve().parent / f"tie_rule_{name}_{args.budget}.json").write_text(json.dumps(rows, indent=1))
        args.image_size, args.epochs, args.teacher_epochs = image_size, epochs, teacher_epochs


if __name__ == "__main__":
    main()
