"""``kit verify`` in anomaly mode: the certified operating point and the figures, on the deployed artefact.

- **Certification.** On the good validation images alone: the reject threshold is the lowest score whose false
  rejects hold ``anomaly.max_false_reject_rate`` at 95 % confidence (one-sided Clopper-Pearson, as for
  classifiers); below it, a review band holding ``anomaly.review_fraction`` of good validation parts. Escapes
  (defective parts accepted) are certified per defect class only where the class has validation images;
  otherwise they are *unmeasured*, with the number of defective parts needed, which the shadow period supplies.
- **Figures on test.** Image AUROC and AUPR (overall and per class), per class caught (rejected or reviewed) and
  escaped at the operating point with intervals, good parts' false rejects clean and under every corruption
  family x severity (does a lighting change make good parts look defective?), where the map points against the
  defect masks (pointing game, AUPRO), latency end to end.
- **Gate.** The recipe's ``kpi:`` targets that apply to this mode; an escape target on a class with no test
  image is unmeasured, and unmeasured never passes.

Writes ``verify/anomaly.json``, ``verify/anomaly_scores.csv`` (every validation and test image's score and action,
so each figure can be recomputed) and the thresholds into the bundle manifest (``certified`` says whether they are).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.manifest import MANIFEST_NAME, read_manifest
from deploy.predictor import Predictor, auto_runtime
from kit.anomaly.export import anomaly_rule, predictor_outputs
from kit.anomaly.metrics import aupr, auroc, pro_auc, threshold_at_false_reject
from kit.anomaly.record import DEFAULT_ESCAPE_LIMIT, AnomalyRecord, write_anomaly_record
from kit.anomaly.verdict import anomaly_release
from kit.io import read_json, write_json_atomic
from kit.recipe import read_recipe_lock, recipe_hash
from kit.rundir import BUNDLE_DIR, LOCK_NAME, fingerprint_run, load_split, mark_report_stale, mark_stage, require_stages
from kit.verdict import Release, check, verdict
from kit.verify import stats
from kit.verify.localisation import mask_for, pointing_hit, tolerance_image_px
from kit.views.corruptions import corrupt_images, list_corruptions, severity_table



def certify(good_val: np.ndarray, target: float, review_fraction: float, confidence: float) -> dict[str, Any]:
    """The thresholds from good validation scores: reject at the lowest score whose false-reject bound holds the
    target, review the next ``review_fraction`` of good parts below it. Not certifiable (too few good images even
    with no false reject): every part goes to a person."""
    g = np.sort(np.asarray(good_val, np.float64))[::-1]
    n = len(g)
    allowed = -1
    for k in range(n + 1):
        if stats.clopper_pearson_upper(k, n, confidence) <= target:
            allowed = k
        else:
            break
    if allowed < 0 or n == 0:
        needed = stats.zero_failure_sample_size(target, confidence)
        return {"certified": False, "n_good": n, "target": target, "confidence": confidence,
                "reject_at": None, "accept_below": 0.0, "needed_good_images": needed,
                "message": f"false rejects <= {target:.2%} at {confidence:.0%} confidence need at least {needed} good "
                           f"validation images with no false reject; this split has {n}: every part goes to a person"}
    reject_at = float(np.nextafter(g[allowed], np.inf)) if allowed < n else float(g[-1])
    band = int(round(review_fraction * n))
    below = allowed + band
    accept_below = reject_at if band == 0 else float(g[min(below, n) - 1]) if below <= n else float(g[-1])
    accept_below = min(accept_below, reject_at)
    upper = stats.clopper_pearson_upper(allowed, n, confidence)
    return {"certified": True, "n_good": n, "target": target, "confidence": confidence, "false_rejects_val": allowed,
            "false_reject_upper": upper, "reject_at": reject_at, "accept_below": accept_below,
            "review_good_val": int(((g >= accept_below) & (g < reject_at)).sum()),
            "message": f"certified: {allowed} of {n} good validation parts rejected, false rejects <= {upper:.2%} at "
                       f"{confidence:.0%} confidence (target {target:.2%})"}


def actions(scores: np.ndarray, accept_below: float, reject_at: float | None) -> np.ndarray:
    """accept / review / reject per part, as ``deploy.decision.AnomalyRule`` decides (the manifest's rule)."""
    top = np.inf if reject_at is None else reject_at
    return np.where(scores >= top, "reject", np.where(scores >= accept_below, "review", "accept"))


def operating_figures(scores: np.ndarray, labels: np.ndarray, classes: list[str], ok: int, accept_below: float,
                      reject_at: float | None) -> dict[str, Any]:
    """At the operating point: good parts rejected / reviewed, and per defect class caught and escaped."""
    act = actions(scores, accept_below, reject_at)
    good = labels == ok
    out: dict[str, Any] = {
        "n": int(len(labels)), "automation_rate": stats.rate(int((act != "review").sum()), len(act)),
        "false_reject_rate": stats.rate(int((act[good] == "reject").sum()), int(good.sum())),
        "good_review_rate": stats.rate(int((act[good] == "review").sum()), int(good.sum())),
        "escape_rate": stats.rate(int((act[~good] == "accept").sum()), int((~good).sum())),
        "per_class": {}}
    for i, name in enumerate(classes):
        if i == ok:
            continue
        own = act[labels == i]
        out["per_class"][name] = {"n": int(len(own)), "caught": stats.rate(int((own != "accept").sum()), len(own)),
                                  "rejected": stats.rate(int((own == "reject").sum()), len(own)),
                                  "escape": stats.rate(int((own == "accept").sum()), len(own))}
    return out


def escape_certificates(scores: np.ndarray, labels: np.ndarray, classes: list[str], ok: int, accept_below: float,
                        limits: dict[str, float], confidence: float) -> dict[str, Any]:
    """Per defect class on validation: the escape bound where the class has images, else unmeasured with the
    number of defective parts that would certify its limit (none escaping)."""
    out = {}
    for i, name in enumerate(classes):
        if i == ok:
            continue
        limit = limits.get(name, DEFAULT_ESCAPE_LIMIT)
        own = scores[labels == i]
        if len(own) == 0:
            out[name] = {"status": "unmeasured", "limit": limit,
                         "needed_defective_parts": stats.zero_failure_sample_size(limit, confidence)}
            continue
        k = int((own < accept_below).sum())
        upper = stats.clopper_pearson_upper(k, len(own), confidence)
        out[name] = {"status": "certified" if upper <= limit else "not certified", "k": k, "n": int(len(own)),
                     "upper": upper, "limit": limit,
                     "needed_defective_parts": stats.sample_size_with_failures(k, limit, confidence)}
    return out


def robustness(predictor: Predictor, images: np.ndarray, clean: np.ndarray, accept_below: float,
               reject_at: float | None, families: list[str], overrides: dict[str, list[float]], seed: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Good test parts (``clean``: their scores as they are) under every corruption family x severity: false
    rejects and score shift against clean."""
    from deploy.preprocess import to_tensor

    spec = predictor.manifest.preprocess
    rows = []
    for family in families:
        for severity, value in enumerate(severity_table(family, overrides), start=1):
            scores = predictor_outputs(predictor, to_tensor(corrupt_images(images, family, value, seed), spec))[0]
            act = actions(scores, accept_below, reject_at)
            rows.append({"family": family, "severity": severity, "value": value,
                         "false_reject": stats.rate(int((act == "reject").sum()), len(act)),
                         "review": stats.rate(int((act == "review").sum()), len(act)),
                         "median_score": float(np.median(scores))})
    clean_act = actions(clean, accept_below, reject_at)
    log(f"verify: good parts under {len(families)} corruption families x 5 severities on {len(images)} good test images")
    return {"n_good": int(len(images)), "clean_false_reject": stats.rate(int((clean_act == "reject").sum()), len(clean_act)),
            "clean_median_score": float(np.median(clean)) if len(clean) else None, "rows": rows}


def localisation(recipe: Any, predictor: Predictor, test, ok: int, good_maps: np.ndarray) -> dict[str, Any]:
    """Peak of the anomaly map within ``TOLERANCE_PX`` (at the model's input) of the defect mask, and AUPRO at the
    model's input, on defective test images with a mask."""
    if recipe.data.masks is None:
        return {"status": "skipped", "reason": "data.masks is not set in the recipe"}
    masks_root, data_root = recipe.resolve_path(recipe.data.masks), recipe.resolve_path(recipe.data.root)
    spec = predictor.manifest.preprocess
    picked = [(p, m) for p, label in zip(test.paths, test.labels) if label != ok
              for m in [mask_for(p, data_root, masks_root)] if m is not None]
    if not picked:
        return {"status": "skipped", "reason": f"no defective test image has a mask in {masks_root}"}
    decisions = predictor.predict_paths([p for p, _ in picked], heatmap=True)
    hits = 0
    for decision, (_, mask) in zip(decisions, picked):
        peak = decision.heatmap.peak_xy
        hits += int(pointing_hit((int(peak[0]), int(peak[1])), mask, tolerance_image_px(spec, mask.shape)))
    small_maps = [np.asarray(d.heatmap.map, np.float64) for d in decisions]
    small_masks = [m for _, m in picked]
    import cv2

    h, w = spec.image_size
    at_input = [cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for m in small_maps]
    masks_at_input = [cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0 for m in small_masks]
    return {"status": "measured", "scored_images": len(picked), "tolerance_px_at_input": 3,
            "pointing": stats.rate(hits, len(picked)),
            "aupro_0.3": pro_auc(np.stack(at_input), masks_at_input, good_maps[:, 0])}


def latency(predictor: Predictor, paths: list[Path], iters: int, warmup: int) -> dict[str, Any]:
    """End to end per part, batch 1: read, preprocess, run, decide (``Predictor.predict_paths``)."""
    fmt = predictor.runtime.name
    chosen = [paths[i % len(paths)] for i in range(warmup + iters)]
    times = []
    for i, path in enumerate(chosen):
        started = time.perf_counter()
        predictor.predict_paths([path])
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return {"runtime": fmt, "batch": 1, "iters": iters, "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)), "mean_ms": float(np.mean(times))}


def _gate(recipe: Any, test_op: dict[str, Any], figures: dict[str, Any], lat: dict[str, Any]) -> dict[str, Any]:
    kpi, checks = recipe.kpi, []
    checks.append(check("kpi.max_false_reject_rate", "false_reject_rate", "good test parts rejected at the operating point",
                        test_op["false_reject_rate"]["rate"], kpi.max_false_reject_rate, "<="))
    limits = kpi.max_class_escape_rate
    for name, row in test_op["per_class"].items():
        limit = limits.get(name) if isinstance(limits, dict) else limits
        checks.append(check("kpi.max_class_escape_rate", f"escape_rate[{name}]",
                            f"{name}: defective test parts accepted (unmeasured: no test image of it)",
                            row["escape"]["rate"], limit, "<="))
    if not test_op["per_class"] and limits is not None:
        checks.append(check("kpi.max_class_escape_rate", "escape_rate", "defective test parts accepted: no defective "
                            "part in this line's data, so escapes are unmeasured", None, DEFAULT_ESCAPE_LIMIT
                            if not isinstance(limits, float) else limits, "<="))
    checks.append(check("kpi.min_image_auroc", "image_auroc", "image AUROC, good against defective test parts",
                        figures["auroc"], kpi.min_image_auroc, ">="))
    checks.append(check("kpi.min_automation_rate", "automation_rate", "test parts decided without a person",
                        test_op["automation_rate"]["rate"], kpi.min_automation_rate, ">="))
    limit = kpi.max_latency_p95_ms if kpi.max_latency_p95_ms is not None else recipe.line.takt_ms
    checks.append(check("kpi.max_latency_p95_ms", "latency_p95_ms", "end to end per part, batch 1", lat["p95_ms"], limit, "<="))
    return verdict(checks)


def verify_anomaly_run(run_dir: str | Path, log: Callable[[str], None] = print) -> AnomalyRecord:
    run_dir = Path(run_dir)
    state = require_stages(run_dir, ["export"], "kit verify")
    started = time.perf_counter()
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    bundle = run_dir / BUNDLE_DIR
    manifest = read_manifest(bundle)
    line_classes = list(manifest.extra["line_classes"])
    spec = manifest.preprocess
    ok = line_classes.index(recipe.line.ok_class)
    val, test = (load_split(run_dir, s, spec, line_classes) for s in ("val", "test"))
    deployed = auto_runtime(manifest.artefacts)
    predictor = Predictor.from_bundle(bundle, deployed)  # loaded and hash-checked once for every figure below
    val_scores = predictor_outputs(predictor, val.inputs(spec))[0]
    test_out = predictor_outputs(predictor, test.inputs(spec))
    test_scores = test_out[0]
    confidence = recipe.verify.threshold.confidence if recipe.verify.threshold is not None else 0.95
    cert = certify(val_scores[val.labels == ok], recipe.anomaly.max_false_reject_rate, recipe.anomaly.review_fraction,
                   confidence)
    log(f"verify: operating point {cert['message']}")
    reject_at, accept_below = cert["reject_at"], cert["accept_below"]
    limits = recipe.kpi.max_class_escape_rate
    limit_map = limits if isinstance(limits, dict) else {c: limits for c in line_classes if limits is not None}
    escapes = escape_certificates(val_scores, val.labels, line_classes, ok, accept_below, limit_map, confidence)
    defective = test.labels != ok
    figures = {"auroc": auroc(test_scores, defective), "aupr": aupr(test_scores, defective),
               "per_class_auroc": {c: auroc(test_scores[(test.labels == ok) | (test.labels == i)],
                                             test.labels[(test.labels == ok) | (test.labels == i)] == i)
                                   for i, c in enumerate(line_classes) if i != ok},
               "recall_at_1pct_false_reject": _recall_at(test_scores, test.labels, ok, 0.01),
               "recall_at_5pct_false_reject": _recall_at(test_scores, test.labels, ok, 0.05)}
    test_op = operating_figures(test_scores, test.labels, line_classes, ok, accept_below, reject_at)
    log(f"verify: test image AUROC {figures['auroc']}, false rejects {test_op['false_reject_rate']['k']}/"
        f"{test_op['false_reject_rate']['n']}, escapes {test_op['escape_rate']['k']}/{test_op['escape_rate']['n']}")
    cfg = recipe.verify
    families = cfg.corruptions.families or list_corruptions()
    robust = robustness(predictor, test.images[~defective], test_scores[~defective], accept_below, reject_at, families,
                        cfg.corruptions.severities, recipe.seed, log)
    loc = localisation(recipe, predictor, test, ok, test_out[1][~defective])
    lat = latency(predictor, list(test.paths), cfg.latency.iters, cfg.latency.warmup)
    gate = _gate(recipe, test_op, figures, lat)
    _write_thresholds(bundle, recipe, manifest, cert, val_scores[val.labels == ok])
    record = AnomalyRecord.model_validate({
        "line": recipe.line.name, "run_dir": str(run_dir), "recipe_hash": recipe_hash(recipe),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "classes": line_classes,
        "ok_class": recipe.line.ok_class, "deployed_runtime": deployed,
        "val": {"n": int(len(val.labels)), "n_good": int((val.labels == ok).sum())},
        "test": {"n": int(len(test.labels)), "n_good": int((~defective).sum())},
        "certificate": cert, "escapes": escapes, "figures": figures, "operating_test": test_op,
        "robustness": robust, "localisation": loc, "latency": lat, "gate": gate,
        "parity": read_json(bundle / "parity.json"),
    })
    record.release = Release.model_validate(anomaly_release(record))  # the one verdict, stored once
    write_anomaly_record(run_dir, record)
    log(f"verify: verdict {record.release.label}")
    write_scores(run_dir, {"val": (val, val_scores), "test": (test, test_scores)}, line_classes, accept_below, reject_at)
    mark_report_stale(run_dir, "kit verify")
    mark_stage(run_dir, state, "verify", time.perf_counter() - started, status="done" if gate["passed"] else "gate-failed",
               verdict=record.release.label, hashes=fingerprint_run(run_dir))
    return record


SCORES_NAME = "anomaly_scores.csv"


def write_scores(run_dir: Path, splits: dict[str, tuple[Any, np.ndarray]], classes: list[str], accept_below: float,
                 reject_at: float | None) -> Path:
    """Every validation and test image's score (exact: a rounded score can cross a threshold) and action
    (``verify/anomaly_scores.csv``): each figure of
    ``anomaly.json`` can be recomputed from it."""
    from kit.io import write_csv_atomic

    rows = []
    for split, (data, scores) in splits.items():
        act = actions(scores, accept_below, reject_at)
        rows += [{"split": split, "path": str(p), "label": classes[int(label)], "score": repr(float(score)), "action": a}
                 for p, label, score, a in zip(data.paths, data.labels, scores, act)]
    path = run_dir / "verify" / SCORES_NAME
    write_csv_atomic(path, rows)
    return path


def _recall_at(scores: np.ndarray, labels: np.ndarray, ok: int, rate: float) -> dict[str, Any] | None:
    good = scores[labels == ok]
    if len(good) == 0 or (labels != ok).sum() == 0:
        return None
    t = threshold_at_false_reject(good, rate)
    bad = scores[labels != ok]
    return {"threshold": t, "caught": stats.rate(int((bad >= t).sum()), len(bad)),
            "false_reject": stats.rate(int((good >= t).sum()), len(good))}


def _write_thresholds(bundle: Path, recipe: Any, manifest, cert: dict[str, Any], good_val: np.ndarray) -> None:
    """The certified thresholds into ``model.json`` (the artefacts' embedded copies keep the provisional ones: the
    thresholds are calibration, as the temperature is for classifiers). Not certified: every part is reviewed."""
    from kit.anomaly.export import good_score_quantiles

    args = manifest.extra.get("student") or {}
    reject_at = cert["reject_at"] if cert["certified"] else NEVER
    manifest.anomaly = anomaly_rule(recipe, args, reject_at, cert["accept_below"], good_score_quantiles(good_val),
                                    cert["certified"])
    write_json_atomic(bundle / MANIFEST_NAME, manifest.to_dict())


NEVER = 1e30  # a reject threshold no score reaches: with accept_below 0 every part goes to a person
