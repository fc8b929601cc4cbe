"""Anomaly mode on the sample and sparse lines, trained on good parts only (issue 26).

For each seed: ``kit run`` of the line's recipe in anomaly mode (``name_defects`` off, so every defect image is
held out), the same run without the cross-view term (``anomaly.cross_view: false``), and the kNN reference
(PatchCore-style: a memory bank of the run's own teacher features on good training parts, 30 000 cells drawn at
random, a part's score the largest distance of one of its cells to the bank). Each is scored on the held-out test
split and on fresh parts (a new seed of the line's generator, through the edge side's own reading), with:

- image AUROC; recall per defect class at the threshold rejecting 1 % of good fresh parts (and 5 %);
- good fresh parts rejected at that threshold under lighting (``darker``, ``brighter``, ``uneven_illumination``)
  and blur (``defocus``, ``motion_blur``) at severity 3, against the clean 1 %;
- the anomaly map's peak within 3 source px of the defect mask, on defective fresh parts;
- time per part end to end (read, preprocess, run, decide) at batch 1 on ONNX Runtime, next to a classification
  student of the same family and input size on the same machine.

Rows are appended to ``benchmarks/anomaly_quality_<line>.jsonl`` as each run ends (a long benchmark keeps what it
measured), then summarised into RESULTS.md.

    python benchmarks/anomaly_quality.py --line sparse --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from deploy.predictor import Predictor  # noqa: E402
from deploy.preprocess import to_tensor  # noqa: E402
from kit.anomaly.metrics import auroc, threshold_at_false_reject  # noqa: E402
from kit.anomaly.stages import load_teacher_trunk  # noqa: E402
from kit.data.index import images_in  # noqa: E402
from kit.run import run_line  # noqa: E402
from kit.sample_line import generate_line  # noqa: E402
from kit.verify.localisation import mask_for  # noqa: E402
from kit.verify.stats import rate  # noqa: E402
from kit.views.corruptions import corrupt_images, severity_table  # noqa: E402

HERE = Path(__file__).resolve().parent
RECIPES = {"sparse": HERE.parent / "recipes" / "sparse_line.yaml", "sample": HERE.parent / "recipes" / "sample_line.yaml"}
LIGHTING, BLUR = ("darker", "brighter", "uneven_illumination"), ("defocus", "motion_blur")
BANK_CELLS = 30_000


def anomaly_recipe(line: str, seed: int, cross_view: bool, out: Path, teacher: str = "local_cnn_m",
                   student: str = "local_cnn_s", contrast_norm: bool = True) -> Path:
    """The line's committed recipe in anomaly mode, as ``kit init-line`` scaffolds it for a line of few defects."""
    recipe = yaml.safe_load(RECIPES[line].read_text())
    recipe["data"]["root"] = str((RECIPES[line].parent / recipe["data"]["root"]).resolve())
    masks = RECIPES[line].parent.parent / "sample_data" / f"{Path(recipe['data']['root']).name}_masks"
    recipe["data"]["masks"] = str(masks.resolve())
    recipe["task"] = "anomaly"
    recipe["line"]["ok_class"] = "ok"
    recipe["line"]["name"] = f"{line}_anomaly_{'cross' if cross_view else 'plain'}_{teacher}_{student}_s{seed}"
    for key in ("distill", "compare", "previous"):
        recipe.pop(key, None)
    recipe.setdefault("verify", {}).pop("threshold", None)
    recipe["teacher"] = {"arch": teacher, "epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 0.001,
                         "weight_decay": 0.0001}
    recipe["student"] = {"arch": student, "epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 0.003,
                         "weight_decay": 0.00001}
    recipe["anomaly"] = {**recipe.get("anomaly", {}), "name_defects": False, "cross_view": cross_view,
                         "contrast_norm": contrast_norm}
    recipe["kpi"] = {"min_image_auroc": 0.95, "max_class_escape_rate": 0.05, "max_false_reject_rate": 0.05}
    recipe["export"] = {"formats": ["onnx"]}  # the CPU deploys ONNX FP32; INT8 fidelity is the parity ladder's
    recipe["seed"] = seed
    path = out / f"{recipe['line']['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def fresh_parts(line: str, folder: Path, ok: int, per_class: int, seed: int) -> tuple[list[Path], list[str], Path]:
    counts = {c: (ok if c == "ok" else per_class) for c in _classes(line)}
    generate_line(line, folder, counts=counts, seed=seed)
    paths = [(p, c) for c in counts for p in images_in(folder / c)]
    return [p for p, _ in paths], [c for _, c in paths], folder.with_name(folder.name + "_masks")


def _classes(line: str) -> list[str]:
    from kit.sample_line import CLASS_COUNTS, SPARSE_CLASS_COUNTS

    return list(SPARSE_CLASS_COUNTS if line == "sparse" else CLASS_COUNTS)


def bundle_scores(bundle: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictor = Predictor.from_bundle(bundle, "onnx")
    spec = predictor.manifest.preprocess
    parts = [predictor.runtime.run_named(to_tensor(images[i:i + 64], spec)) for i in range(0, len(images), 64)]
    return np.concatenate([p["score"] for p in parts]), np.concatenate([p["anomaly_map"] for p in parts])[:, 0]


def knn_scores(teacher_pt: Path, train_images: np.ndarray, images: np.ndarray, spec, seed: int) -> np.ndarray:
    trunk = load_teacher_trunk(teacher_pt)
    with torch.no_grad():
        bank = torch.cat([trunk(torch.from_numpy(to_tensor(train_images[i:i + 64], spec))) for i in range(0, len(train_images), 64)])
        bank = bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
        bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:BANK_CELLS]]
        out = []
        for i in range(0, len(images), 16):
            f = trunk(torch.from_numpy(to_tensor(images[i:i + 16], spec)))
            cells = f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1])
            out += [torch.cdist(c, bank).min(dim=1).values.max().item() for c in cells]
    return np.asarray(out)


def figures(scores: np.ndarray, labels: list[str], classes: list[str]) -> dict[str, Any]:
    labels_a = np.asarray(labels)
    good = scores[labels_a == "ok"]
    out: dict[str, Any] = {"auroc": auroc(scores, labels_a != "ok"), "n_good": int(len(good))}
    for fr in (0.01, 0.05):
        t = threshold_at_false_reject(good, fr)
        out[f"recall_at_{fr:g}"] = {c: rate(int((scores[labels_a == c] >= t).sum()), int((labels_a == c).sum()))
                                    for c in classes if c != "ok"}
        out[f"threshold_at_{fr:g}"] = t
    return out


def corrupted_false_rejects(bundle: Path, good_images: np.ndarray, threshold: float, seed: int) -> dict[str, Any]:
    out = {}
    for family in LIGHTING + BLUR:
        value = severity_table(family)[2]  # severity 3
        scores, _ = bundle_scores(bundle, corrupt_images(good_images, family, value, seed))
        out[family] = rate(int((scores >= threshold).sum()), len(scores))
    return out


def peak_within(bundle: Path, paths: list[Path], labels: list[str], data_root: Path, masks_root: Path,
                tolerance_px: float = 3.0) -> dict[str, Any]:
    from kit.verify.localisation import pointing_hit

    predictor = Predictor.from_bundle(bundle, "onnx")
    picked = [(p, m) for p, c in zip(paths, labels) if c != "ok" for m in [mask_for(p, data_root, masks_root)] if m is not None]
    decisions = predictor.predict_paths([p for p, _ in picked], heatmap=True)
    hits = sum(pointing_hit(tuple(int(v) for v in d.heatmap.peak_xy), m, tolerance_px) for d, (_, m) in zip(decisions, picked))
    return rate(int(hits), len(picked))


def latency(bundle: Path, paths: list[Path], iters: int = 200) -> dict[str, float]:
    predictor = Predictor.from_bundle(bundle, "onnx")
    times = []
    for i in range(iters + 20):
        started = time.perf_counter()
        predictor.predict_paths([paths[i % len(paths)]])
        if i >= 20:
            times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def classifier_latency(spec_size: int, channels: str, paths: list[Path], tmp: Path) -> dict[str, float]:
    """Today's classification student of the same family (local_cnn_s) and input, exported and timed the same way."""
    import timm

    from deploy.manifest import Manifest, sha256_file
    from deploy.preprocess import PreprocessSpec
    from kit.export.onnx_fp32 import export_onnx
    from kit.io import write_json_atomic

    spec = PreprocessSpec(image_size=(spec_size, spec_size), channels=channels, mean=(0.449,), std=(0.226,))
    bundle = tmp / "classifier_bundle"
    bundle.mkdir(exist_ok=True)
    model = timm.create_model("local_cnn_s", num_classes=4, in_chans=1).eval()
    export_onnx(model, bundle / "model.onnx", (1, spec_size, spec_size))
    manifest = Manifest(classes=["crack", "ok", "pit", "scratch"], preprocess=spec,
                        artefacts={"onnx": {"file": "model.onnx", "sha256": sha256_file(bundle / "model.onnx")}},
                        temperature=1.0, operating_threshold=None, ok_class="ok")
    write_json_atomic(bundle / "model.json", manifest.to_dict())
    return latency(bundle, paths)


def one_run(args: argparse.Namespace, seed: int, cross_view: bool, fresh: dict[str, Any], tmp: Path) -> dict[str, Any]:
    recipe = anomaly_recipe(args.line, seed, cross_view, tmp, args.teacher, args.student, not args.no_contrast_norm)
    started = time.perf_counter()
    result = run_line(recipe, out_root=tmp / "runs")
    minutes = (time.perf_counter() - started) / 60
    run_dir = result.run_dir
    record = json.loads((run_dir / "verify" / "anomaly.json").read_text())
    bundle = run_dir / "bundle"
    scores, _ = bundle_scores(bundle, fresh["images"])
    fig = figures(scores, fresh["labels"], fresh["classes"])
    good = fresh["images"][np.asarray(fresh["labels"]) == "ok"]
    name = "student, cross-view" if cross_view else "student, no cross-view"
    name += "" if (args.teacher, args.student) == ("local_cnn_m", "local_cnn_s") else f" ({args.teacher} -> {args.student})"
    name += " without contrast normalisation" if args.no_contrast_norm else ""
    row = {"line": args.line, "seed": seed, "model": name,
           "run_minutes": round(minutes, 1), "test_auroc": record["figures"]["auroc"], "fresh": fig,
           "fresh_corrupted_false_reject_at_1pct": corrupted_false_rejects(bundle, good, fig["threshold_at_0.01"], seed),
           "fresh_peak_within_3px": peak_within(bundle, fresh["paths"], fresh["labels"], fresh["root"], fresh["masks"]),
           "latency_ms": latency(bundle, fresh["paths"]), "certificate": record["certificate"]["message"],
           "verdict_gate_passed": record["gate"]["passed"], "run_dir": str(run_dir)}
    if cross_view:
        spec = Predictor.from_bundle(bundle, "onnx").manifest.preprocess  # the run's own normalisation
        train = _good_train(run_dir, spec)
        knn = knn_scores(run_dir / "teacher.pt", train, fresh["images"], spec, seed)
        started = time.perf_counter()
        knn_scores(run_dir / "teacher.pt", train, fresh["images"][:50], spec, seed)
        row["knn_reference"] = {"fresh": figures(knn, fresh["labels"], fresh["classes"]),
                                "ms_per_part_torch": (time.perf_counter() - started) * 1000 / 50}
    return row


def _good_train(run_dir: Path, spec) -> np.ndarray:
    from kit.rundir import read_split

    paths, labels = read_split(run_dir, "train")
    return np.stack([_prepared(p, spec) for p, label in zip(paths, labels) if label == "ok"])


def _prepared(path: Path, spec) -> np.ndarray:
    from deploy.preprocess import prepare_image, read_image

    return prepare_image(read_image(path, spec.channels), spec)


def hybrid_check(args: argparse.Namespace, fresh: dict[str, Any], tmp: Path, unknown: str) -> dict[str, Any]:
    """The hybrid trained without one defect class (``unknown``): on fresh parts, how the rejected ones are named
    (a known kind by its name, the left-out kind as ``unknown defect``)."""
    recipe_path = anomaly_recipe(args.line, args.seeds[0], True, tmp, args.teacher)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["anomaly"]["name_defects"] = True
    recipe["data"]["classes"] = sorted(c for c in _classes(args.line) if c != unknown)
    recipe["line"]["name"] = f"{args.line}_hybrid_without_{unknown}"
    path = tmp / f"{recipe['line']['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = run_line(path, out_root=tmp / "runs").run_dir
    predictor = Predictor.from_bundle(run_dir / "bundle", "onnx")
    decisions = predictor.predict_paths(fresh["paths"])
    out: dict[str, Any] = {"line": args.line, "model": f"hybrid without {unknown}", "seed": args.seeds[0],
                           "kinds": list(predictor.manifest.anomaly.kinds), "run_dir": str(run_dir), "per_class": {}}
    for c in fresh["classes"]:
        mine = [d for d, label in zip(decisions, fresh["labels"]) if label == c]
        flagged = [d for d in mine if d.action != "accept"]
        names: dict[str, int] = {}
        for d in flagged:
            names[d.label] = names.get(d.label, 0) + 1
        out["per_class"][c] = {"n": len(mine), "not_accepted": len(flagged), "labels_of_not_accepted": names}
    return out


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def _pooled(rates: list[dict[str, Any]]) -> str:
    k, n = sum(r["k"] for r in rates), sum(r["n"] for r in rates)
    r = rate(k, n)
    return f"{k}/{n} = {r['rate']:.3f} ({r['low']:.3f}-{r['high']:.3f})" if n else "-"


def summarize(line: str) -> None:
    """The JSONL rows -> RESULTS.md: one row per model (mean ± sd over seeds; counts pooled over seeds)."""
    from benchmarks.common import append_results, markdown_table

    rows = [json.loads(x) for x in (HERE / f"anomaly_quality_{line}.jsonl").read_text().splitlines() if x.strip()]
    table, extra = [], []
    models: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        models.setdefault(row["model"], []).append(row)
        if "knn_reference" in row:
            models.setdefault("kNN reference (teacher features)", []).append(
                {"model": "kNN", "seed": row["seed"], "fresh": row["knn_reference"]["fresh"],
                 "latency_ms": {"p95_ms": row["knn_reference"]["ms_per_part_torch"]}})
    for name, group in models.items():
        classes = sorted(group[0]["fresh"]["recall_at_0.01"])
        entry = {"model": name, "seeds": ",".join(str(g["seed"]) for g in group),
                 "fresh AUROC": _mean_sd([g["fresh"]["auroc"] for g in group]),
                 "test AUROC": _mean_sd([g.get("test_auroc") for g in group])}
        for c in classes:
            entry[f"{c} caught at 1 % FR"] = _pooled([g["fresh"]["recall_at_0.01"][c] for g in group])
        entry["worst class at 5 % FR"] = min(
            (_pooled([g["fresh"]["recall_at_0.05"][c] for g in group]) for c in classes), key=lambda t: float(t.split("= ")[1][:5]))
        if "fresh_corrupted_false_reject_at_1pct" in group[0]:
            for family in LIGHTING + BLUR:
                entry[f"FR {family} s3"] = _pooled([g["fresh_corrupted_false_reject_at_1pct"][family] for g in group])
            entry["peak within 3 px"] = _pooled([g["fresh_peak_within_3px"] for g in group])
            entry["run min"] = _mean_sd([g["run_minutes"] for g in group])
        entry["p95 ms/part"] = _mean_sd([g["latency_ms"]["p95_ms"] for g in group])
        table.append(entry)
    classifier = rows[0]["classifier_latency_ms"]["p95_ms"] if rows else None
    columns = list(dict.fromkeys(k for e in table for k in e))
    notes = (f"{len(rows)} runs; fresh parts: a new seed of the generator ({rows[0]['fresh']['n_good']} good, "
             f"{sum(r['n'] for r in rows[0]['fresh']['recall_at_0.01'].values())} defective); FR = good fresh parts "
             "rejected at the threshold that rejects 1 % of clean good fresh parts (severity 3); peak within 3 px: "
             "source pixels, defective fresh parts with a mask; p95: end to end at batch 1 on ONNX Runtime (kNN: "
             f"torch, scoring only); the classification student (local_cnn_s, same input) p95 {classifier:.2f} ms on the "
             "same machine" if rows else "")
    append_results(f"Anomaly mode on the {line} line, good parts only (issue 26)", markdown_table(table, columns), notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--line", default="sparse", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["cross", "plain"], choices=["cross", "plain"])
    parser.add_argument("--teacher", default="local_cnn_m", help="the teacher's architecture (it runs on the edge too)")
    parser.add_argument("--student", default="local_cnn_s")
    parser.add_argument("--no-contrast-norm", action="store_true", help="anomaly.contrast_norm: false")
    parser.add_argument("--fresh-ok", type=int, default=500)
    parser.add_argument("--fresh-per-class", type=int, default=100)
    parser.add_argument("--fresh-seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--summarize", action="store_true", help="only write the RESULTS.md table from the JSONL rows")
    parser.add_argument("--hybrid-without", default=None, help="only the hybrid check: train the namer without this class")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.line)
        return
    torch.set_num_threads(2)
    out = HERE / f"anomaly_quality_{args.line}.jsonl"
    with tempfile.TemporaryDirectory(prefix="anomaly-bench-") as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        probe = yaml.safe_load(RECIPES[args.line].read_text())["data"]
        from deploy.preprocess import PreprocessSpec

        size = probe["image_size"]
        spec = PreprocessSpec(image_size=(size, size), channels=probe.get("channels", "gray"), mean=(0.449,), std=(0.226,))
        paths, labels, masks = fresh_parts(args.line, tmp / "fresh", args.fresh_ok, args.fresh_per_class, args.fresh_seed)
        fresh = {"paths": paths, "labels": labels, "classes": sorted(set(labels)), "root": tmp / "fresh", "masks": masks,
                 "images": np.stack([_prepared(p, spec) for p in paths]), "spec": spec}
        if args.hybrid_without:
            row = hybrid_check(args, fresh, tmp, args.hybrid_without)
            with (HERE / f"anomaly_hybrid_{args.line}.json").open("w", encoding="utf-8") as fh:
                json.dump(row, fh, indent=1)
            print(json.dumps(row["per_class"]), flush=True)
            return
        classifier = classifier_latency(size, spec.channels, paths, tmp)
        for seed in args.seeds:
            for variant in args.variants:
                row = one_run(args, seed, variant == "cross", fresh, tmp)
                row["classifier_latency_ms"] = classifier
                row["machine"] = machine()
                with out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("model", "seed", "test_auroc", "run_minutes")}), flush=True)


if __name__ == "__main__":
    main()
