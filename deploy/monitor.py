"""``deploy monitor``: have the line's images drifted from what the model was verified on?

Compares new images with the bundle's reference profile (``profile.json``, written at export):
each imaging statistic, the model's confidence, its abstain rate and the predicted-class mix. For an
anomaly bundle (``task: anomaly``) the model's side is the anomaly score's distribution (check
``score``), the review-band rate and the mix of the labels its rule gives (``predicted_classes``).
Per comparison: the population stability index (PSI, bins at the reference's deciles) and a
two-sample Kolmogorov-Smirnov test; ``ok`` / ``watch`` / ``drift`` from the thresholds the
recipe put in the profile. Torch-free: runs on the edge box next to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy.stats import chisquare, ks_2samp

from deploy.atomic import write_atomic, write_text_atomic
from deploy.decision import AnomalyRule
from deploy.errors import DeployError
from deploy.manifest import Manifest, read_manifest, sha256_file
from deploy.predictor import Predictor, softmax
from deploy.preprocess import prepare_image, read_image, to_tensor
from deploy.profile import PROFILE_FORMAT, PROFILE_NAME, STATISTICS, statistics_table

STATUS_ORDER = ("ok", "watch", "drift")
EPS = 1e-4


def psi(reference: np.ndarray, new: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins (categorical when few values)."""
    reference, new = np.asarray(reference, float), np.asarray(new, float)
    if len(reference) == 0 or len(new) == 0:
        return 0.0
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    new_share = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1) / len(new)
    ref_share, new_share = np.clip(ref_share, EPS, None), np.clip(new_share, EPS, None)
    return float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))


def _categorical_shift(reference: np.ndarray, new: np.ndarray, n: int) -> tuple[float, float]:
    """PSI over classes and the chi-square goodness-of-fit p-value of the new counts."""
    ref = np.clip(np.bincount(reference, minlength=n) / max(1, len(reference)), EPS, None)
    counts = np.bincount(new, minlength=n)
    cur = np.clip(counts / max(1, len(new)), EPS, None)
    expected = ref / ref.sum() * counts.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref))), float(chisquare(counts, expected).pvalue)


def _orientation_offset(angles: np.ndarray, centre: float) -> np.ndarray:
    """Angular distance (degrees, 0-90) to the reference's circular mean: no wrap-around at 0/180."""
    d = np.abs((angles - centre) % 180.0)
    return np.minimum(d, 180.0 - d)


def _circular_mean_180(angles: np.ndarray) -> float:
    doubled = np.radians(angles * 2)
    return float(np.degrees(np.arctan2(np.sin(doubled).mean(), np.cos(doubled).mean())) / 2 % 180)


@dataclass
class Thresholds:
    psi_watch: float = 0.1
    psi_drift: float = 0.25
    ks_alpha: float = 0.01
    min_images: int = 30

    def status(self, psi_value: float, p_value: float) -> str:
        """drift: a large shift (PSI) that is also statistically significant; watch: either one alone.
        PSI alone would flag sampling noise on small folders (its null expectation is about
        (bins - 1) (1/n + 1/m), ~0.1 for 150 vs 250 images); the test alone would flag tiny shifts
        on huge folders."""
        significant = p_value < self.ks_alpha
        if psi_value >= self.psi_drift and significant:
            return "drift"
        if psi_value >= self.psi_drift or (significant and psi_value >= self.psi_watch):
            return "watch"
        return "ok"


def read_profile(bundle_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(bundle_dir)
    entry = manifest.extra.get("profile")
    path = bundle_dir / PROFILE_NAME
    if entry is None or not path.is_file():
        raise DeployError(f"{bundle_dir}: the bundle has no reference profile ({PROFILE_NAME}); re-export it with `kit export`")
    if sha256_file(path) != entry["sha256"]:
        raise DeployError(f"{path}: sha256 does not match the manifest; copy the bundle again or re-export")
    profile = json.loads(path.read_text(encoding="utf-8"))
    if profile.get("format") != PROFILE_FORMAT:
        raise DeployError(f"{path}: not an inspection-kit profile")
    return profile


def _compare(name: str, description: str, ref: np.ndarray, new: np.ndarray, th: Thresholds) -> dict[str, Any]:
    value = psi(ref, new)
    test = ks_2samp(ref, new)
    return {"check": name, "description": description, "psi": value, "ks_statistic": float(test.statistic),
            "ks_p_value": float(test.pvalue), "reference_median": float(np.median(ref)),
            "new_median": float(np.median(new)), "status": th.status(value, float(test.pvalue))}


def monitor(bundle_dir: str | Path, paths: Sequence[str | Path], runtime: str = "auto", batch_size: int = 32,
            intra_op_threads: int | None = None) -> dict[str, Any]:
    bundle_dir = Path(bundle_dir)
    profile = read_profile(bundle_dir)
    th = Thresholds(**profile.get("thresholds", {}))
    predictor = Predictor.from_bundle(bundle_dir, runtime, intra_op_threads=intra_op_threads)
    spec = predictor.manifest.preprocess
    paths = [Path(p) for p in paths]
    if not paths:
        raise DeployError("monitor: no images given")
    images = [prepare_image(read_image(p, spec.channels), spec) for p in paths]
    rows = _statistic_rows(profile, statistics_table(images), th)
    rule = predictor.manifest.anomaly
    if rule is not None:
        decisions = [d for i in range(0, len(images), batch_size)
                     for d in predictor.decide_batch(to_tensor(np.stack(images[i : i + batch_size]), spec))]
        model_rows, abstain = _anomaly_rows(profile, rule, [d.score for d in decisions], [d.label for d in decisions],
                                            [d.abstain for d in decisions], th, bundle_dir)
        rows += model_rows
        labels = [d.label for d in decisions]
    else:
        logits = np.concatenate([predictor.logits(to_tensor(np.stack(images[i : i + batch_size]), spec))
                                 for i in range(0, len(images), batch_size)])
        model_rows, abstain, labels = _classifier_rows(profile, predictor.manifest, logits, th)
        rows += model_rows
    overall = max((r["status"] for r in rows), key=STATUS_ORDER.index)
    notes = []
    if len(paths) < th.min_images:
        notes.append(f"only {len(paths)} images (fewer than {th.min_images}): the verdict is unreliable")
    return {
        "bundle": str(bundle_dir), "runtime": predictor.runtime.name, "images": len(paths),
        "reference_images": profile["images"], "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "thresholds": th.__dict__, "status": overall, "checks": rows, "abstain": abstain,
        "predicted_share": {c: float(np.mean([label == c for label in labels])) for c in predictor.classes},
        "notes": notes,
    }


def _classifier_rows(profile: dict[str, Any], manifest: Manifest, logits: np.ndarray,
                     th: Thresholds) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """A classifier's model rows (confidence, class mix), its abstain rates and the new parts' predicted labels."""
    temperature, threshold = manifest.temperature, manifest.operating_threshold
    ref_p, new_p = softmax(np.asarray(profile["logits"], np.float32), temperature), softmax(logits, temperature)
    rows = _model_rows(ref_p, new_p.max(1), new_p.argmax(1), th)
    abstain = None
    rule = manifest.decision_rule
    if threshold is not None or rule.class_thresholds:  # the abstain rate by the rule the bundle deploys
        ref_rate = float(np.mean(~rule.accepted(ref_p, manifest.classes)))
        new_rate = float(np.mean(~rule.accepted(new_p, manifest.classes)))
        abstain = {"threshold": threshold or 0.0, "reference_rate": ref_rate, "new_rate": new_rate}
    return rows, abstain, [manifest.classes[i] for i in new_p.argmax(1)]


def _anomaly_rows(profile: dict[str, Any], rule: AnomalyRule, scores: Sequence[float | None], labels: Sequence[str],
                  abstain: Sequence[bool], th: Thresholds, bundle_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An anomaly bundle's model rows against its reference: the score distribution (PSI, KS) and the mix of the
    labels the rule gives (the reference's labels by today's rule, from its stored scores and kind distances); and
    the review-band rate."""
    if profile.get("task", "classify") != "anomaly" or "scores" not in profile:
        raise DeployError(f"{bundle_dir / PROFILE_NAME}: no reference scores for this anomaly bundle (a classifier's "
                          "profile?); re-export it with `kit export`")
    if rule.kinds and "kind_distance" not in profile:
        raise DeployError(f"{bundle_dir / PROFILE_NAME}: no reference kind distances for the bundle's kinds "
                          f"({', '.join(rule.kinds)}); re-export it with `kit export`")
    ref_scores = np.asarray(profile["scores"], np.float64)
    reference = rule.decide(ref_scores, profile.get("kind_distance") if rule.kinds else None)
    new_scores = np.array([s for s in scores if s is not None], np.float64)  # a NaN score is logged as null
    if not len(new_scores):
        raise DeployError("monitor: none of the decisions carries an anomaly score to compare")
    rows = [_compare("score", "anomaly score (1.0: the 99th percentile of the good validation parts)", ref_scores,
                     new_scores, th)]
    names = rule.labels()
    mix, mix_p = _categorical_shift(np.array([names.index(x) for x in reference.labels], int),
                                    np.array([names.index(x) for x in labels], int), len(names))
    rows.append({"check": "predicted_classes", "description": "mix of decision labels (p: chi-square test)", "psi": mix,
                 "ks_statistic": None, "ks_p_value": mix_p, "reference_median": None, "new_median": None,
                 "status": th.status(mix, mix_p)})
    rates = {"threshold": rule.accept_below, "band": [rule.accept_below, rule.reject_at],
             "reference_rate": float(np.mean(reference.abstain)), "new_rate": float(np.mean(np.asarray(abstain, bool)))}
    return rows, rates


def _statistic_rows(profile: dict[str, Any], stats: dict[str, np.ndarray], th: Thresholds) -> list[dict[str, Any]]:
    rows = []
    reference = {k: np.asarray(v, float) for k, v in profile["statistics"].items()}
    for name, description in STATISTICS.items():
        ref, new = reference[name], stats[name]
        if name == "orientation":
            centre = _circular_mean_180(ref)
            ref, new = _orientation_offset(ref, centre), _orientation_offset(new, centre)
            description = f"distance of the dominant orientation from the reference's ({centre:.0f} deg)"
        rows.append(_compare(name, description, ref, new, th))
    return rows


def _model_rows(ref_p: np.ndarray, new_confidence: np.ndarray, new_top: np.ndarray, th: Thresholds) -> list[dict[str, Any]]:
    """Confidence and predicted-class mix against the reference probabilities."""
    rows = [_compare("confidence", "model confidence (calibrated top-1 probability)", ref_p.max(1), new_confidence, th)]
    mix, mix_p = _categorical_shift(ref_p.argmax(1), np.asarray(new_top, int), ref_p.shape[1])
    rows.append({"check": "predicted_classes", "description": "mix of predicted classes (p: chi-square test)", "psi": mix,
                 "ks_statistic": None, "ks_p_value": mix_p, "reference_median": None, "new_median": None,
                 "status": th.status(mix, mix_p)})
    return rows


def monitor_log(bundle_dir: str | Path, logs: Sequence[str | Path]) -> dict[str, Any]:
    """``monitor`` from decision logs (``deploy serve`` / ``deploy watch``) instead of images: the
    confidence, abstain rate and class mix come from the log alone; the imaging statistics are
    added where the records name kept images (``deploy watch`` keeps them in DONE_DIR). Only the
    records of this bundle's model count: another model's confidences are not comparable."""
    from collections import Counter

    from deploy.decision_log import read_records
    from deploy.manifest import model_id

    bundle_dir = Path(bundle_dir)
    profile = read_profile(bundle_dir)
    th = Thresholds(**profile.get("thresholds", {}))
    manifest = read_manifest(bundle_dir)
    identity, classes = model_id(bundle_dir), manifest.classes
    read = read_records(logs)
    mine = [r for r in read.records if r.model_id == identity and r.label in classes]
    others = Counter(r.model_id[:12] for r in read.records if r.model_id != identity)
    if not mine:
        found = ", ".join(f"{m} ({n})" for m, n in others.most_common(3)) or "none"
        raise DeployError(f"{', '.join(map(str, read.files)) or 'the decision log'}: no decisions by this bundle's model "
                          f"({identity[:12]}) among {len(read.records)} records (models found: {found}); "
                          "pass the bundle that made them")
    notes = []
    rows: list[dict[str, Any]] = []
    kept = [Path(r.image) for r in mine if r.image and Path(r.image).is_file()]
    spec = manifest.preprocess
    if kept:
        rows += _statistic_rows(profile, statistics_table([prepare_image(read_image(p, spec.channels), spec) for p in kept]), th)
        if len(kept) < len(mine):
            notes.append(f"imaging statistics from the {len(kept)} of {len(mine)} decided images still on disk")
    else:
        notes.append("no kept images in the log: imaging statistics not checked (confidence, abstain and class mix only)")
    if manifest.anomaly is not None:
        model_rows, abstain = _anomaly_rows(profile, manifest.anomaly, [r.score for r in mine], [r.label for r in mine],
                                            [r.abstain for r in mine], th, bundle_dir)
        rows += model_rows
    else:
        rows += _logged_classifier_rows(profile, manifest, mine, th)
        abstain = None
        if manifest.operating_threshold is not None or manifest.class_thresholds:
            ref_p = softmax(np.asarray(profile["logits"], np.float32), manifest.temperature)
            abstain = {"threshold": manifest.operating_threshold or 0.0,
                       "reference_rate": 1.0 - float(np.mean(manifest.decision_rule.accepted(ref_p, classes))),
                       "new_rate": float(np.mean([r.abstain for r in mine]))}
    if others:
        notes.append(f"{sum(others.values())} records by other models left out ({', '.join(others)})")
    if read.skipped_lines:
        notes.append(f"{read.skipped_lines} unreadable log line(s) skipped (a crash's partial last line)")
    if len(mine) < th.min_images:
        notes.append(f"only {len(mine)} decisions (fewer than {th.min_images}): the verdict is unreliable")
    overall = max((r["status"] for r in rows), key=STATUS_ORDER.index)
    return {
        "bundle": str(bundle_dir), "source": "decision log", "logs": [str(f) for f in read.files], "model_id": identity,
        "runtime": sorted({r.runtime for r in mine}), "images": len(mine), "kept_images": len(kept),
        "first": min(r.time for r in mine), "last": max(r.time for r in mine),
        "reference_images": profile["images"], "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "thresholds": th.__dict__, "status": overall, "checks": rows, "abstain": abstain,
        "predicted_share": {c: float(np.mean([r.label == c for r in mine])) for c in classes},
        "notes": notes,
    }


def _logged_classifier_rows(profile: dict[str, Any], manifest: Manifest, mine: list, th: Thresholds) -> list[dict[str, Any]]:
    """A classifier's confidence and class mix from its logged decisions, against the reference logits."""
    ref_p = softmax(np.asarray(profile["logits"], np.float32), manifest.temperature)
    return _model_rows(ref_p, np.array([r.confidence for r in mine]),
                       np.array([manifest.classes.index(r.label) for r in mine]), th)


class MonitorFiles(NamedTuple):
    """What ``write_monitor_report`` wrote; ``drift_png`` is None where matplotlib is not installed."""

    drift_json: Path
    drift_png: Path | None


def write_monitor_report(report: dict[str, Any], out_dir: str | Path) -> MonitorFiles:
    """``drift.json`` and ``drift.png`` in ``out_dir``: the files ``deploy monitor`` leaves, for
    Python callers too. Each is written atomically, so a job that watches the folder never reads a
    half-written verdict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    drift_json = write_text_atomic(out_dir / "drift.json", text)
    return MonitorFiles(drift_json, plot_report(report, out_dir / "drift.png"))


def plot_report(report: dict[str, Any], path: Path) -> Path | None:
    """A bar chart of PSI per check, coloured by status, written atomically; None where matplotlib is
    not installed (the edge install leaves it out: ``pip install "inspection-kit[plot]"`` adds it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colours = {"ok": "#2e7d32", "watch": "#f9a825", "drift": "#c62828"}
    rows = report["checks"]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    ax.barh([r["check"] for r in rows], [r["psi"] for r in rows], color=[colours[r["status"]] for r in rows])
    th = report["thresholds"]
    ax.axvline(th["psi_watch"], color=colours["watch"], linestyle="--", label=f"watch {th['psi_watch']:g}")
    ax.axvline(th["psi_drift"], color=colours["drift"], linestyle="--", label=f"drift {th['psi_drift']:g}")
    ax.invert_yaxis()
    ax.set_xlabel("population stability index")
    ax.set_title(f"{report['images']} new images vs {report['reference_images']} reference: {report['status'].upper()}")
    ax.legend(fontsize=8, loc="lower right")
    path = write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight",
                                                             metadata={"Software": None}))
    plt.close(fig)
    return path
