"""Heatmap quality and cost of a finished run (issue 16): do the heatmaps point at the defects, and
what do they add to a decision?

Localisation, on the defective test images that have a mask (``--masks``, default the recipe's
``data.masks``), per class, for the teacher and the student:

- ``cam``: the stride-8 class activation map the kit puts into the bundle (student: the bundle's
  own ``heatmap`` output through ``deploy.Predictor``, ONNX FP32 and INT8; teacher: the same
  projection fitted on the teacher, in torch);
- ``grad-cam-last``: plain Grad-CAM (Selvaraju et al. 2017) on the torch model's last stage;
- ``occlusion``: the fallback for bundles without the in-graph output (student, ONNX FP32).

Pointing game with ``kit.verify.localisation.TOLERANCE_PX`` px tolerance at model input, and the
share of heatmap energy inside the mask (all maps min-max normalised, in image coordinates).

Cost: batch 1, end to end (read, preprocess, infer, decide), p50 on one thread by default: the
decision on a logits-only export of the same student, the decision on the bundle, and the
decision with its heatmap (cam, and occlusion).

    python benchmarks/heatmap_quality.py runs/sample_line/<run-id> [--iters 200] [--threads 1]

Prints both tables and appends them to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import append_results, markdown_table  # noqa: E402
from deploy.bench import bench_end_to_end, bench_heatmap  # noqa: E402
from deploy.heatmap import occlusion_maps, to_image_coordinates  # noqa: E402
from deploy.predictor import Predictor  # noqa: E402
from deploy.preprocess import load_and_preprocess  # noqa: E402
from kit.export.heatmap_head import HeatmapModel, cell_origin, fit_heatmap_head, torch_heatmaps  # noqa: E402
from kit.export.onnx_fp32 import export_onnx  # noqa: E402
from kit.models import load_model  # noqa: E402
from kit.recipe import read_recipe_lock  # noqa: E402
from kit.rundir import LOCK_NAME, checkpoint_path, read_split  # noqa: E402
from kit.scorers import checkpoint_spec  # noqa: E402
from kit.verify.localisation import FIT_IMAGES, mask_for, score_maps  # noqa: E402


def grad_cam_last_stage(model: torch.nn.Module, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, Grad-CAM map at the last feature level) per image: ReLU of the gradient-
    weighted sum of the last stage's channels, for the predicted class."""
    layer = model.feature_info[-1]["module"]
    kept = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: kept.__setitem__("f", out))
    try:
        logits = model(torch.from_numpy(inputs))
    finally:
        handle.remove()
    predicted = logits.argmax(1)
    grads, = torch.autograd.grad(logits[torch.arange(len(inputs)), predicted].sum(), kept["f"])
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * kept["f"]).sum(1))
    return predicted.numpy(), cam.detach().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--masks", type=Path, default=None, help="mask folder (default: the recipe's data.masks)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime CPU threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run_dir, bundle = args.run_dir, args.run_dir / "bundle"
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    masks_root = args.masks or (recipe.resolve_path(recipe.data.masks) if recipe.data.masks else None)
    if masks_root is None:
        sys.exit("no masks: set data.masks in the recipe or pass --masks DIR")
    data_root = recipe.resolve_path(recipe.data.root)
    onnx = Predictor.from_bundle(bundle, "onnx", intra_op_threads=args.threads)
    spec = onnx.manifest.preprocess
    paths, labels = read_split(run_dir, "test")
    scored = [(p, label, m) for p, label in zip(paths, labels) if (m := mask_for(p, data_root, masks_root)) is not None]
    masks, names = [m for _, _, m in scored], [label for _, label, _ in scored]
    inputs = np.stack([load_and_preprocess(p, spec) for p, _, _ in scored])
    print(f"{len(scored)} defective test images with a mask")

    results = []  # (model, method, runtime, scores)

    def add(model: str, method: str, runtime: str, maps: list[np.ndarray]) -> None:
        results.append((model, method, runtime, score_maps(maps, masks, names, spec)))
        print(f"{model:8s} {method:14s} {runtime:10s} pointing {results[-1][3]['all']['pointing']['rate']:.3f}")

    for fmt in ("onnx", "onnx-int8"):
        if fmt in onnx.manifest.artefacts:
            predictor = Predictor.from_bundle(bundle, fmt, intra_op_threads=args.threads)
            add("student", "cam", fmt, [d.heatmap.map for d in predictor.predict_paths([p for p, _, _ in scored], heatmap=True)])
    logits = onnx.logits(inputs)
    occluded = occlusion_maps(onnx.logits, inputs, logits.argmax(1), logits)
    add("student", "occlusion", "onnx", [to_image_coordinates(c, m.shape, spec) for c, m in zip(occluded, masks)])

    train_paths, _ = read_split(run_dir, "train")
    order = np.sort(np.random.default_rng(recipe.seed).permutation(len(train_paths))[:FIT_IMAGES])
    fit = np.stack([load_and_preprocess(train_paths[i], spec) for i in order])
    for role in ("student", "teacher"):
        model, body = load_model(checkpoint_path(run_dir, role))
        model.eval()
        own = checkpoint_spec(body) or spec  # a teacher reading larger images is fitted and scored at its own size
        role_fit, role_inputs = (fit, inputs) if own == spec else (
            np.stack([load_and_preprocess(train_paths[i], own) for i in order]),
            np.stack([load_and_preprocess(p, own) for p, _, _ in scored]))
        if role == "teacher":
            head = fit_heatmap_head(model, role_fit)
            z, cells = torch_heatmaps(HeatmapModel(model, head), role_inputs)
            add(role, "cam", "torch", [to_image_coordinates(c[k], m.shape, own, head.origin_px)
                                       for c, k, m in zip(cells, z.argmax(1), masks)])
        predicted, cams = grad_cam_last_stage(model, role_inputs)
        origin = cell_origin(model, model.feature_info[-1]["module"], role_fit[:16])  # as fair to Grad-CAM as to ours
        add(role, "grad-cam-last", "torch", [to_image_coordinates(c, m.shape, own, origin) for c, m in zip(cams, masks)])

    loc_rows = []
    for model, method, runtime, scores in results:
        row = {"model": model, "method": method, "runtime": runtime}
        for label, entry in [*scores["per_class"].items(), ("all", scores["all"])]:
            row[f"{label} point"] = entry["pointing"]["rate"]
            row[f"{label} energy"] = entry["energy_share"]
        loc_rows.append(row)
    classes = sorted(set(names))
    loc_columns = ["model", "method", "runtime", "all point", "all energy"] + [f"{c} {k}" for c in classes for k in ("point", "energy")]

    # -- cost: batch 1 end to end
    test_paths = [p for p, _, _ in scored]
    cost_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain, _ = load_model(checkpoint_path(run_dir, "student"))
        export_onnx(plain, Path(tmp) / "plain.onnx", (spec.num_channels, *spec.image_size))
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(Path(tmp) / "plain.onnx"), options, providers=["CPUExecutionProvider"])
        plain_infer = lambda x: session.run(None, {"images": x})[0]  # noqa: E731
        r = bench_end_to_end(plain_infer, test_paths, 1, warmup=20, iters=args.iters, spec=spec)
        cost_rows.append({"runtime": "onnx", "what": "decision, logits-only graph (before issue 16)", "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"]})
    for fmt in ("onnx", "onnx-int8"):
        if fmt not in onnx.manifest.artefacts:
            continue
        predictor = Predictor.from_bundle(bundle, fmt, intra_op_threads=args.threads)
        r = bench_heatmap(predictor, test_paths, 1, warmup=20, iters=args.iters)
        cost_rows.append({"runtime": fmt, "what": "decision (bundle)", "p50_ms": r["decision"]["p50_ms"], "p95_ms": r["decision"]["p95_ms"]})
        cost_rows.append({"runtime": fmt, "what": "decision + heatmap (cam, in graph)", "p50_ms": r["with_heatmap"]["p50_ms"],
                          "p95_ms": r["with_heatmap"]["p95_ms"], "added_pct": r["added_p50_pct"]})
    occlusion = Predictor.from_bundle(bundle, "onnx", intra_op_threads=args.threads)
    occlusion.runtime.output_names = ["logits"]  # pretend an older bundle: the fallback path
    r = bench_heatmap(occlusion, test_paths, 1, warmup=3, iters=max(10, args.iters // 10))
    cost_rows.append({"runtime": "onnx", "what": "decision + heatmap (occlusion fallback)", "p50_ms": r["with_heatmap"]["p50_ms"],
                      "p95_ms": r["with_heatmap"]["p95_ms"], "added_pct": r["added_p50_pct"]})

    loc_table, cost_table = markdown_table(loc_rows, loc_columns), markdown_table(cost_rows, ["runtime", "what", "p50_ms", "p95_ms", "added_pct"])
    print(loc_table, "\n\n", cost_table, sep="")
    if not args.no_record:
        arch = onnx.manifest.extra.get("student", {}).get("arch", "student")
        append_results(
            f"Heatmap quality and cost: {recipe.line.name}, {spec.image_size[0]} px, student {arch}, teacher {recipe.teacher.arch}",
            f"Localisation ({len(scored)} defective test images with a mask; point = pointing game, "
            f"energy = share of heatmap energy inside the mask):\n\n{loc_table}\n\n"
            f"Cost (batch 1, end to end, {args.threads} thread(s), ms):\n\n{cost_table}",
            notes="cam = the bundle's in-graph stride-8 CAM (kit.export.heatmap_head); grad-cam-last = Grad-CAM on the torch "
                  "model's last stage; occlusion = the fallback for bundles without the heatmap output")


if __name__ == "__main__":
    main()
