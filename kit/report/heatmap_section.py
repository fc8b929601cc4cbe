"""The report's heatmap section: where the deployed model looked, for its most confident mistakes
and one correct part per class, with how often its heatmaps point at the defect and what they cost.

The overlays are drawn by ``deploy.overlay`` from the bundle's own heatmaps through
``deploy.Predictor`` (the same pictures ``deploy predict --heatmaps`` writes on the line); the
localisation table and the cost come from ``kpi.json`` (``kit.verify.localisation``).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

from deploy.errors import DeployError
from deploy.preprocess import read_image
from kit.rundir import BUNDLE_DIR, read_split
from kit.verify.record import KpiRecord

MISTAKES = 6  # most confident mistakes shown
OVERLAY_PX = 192  # overlay side in the report (the PNGs are inline: ~50 kB each at this size)


def localisation_context(run_dir: Path, kpi: KpiRecord, recipe: Any, t: Callable[..., str]) -> dict[str, Any] | None:
    """Everything ``_localisation.html.j2`` shows; None when the bundle cannot be run here at all."""
    section = kpi.localisation or {}
    examples = _examples(run_dir, kpi.deployed_runtime, recipe, t)
    if examples is None and not section:
        return None
    return {"status": section.get("status"), "reason": section.get("reason"),
            "table": _table(section), "cost": _cost(section.get("cost"), t),
            "missing": (section.get("missing_masks") or {}).get("total", 0),
            "tolerance_px": section.get("tolerance_px_at_input"),
            "mistakes": (examples or {}).get("mistakes", []), "correct": (examples or {}).get("correct", [])}


def _table(section: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per defect class (then all), teacher and deployed student side by side."""
    models = section.get("models") or {}
    student, teacher = models.get("student") or {}, models.get("teacher") or {}
    classes = sorted(set(student.get("per_class", {})) | set(teacher.get("per_class", {})))
    rows = []
    for name, key in [(c, c) for c in classes] + [("all", None)]:
        def cell(model: dict[str, Any]) -> dict[str, Any] | None:
            entry = model.get("all") if key is None else model.get("per_class", {}).get(key)
            return entry if entry and entry.get("n") else None

        rows.append({"label": name, "is_total": key is None, "student": cell(student), "teacher": cell(teacher)})
    return rows if (student.get("per_class") or teacher.get("per_class")) else []


def _cost(cost: dict[str, Any] | None, t: Callable[..., str]) -> str | None:
    if not cost:
        return None
    key = "loc_cost_cam" if cost["method"] == "cam" else "loc_cost_occlusion"
    return t(key, runtime=cost["runtime"], decision=f"{cost['decision_p50_ms']:.2f}",
             explained=f"{cost['with_heatmap_p50_ms']:.2f}", added=f"{cost['added_p50_ms']:+.2f}",  # a signed difference:
             pct=f"{cost['added_p50_pct']:+.0f}" if cost.get("added_p50_pct") is not None else "?")  # timing noise can be < 0


def _examples(run_dir: Path, deployed: str, recipe: Any, t: Callable[..., str]) -> dict[str, Any] | None:
    """Overlays of the most confident mistakes and of the most confident correct part per class."""
    from deploy.overlay import encode_overlay, overlay_caption, render_overlay
    from deploy.predictor import Predictor
    from kit.verify.localisation import mask_for

    bundle = run_dir / BUNDLE_DIR
    predictor = None
    for runtime in dict.fromkeys([deployed or "onnx", "onnx"]):
        try:
            predictor = Predictor.from_bundle(bundle, runtime)
            break
        except DeployError:
            continue
    if predictor is None:
        return None
    paths, labels = read_split(run_dir, "test")
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return None
    label_of = dict(zip(map(str, paths), labels))
    channels = predictor.manifest.preprocess.channels
    masks_root = recipe.resolve_path(recipe.data.masks) if recipe.data.masks else None
    data_root = recipe.resolve_path(recipe.data.root)
    decisions = predictor.predict_paths(paths)
    wrong = sorted((d for d in decisions if d.label != label_of[d.path]), key=lambda d: -d.confidence)[:MISTAKES]
    best: dict[str, Any] = {}
    for d in decisions:
        truth = label_of[d.path]
        if d.label == truth and (truth not in best or d.confidence > best[truth].confidence):
            best[truth] = d
    chosen = wrong + [best[c] for c in sorted(best)]
    explained = predictor.predict_paths([d.path for d in chosen], heatmap=True) if chosen else []

    def figure(d: Any) -> dict[str, Any]:
        image = read_image(d.path, channels)
        mask = mask_for(d.path, data_root, masks_root) if masks_root is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            mask = None
        png = encode_overlay(render_overlay(image, d.heatmap, overlay_caption(d.label, d.confidence), mask, channels, OVERLAY_PX))
        return {"uri": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "file": Path(d.path).name,
                "truth": label_of[d.path], "predicted": d.label, "confidence": d.confidence, "action": d.action,
                "peak": d.heatmap.peak_xy, "method": d.heatmap.method}

    figures = [figure(d) for d in explained]
    return {"mistakes": figures[: len(wrong)], "correct": figures[len(wrong) :]}
