"""Do the heatmaps point at the defects? ``kit verify``'s localisation section.

With ``data.masks`` in the recipe (a folder with the images' relative layout, non-zero = defect),
every defective test image with a mask is scored for the teacher (torch, the same stride-8 CAM the
export puts into the bundle, fitted on the teacher) and for the deployed student (the bundle's
own heatmap through ``deploy.Predictor`` on the deployed runtime), per class with n:

- pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"): the map's
  peak lies in the mask, with a tolerance of ``TOLERANCE_PX`` pixels at model input (converted
  to image pixels), as a rate with its 95 % interval;
- energy share: the share of the map's mass (maps min-max normalised to [0, 1]) inside the mask.

Good parts are not scored; a defective image without a mask file (or with an empty mask) is
counted in ``missing_masks``, never an error. Without ``data.masks`` the section says it was
skipped and why. The heatmap's cost on the deployed runtime is measured either way (the report
states it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from deploy.heatmap import to_image_coordinates
from deploy.preprocess import PreprocessSpec, load_and_preprocess
from kit.verify import stats

TOLERANCE_PX = 3  # at model input: less than half a stride-8 cell
COST_ITERS = 30
FIT_IMAGES = 512  # training images the teacher's projection is fitted on (as export.calibration_images)


def mask_for(image_path: str | Path, data_root: Path, masks_root: Path) -> np.ndarray | None:
    """The bool mask of one image (same relative path under ``masks_root``; the .png of the same stem
    when the image is another format), or None when there is none, it is unreadable or empty."""
    try:
        relative = Path(image_path).resolve().relative_to(data_root.resolve())
    except ValueError:
        return None
    for candidate in (masks_root / relative, (masks_root / relative).with_suffix(".png")):
        if candidate.is_file():
            mask = cv2.imread(str(candidate), cv2.IMREAD_GRAYSCALE)
            return mask > 0 if mask is not None and mask.any() else None
    return None


def tolerance_image_px(spec: PreprocessSpec, image_hw: tuple[int, int]) -> float:
    """``TOLERANCE_PX`` at model input, in the image's pixels (through the ROI and the resize)."""
    height, width = image_hw
    _, _, w, h = spec.roi if spec.roi is not None else (0, 0, width, height)
    return TOLERANCE_PX * max(w / spec.image_size[1], h / spec.image_size[0])


def pointing_hit(peak_xy: tuple[int, int], mask: np.ndarray, tolerance_px: float) -> bool:
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    x, y = peak_xy
    return bool(distance[y, x] <= tolerance_px)


def energy_share(image_map: np.ndarray, mask: np.ndarray) -> float:
    total = float(image_map.sum())
    return float(image_map[mask].sum() / total) if total > 0 else 0.0


def score_maps(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[str],
               spec: PreprocessSpec) -> dict[str, Any]:
    """Per class and overall: pointing-game rate (k, n, interval) and mean energy share, for maps in
    the images' coordinates (min-max normalised) against their masks."""
    rows: dict[str, list[tuple[bool, float]]] = {}
    for image_map, mask, label in zip(maps, masks, labels):
        y, x = np.unravel_index(int(np.argmax(image_map)), image_map.shape)
        hit = pointing_hit((int(x), int(y)), mask, tolerance_image_px(spec, mask.shape))
        rows.setdefault(label, []).append((hit, energy_share(image_map, mask)))

    def summary(pairs: list[tuple[bool, float]]) -> dict[str, Any]:
        hits = sum(h for h, _ in pairs)
        return {"n": len(pairs), "pointing": stats.rate(hits, len(pairs)),
                "energy_share": float(np.mean([e for _, e in pairs])) if pairs else None}

    every = [pair for pairs in rows.values() for pair in pairs]
    return {"per_class": {label: summary(rows[label]) for label in sorted(rows)}, "all": summary(every)}


def localisation_section(run_dir: Path, recipe: Any, paths: Sequence[Path], labels: Sequence[str], classes: list[str],
                         bundle: Path, deployed: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``localisation`` entry of ``kpi.json`` (the module docstring says what is measured)."""
    from deploy.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, deployed)
    out: dict[str, Any] = {"cost": heatmap_cost(predictor, paths)}
    if recipe.data.masks is None:
        return {"status": "skipped", "reason": "data.masks is not set in the recipe", **out}
    masks_root = recipe.resolve_path(recipe.data.masks)
    if not masks_root.is_dir():
        log(f"verify: localisation skipped: data.masks folder {masks_root} not found")
        return {"status": "skipped", "reason": f"data.masks folder not found: {masks_root}", **out}
    ok_class = recipe.line.ok_class or ("ok" if "ok" in classes else None)
    data_root = recipe.resolve_path(recipe.data.root)
    scored, missing = [], {}
    for path, label in zip(paths, labels):
        if label == ok_class:
            continue
        mask = mask_for(path, data_root, masks_root)
        if mask is None:
            missing[label] = missing.get(label, 0) + 1
        else:
            scored.append((Path(path), label, mask))
    out.update(masks=str(masks_root), tolerance_px_at_input=TOLERANCE_PX, ok_class=ok_class,
               missing_masks={"total": sum(missing.values()), "per_class": missing}, scored_images=len(scored))
    if not scored:
        return {"status": "skipped", "reason": f"no defective test image has a mask in {masks_root}", **out}
    spec = predictor.manifest.preprocess
    masks, names = [m for _, _, m in scored], [label for _, label, _ in scored]
    decisions = predictor.predict_paths([p for p, _, _ in scored], heatmap=True)
    student_maps = [d.heatmap.map for d in decisions]
    if any(m.shape != mask.shape for m, mask in zip(student_maps, masks)):
        return {"status": "skipped", "reason": "a mask's size differs from its image's; masks must match the images pixel for pixel", **out}
    out["models"] = {"student": {"runtime": deployed, "method": decisions[0].heatmap.method,
                                 **score_maps(student_maps, masks, names, spec)},
                     "teacher": teacher_localisation(run_dir, recipe, scored, spec)}
    s = out["models"]["student"]["all"]
    log(f"verify: localisation on {len(scored)} defective test images ({sum(missing.values())} without a mask): "
        f"student pointing {s['pointing']['rate']:.3f}, energy share {s['energy_share']:.3f}")
    return {"status": "measured", **out}


def teacher_localisation(run_dir: Path, recipe: Any, scored: list[tuple[Path, str, np.ndarray]],
                         spec: PreprocessSpec) -> dict[str, Any]:
    """The teacher's stride-8 CAM, fitted on the training split as the export fits the student's."""
    from kit.export.heatmap_head import HeatmapModel, fit_heatmap_head, torch_heatmaps
    from kit.models import load_model
    from kit.rundir import checkpoint_path, read_split

    from kit.scorers import checkpoint_spec

    teacher, body = load_model(checkpoint_path(run_dir, "teacher"))
    spec = checkpoint_spec(body) or spec  # a teacher reading larger images maps from its own input
    train_paths, _ = read_split(run_dir, "train")
    order = np.sort(np.random.default_rng(recipe.seed).permutation(len(train_paths))[:FIT_IMAGES])
    fit = np.stack([load_and_preprocess(train_paths[i], spec) for i in order])
    head = fit_heatmap_head(teacher, fit)
    if head is None:
        return {"status": "skipped", "reason": "the teacher names no feature levels (an ensemble?)"}
    inputs = np.stack([load_and_preprocess(p, spec) for p, _, _ in scored])
    logits, cells = torch_heatmaps(HeatmapModel(teacher, head), inputs)
    predicted = logits.argmax(1)
    maps = [to_image_coordinates(cells[i, predicted[i]], mask.shape, spec, head.origin_px) for i, (_, _, mask) in enumerate(scored)]
    return {"runtime": "torch (cpu)", "method": "cam", "layer": head.layer, "probe_agreement": head.probe_agreement,
            **score_maps(maps, [m for _, _, m in scored], [label for _, label, _ in scored], spec)}


def heatmap_cost(predictor: Any, paths: Sequence[Path]) -> dict[str, Any]:
    """Batch 1, end to end, on the deployed runtime: the decision alone and with its heatmap."""
    from deploy.bench import bench_heatmap

    result = bench_heatmap(predictor, list(paths)[:COST_ITERS], batch=1, warmup=3, iters=COST_ITERS)
    return {"runtime": predictor.runtime.name, "method": result["method"], "batch": 1,
            "decision_p50_ms": result["decision"]["p50_ms"], "with_heatmap_p50_ms": result["with_heatmap"]["p50_ms"],
            "added_p50_ms": result["added_p50_ms"], "added_p50_pct": result["added_p50_pct"]}
