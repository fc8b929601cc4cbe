"""The next model against the one on the line: ``previous: RUN_DIR`` in the recipe.

``kit verify`` scores the previous run's bundle (its own preprocessing, its own runtime, through
``deploy.Predictor``) on *this* run's test split, next to the new deployed model, and reports per
class the recall of each and the difference new minus old with a paired bootstrap interval
(``kit.verify.stats.paired_bootstrap_diff``: the same images resampled for both, so the interval
reflects only the images on which the two disagree).

A class is *worse* when the whole interval lies below zero. With ``kpi.no_regression`` (on by
default when ``previous`` is set) each class is a gate check ``kpi.no_regression[<class>]``: the
upper end of its interval must be at least 0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.manifest import MANIFEST_NAME
from deploy.predictor import Predictor
from kit.errors import RunDirError
from kit.recipe.schema import Recipe
from kit.rundir import BUNDLE_DIR, CERTIFY_SPLIT, load_split, read_split_rows
from kit.verdict import check, verdict
from kit.verify import stats

CONFIDENCE = 0.95


def previous_bundle(previous: str | Path) -> Path:
    """The bundle of a previous run (``RUN_DIR/bundle``), or a bundle folder given directly."""
    path = Path(previous)
    for candidate in (path / BUNDLE_DIR, path):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise RunDirError(f"previous: {path} has no bundle ({BUNDLE_DIR}/{MANIFEST_NAME}); point it at a run directory "
                      "that finished `kit export`")


def _verdict(d: dict[str, Any]) -> str:
    if d["diff"] is None:
        return "same"
    if d["high"] < -1e-12:
        return "worse"
    if d["low"] > 1e-12:
        return "better"
    return "same"


def compare_models(old_pred: np.ndarray, new_pred: np.ndarray, labels: np.ndarray, classes: list[str],
                   confidence: float = CONFIDENCE, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per class recall old vs new (paired bootstrap interval of new minus old), and overall accuracy."""
    old_ok, new_ok = old_pred == labels, new_pred == labels
    rows = []
    for i, name in enumerate(classes):
        sel = labels == i
        d = stats.paired_bootstrap_diff(new_ok[sel], old_ok[sel], n_boot=n_boot, confidence=confidence, seed=seed)
        rows.append({"class": name, "n": int(sel.sum()), "old": float(old_ok[sel].mean()) if sel.any() else None,
                     "new": float(new_ok[sel].mean()) if sel.any() else None, "old_correct": int(old_ok[sel].sum()),
                     "new_correct": int(new_ok[sel].sum()), "diff": d["diff"], "low": d["low"], "high": d["high"]})
        rows[-1]["verdict"] = _verdict(rows[-1])
    d = stats.paired_bootstrap_diff(new_ok, old_ok, n_boot=n_boot, confidence=confidence, seed=seed)
    overall = {"n": int(len(labels)), "old": float(old_ok.mean()) if len(labels) else None,
               "new": float(new_ok.mean()) if len(labels) else None, "diff": d["diff"], "low": d["low"], "high": d["high"]}
    overall["verdict"] = _verdict(overall)
    return {"confidence": confidence, "n_boot": n_boot, "per_class": rows, "overall": overall}


def previous_section(recipe: Recipe, run_dir: Path, classes: list[str], new_logits: np.ndarray, labels: np.ndarray,
                     log: Callable[[str], None] = print, threads: int = 0) -> dict[str, Any] | None:
    """``kpi.json``'s ``previous`` block; None when the recipe names no previous run."""
    if not recipe.previous:
        return None
    source = recipe.resolve_path(recipe.previous)
    bundle = previous_bundle(source)
    predictor = Predictor.from_bundle(bundle, "auto", intra_op_threads=threads or None)
    if sorted(predictor.classes) != sorted(classes):
        raise RunDirError(f"previous: {bundle} decides {', '.join(predictor.classes)}, this run {', '.join(classes)}; "
                          "old and new can only be compared on the same classes")
    split = load_split(run_dir, "test", predictor.manifest.preprocess, classes)  # the previous bundle's own preprocessing
    # Test images the previous model trained (or selected its epoch) on would flatter it: left out of the comparison.
    seen = _trained_on(source)
    fair = np.array([_sha256(Path(p)) not in seen for p in split.paths], dtype=bool)
    old_logits = predictor.logits(split.inputs(predictor.manifest.preprocess)[fair])
    remap = np.array([classes.index(c) for c in predictor.classes])
    out = compare_models(remap[old_logits.argmax(1)], new_logits.argmax(1)[fair], labels[fair], classes)
    out["excluded_seen_by_previous"] = int((~fair).sum())
    gated = recipe.kpi.no_regression if recipe.kpi.no_regression is not None else True
    out.update(run_dir=str(source), bundle=str(bundle), runtime=predictor.runtime.name, gated=bool(gated),
               model_id=predictor.manifest.extra.get("recipe_hash"))
    worse = [r["class"] for r in out["per_class"] if r["verdict"] == "worse"]
    acc = {k: "-" if out["overall"][k] is None else f"{out['overall'][k]:.3f}" for k in ("old", "new")}
    log(f"verify: previous model {source}: accuracy {acc['old']} -> {acc['new']} on "
        f"{int(fair.sum())} test images ({int((~fair).sum())} left out: the previous model trained on them); "
        f"worse: {', '.join(worse) or 'none'}")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trained_on(previous_run: Path) -> set[str]:
    """Content hashes of the previous run's training and validation images (by content: a copied or moved data
    folder is still the same images); empty without its split.csv."""
    try:
        rows = read_split_rows(previous_run)
    except RunDirError:
        return set()
    return {_sha256(Path(p)) for p, _, split in rows if split in ("train", "val", CERTIFY_SPLIT) and Path(p).is_file()}


def regression_checks(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One gate check per class: the upper end of new minus old recall must be at least 0 (when gated)."""
    if not previous:
        return []
    limit = 0.0 if previous.get("gated") else None
    return [check(f"kpi.no_regression[{r['class']}]", f"recall_change[{r['class']}]",
                  f"{r['class']}: recall new minus previous model, upper end of the {previous['confidence']:.0%} paired interval",
                  r["high"], limit, ">=", point=r["diff"], bound=r["high"], gated_on="bound")
            for r in previous["per_class"] if r["n"]]


def with_regression_checks(gate_verdict: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The KPI gate's verdict with the previous-model checks added (the same verdict when there are none)."""
    extra = regression_checks(previous)
    if not extra:
        return gate_verdict
    kept = [c for c in gate_verdict["checks"] if not c["target"].startswith("kpi.no_regression[")]
    return {**gate_verdict, **verdict(kept + extra)}
