"""``kit verify``: the exported bundle against the recipe's KPI targets.

Reads ``recipe.lock.yaml``, ``split.csv``, the checkpoints and ``bundle/``; writes ``verify/``
(``kpi.json`` plus CSV tables, assembled in a staging folder and swapped in whole) and stores
the fitted temperature and the operating threshold in ``bundle/model.json``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.decision import DecisionRule
from deploy.manifest import MANIFEST_NAME, read_manifest
from deploy.predictor import auto_runtime, softmax
from deploy.runtimes.tensorrt_backend import tensorrt_unavailable_reason
from kit.device import resolve_device
from kit.evaluate import classification_metrics
from kit.io import publish_dir, staging_dir, write_csv_atomic, write_json_atomic
from kit.recipe import Recipe, read_recipe_lock, recipe_hash
from kit.recipe.schema import ThresholdTarget
from kit.rundir import (
    BUNDLE_DIR, GATE_CSV, KPI_NAME, LATENCY_CSV, LOCK_NAME, PER_CLASS_CSV, RELIABILITY_CSV, ROBUSTNESS_CSV, ROBUSTNESS_SUMMARY_CSV,
    TEACHER_ONNX_NAME, VERIFY_DIR, VERIFY_METRICS_CSV, SplitData, checkpoint_path, comparison_role, fingerprint_run, kpi_path, load_split,
    mark_report_stale, mark_stage, record_hashes, require_stages,
)
from kit.verify import calibration, gate, latency, robustness, stats, threshold
from kit.verify.appraiser import appraiser_section
from kit.verify.certification import certification_split, line_risk_bounds
from kit.verify.escapes import escape_table
from kit.verify.localisation import localisation_section
from kit.verify.machine import measuring_machine
from kit.verify.record import HELDOUT_FAMILY_KEY, KPI_SCHEMA_VERSION, Intervals, KpiRecord, Measured, Operating, read_kpi, write_kpi
from kit.verify.release import describe_release, release_verdict
from kit.verdict import Release
from kit.verify import production
from kit.verify import regression
from kit.views.corruptions import coverage, list_corruptions
from kit.scorers import Scorer, bundle_scorer, onnx_file_scorer, torch_scorer


@dataclass
class VerifyResult:
    verify_dir: Path
    kpi: KpiRecord

    @property
    def passed(self) -> bool:
        return self.kpi.gate.passed

    @property
    def verdict(self) -> Release:
        """The run's one release verdict (``kpi.json`` ``release``)."""
        return self.kpi.verdict


def _kl(p_ref: np.ndarray, p: np.ndarray) -> np.ndarray:
    """KL(reference || model) per image, in nats."""
    a, b = np.clip(p_ref.astype(np.float64), 1e-12, 1), np.clip(p.astype(np.float64), 1e-12, 1)
    return (a * (np.log(a) - np.log(b))).sum(axis=1)


def accuracy_section(logits: dict[str, np.ndarray], labels: np.ndarray, classes: list[str],
                     scorers: dict[str, Scorer]) -> dict[str, Any]:
    teacher_p = softmax(logits["teacher"])
    teacher_pred = teacher_p.argmax(1)
    out = {}
    for name, z in logits.items():
        p = softmax(z)
        pred = p.argmax(1)
        m = classification_metrics(labels, pred, classes)
        m.update(kind=scorers[name].kind, runtime=scorers[name].runtime, file=scorers[name].file.name)
        if name != "teacher":
            kl, agree = _kl(teacher_p, p), pred == teacher_pred
            m["agreement"] = float(agree.mean())
            m["mean_kl"] = float(kl.mean())
            for i, c in enumerate(classes):
                sel = labels == i
                m["per_class"][c]["teacher_agreement"] = float(agree[sel].mean()) if sel.any() else None
                m["per_class"][c]["mean_kl"] = float(kl[sel].mean()) if sel.any() else None
        out[name] = m
    return out


def verify_run(run_dir: str | Path, log: Callable[[str], None] = print) -> VerifyResult:
    run_dir = Path(run_dir)
    state = require_stages(run_dir, ["export"], "kit verify")
    started = time.perf_counter()
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    bundle = run_dir / BUNDLE_DIR
    manifest = read_manifest(bundle)
    classes, spec, cfg = manifest.classes, manifest.preprocess, recipe.verify
    val, test = load_split(run_dir, "val", spec, classes), load_split(run_dir, "test", spec, classes)
    device = resolve_device(recipe.device).device

    # -- scorers: torch teacher/students, then every bundle runtime this machine can run
    roles = ["teacher", "student"] + [comparison_role(m) for m in recipe.compare]
    torch_files = {role: checkpoint_path(run_dir, role) for role in roles}
    scorers: dict[str, Scorer] = {name: torch_scorer(name, path, device) for name, path in torch_files.items() if path.is_file()}
    skipped: dict[str, str] = {}
    trt_reason = tensorrt_unavailable_reason()
    for fmt in manifest.artefacts:
        if fmt.startswith("tensorrt") and trt_reason is not None:
            skipped[fmt] = trt_reason
            log(f"verify: {fmt} skipped ({trt_reason})")
            continue
        scorers[fmt] = bundle_scorer(bundle, fmt, cfg.latency.threads)
    deployed = auto_runtime(manifest.artefacts)
    log(f"verify: {len(test.labels)} test images; models {', '.join(scorers)}; deployed runtime {deployed}")

    # -- clean accuracy and agreement (a teacher reading larger images scores the same test images at its size)
    test_at = {spec: test, **{s.spec: load_split(run_dir, "test", s.spec, classes)
                              for s in scorers.values() if s.spec is not None and s.spec != spec}}
    val_x = val.inputs(spec)
    test_logits = {name: s.logits(test_at[s.input_spec(spec)].inputs(s.input_spec(spec))) for name, s in scorers.items()}
    accuracy = accuracy_section(test_logits, test.labels, classes, scorers)

    # -- calibration on the validation images that choose, the operating threshold certified on the held-out ones
    val_logits = scorers[deployed].logits(val_x)
    calib = calibration.calibration_report(val_logits, val.labels, test_logits[deployed], test.labels, fit=cfg.calibrate)
    temperature = calib["temperature"]
    held_out, certified_on = certification_split(run_dir, spec, classes, val, recipe.data.split.seed, cfg.certify_share)
    cert_logits = scorers[deployed].logits(held_out.inputs(spec)) if held_out is not val else val_logits
    operating = operating_section(cfg.threshold, classes, cert_logits, held_out.labels, test_logits, test.labels, temperature,
                                  manifest.operating_threshold, [n for n, s in scorers.items() if s.kind == "bundle"], deployed,
                                  recipe.line.ok_class, recipe.line.defect_rate, certified_on)
    write_manifest_calibration(bundle, temperature, operating["threshold"], calib, operating)
    log(f"verify: temperature {temperature:.3f} (test ECE {calib['test']['ece_before']:.3f} -> {calib['test']['ece_after']:.3f}); "
        f"threshold {operating['threshold']} -> automation {operating['test']['automation_rate']:.3f}")
    if operating.get("certificate"):
        log(f"verify: operating threshold {operating['certificate']['message']}")

    # -- robustness suite
    families = cfg.corruptions.families or list_corruptions()
    strong = _strong_view(recipe)
    cover = coverage(strong, families)
    idx = _suite_subset(len(test.labels), cfg.corruptions.max_images, recipe.seed)
    suite_scorers = [scorers[n] for n in scorers]
    suite = robustness.run_suite(
        suite_scorers, test.images[idx], test.labels[idx], spec, families, cover, recipe.seed, cfg.corruptions.severities,
        clean_preds={n: z.argmax(1)[idx] for n, z in test_logits.items()}, log=log,
        images_at={other: split.images[idx] for other, split in test_at.items() if other != spec},
        decisions=(deployed, lambda logits: corrupted_operating(logits, test.labels[idx], operating, classes)),
    )

    # -- latency: each scorer rebuilt inside the measurement so loading counts toward its memory
    factories = [_factory(name, torch_files, bundle, device, cfg.latency.threads) for name in scorers]
    with tempfile.TemporaryDirectory(prefix="kit-verify-") as tmp:
        teacher_spec = scorers["teacher"].input_spec(spec) if "teacher" in scorers else spec
        teacher_onnx = _teacher_in_onnx(torch_files["teacher"], Path(tmp), teacher_spec, log)
        if teacher_onnx is not None:  # the same-runtime speed comparison: teacher and student both in ONNX Runtime
            factories.append(lambda: replace(onnx_file_scorer(TEACHER_ONNX, teacher_onnx, cfg.latency.threads), spec=teacher_spec))
        lat = latency.measure(factories, spec, test.paths, cfg.latency, recipe.line.takt_ms, log=log)

    # -- gate
    measured = measured_kpis(accuracy, suite, lat, operating, calib, deployed)
    intervals = rate_intervals(test_logits[deployed], test.labels, operating)
    differences = differences_section(test_logits, test.labels, deployed, recipe.distill.method, list(recipe.compare), recipe.seed)
    verdict = gate.evaluate_gate(measured, recipe.kpi, recipe.line.takt_ms, gate_bounds(intervals, operating, differences))
    previous = regression.previous_section(recipe, run_dir, classes, test_logits[deployed], test.labels, log)  # None: first model
    verdict = regression.with_regression_checks(verdict, previous)
    kpi = KpiRecord.model_validate({
        "schema_version": KPI_SCHEMA_VERSION, "line": recipe.line.name, "run_dir": str(run_dir), "run_id": state.get("run_id"), "recipe_hash": recipe_hash(recipe),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": classes, "test_images": int(len(test.labels)), "val_images": int(len(val.labels)),
        "certify_images": int(len(held_out.labels)),
        "deployed_runtime": deployed, "skipped_runtimes": skipped,
        "distill_method": recipe.distill.method, "compare": list(recipe.compare),
        "models": accuracy, "misclassified": misclassified(test, test_logits[deployed], temperature, classes),
        "calibration": calib, "operating": operating, "robustness": suite, "latency": lat,
        "measured": measured, "intervals": intervals, "gate": verdict, "release": release_verdict(verdict), "previous": previous,
        "differences": differences,
        "machine": measuring_machine(device),
        "localisation": localisation_section(run_dir, recipe, test.paths, [classes[i] for i in test.labels], classes,
                                             bundle, deployed, log),
    })
    verify_dir = write_verify_dir(run_dir, kpi)
    log(f"verify: verdict {describe_release(kpi.verdict)}")
    mark_report_stale(run_dir, "kit verify")  # a report of the previous measurements must not look current
    mark_stage(  # drops the report: it shows the previous measurements; the hashes let `kit report` notice an edit
        run_dir, state, "verify", time.perf_counter() - started, status="done" if kpi.gate.passed else "gate-failed",
        verdict=kpi.verdict.label, hashes=fingerprint_run(run_dir))
    return VerifyResult(verify_dir, kpi)


TEACHER_ONNX = "teacher-onnx"


def _teacher_in_onnx(checkpoint: Path, folder: Path, spec, log: Callable[[str], None]) -> Path | None:
    """The teacher exported to ONNX (a temporary file, timed only); None, with the reason logged, when it
    cannot be exported (the speed card then compares across runtimes and within PyTorch only)."""
    from kit.export.onnx_fp32 import export_onnx
    from kit.models import load_model

    path = folder / TEACHER_ONNX_NAME
    try:
        model, _ = load_model(checkpoint)
        export_onnx(model, path, (spec.num_channels, *spec.image_size))
    except Exception as exc:  # an exporter limitation must not stop verification; it only loses one speed row
        log(f"verify: teacher not timed in ONNX Runtime ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return None
    return path


def _strong_view(recipe: Recipe):
    from kit.views import build_view

    return build_view(recipe.views.strong, "views.strong", recipe.view_size, recipe.data.num_channels)


def _suite_subset(n: int, cap: int | None, seed: int) -> np.ndarray:
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:cap])


def _factory(name: str, torch_files: dict[str, Path], bundle: Path, device, threads: int) -> Callable[[], Scorer]:
    if name in torch_files:
        return lambda: torch_scorer(name, torch_files[name], device)
    return lambda: bundle_scorer(bundle, name, threads)


def operating_section(target: ThresholdTarget | None, classes: list[str], val_logits: np.ndarray, val_labels: np.ndarray,
                      test_logits: dict[str, np.ndarray], test_labels: np.ndarray, temperature: float,
                      fixed_threshold: float | None, runtimes: list[str], deployed: str,
                      line_ok_class: str | None = None, defect_rate: Any = None,
                      certified_on: dict[str, Any] | None = None) -> dict[str, Any]:
    """Certify the threshold for ``target`` (None: keep ``fixed_threshold``) on ``val_logits`` (the certification
    images, ``certified_on`` says which), then measure it on test with intervals: the risk the target bounds,
    automation, accepted accuracy, escapes. The rule is the one the bundle deploys (``deploy.decision``): the
    threshold plus the target's per-class thresholds."""
    ok_index = threshold.ok_class_index(target, classes, line_ok_class)
    class_thresholds = dict(target.class_thresholds) if target is not None else {}
    floors = DecisionRule(class_thresholds=class_thresholds).class_floors(classes) if class_thresholds else None
    out: dict[str, Any] = {"runtime": deployed, "temperature": temperature, "class_thresholds": class_thresholds}
    if certified_on is not None:
        out["certified_on"] = certified_on
    val_p = softmax(val_logits, temperature)
    if target is not None:
        choice = threshold.certify_threshold(val_p, val_labels, target, classes, target.confidence, line_ok_class, floors)
        out.update(target=threshold.describe_target(target), reached=choice["certified"], certified=choice["certified"],
                   confidence=choice["confidence"], threshold=choice["threshold"], val=choice["val"],
                   certificate={k: choice.get(k) for k in ("risk", "limit", "tested", "stopped_at", "needed_images", "message",
                                                             "class_escapes")})
        out["certificate"]["line_risks"] = line_risk_bounds(val_p, val_labels, classes, ok_index, target.confidence)
    else:
        out.update(target=None, reached=None, certified=None, confidence=None, threshold=fixed_threshold,
                   val=threshold.operating_point(val_p, val_labels, fixed_threshold, ok_index, floors))
    out["ok_class"] = classes[ok_index] if ok_index is not None else None
    test_p = softmax(test_logits[deployed], temperature)
    out["test"] = threshold.operating_point(test_p, test_labels, out["threshold"], ok_index, floors)
    out["test"]["intervals"] = operating_intervals(out["test"])
    out["escapes_test"] = escape_table(test_p, test_labels, classes, ok_index, out["threshold"], floors=floors)
    out["test_mix"] = production.split_mix_figures(out["test"])
    out["production"] = production.production_figures(test_p, test_labels, classes, ok_index, out["threshold"], floors, defect_rate)
    out["curve_test"] = threshold.coverage_curve(test_p, test_labels)
    out["appraiser"] = appraiser_section(test_p, test_labels, classes, ok_index, out["threshold"], floors)
    out["per_runtime"] = {r: threshold.operating_point(softmax(test_logits[r], temperature), test_labels, out["threshold"],
                                                       ok_index, floors)
                          for r in runtimes if r in test_logits}
    return out


def corrupted_operating(logits: np.ndarray, labels: np.ndarray, operating: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The deployed rule (threshold, class thresholds, temperature) on one corrupted copy of the test images:
    automation, escapes and false rejects with their intervals; escape and false-reject rates are None
    without a good-part class."""
    ok = operating.get("ok_class")
    ok_index = classes.index(ok) if ok in classes else None
    floors = DecisionRule(class_thresholds=operating.get("class_thresholds") or {}).class_floors(classes)
    point = threshold.operating_point(softmax(logits, operating["temperature"]), labels, operating["threshold"], ok_index, floors)
    rates = operating_intervals(point)
    return {"automation_rate": rates["automation_rate"], "escape_rate": rates.get("escape_rate"),
            "false_reject_rate": rates.get("false_reject_rate")}


def operating_intervals(point: dict[str, Any]) -> dict[str, Any]:
    """An operating point's rates (``threshold.operating_point``) with their counts and 95 % Clopper-Pearson intervals."""
    out = {"automation_rate": stats.rate(point["accepted"], point["images"]),
           "accepted_accuracy": stats.rate(point["accepted_correct"], point["accepted"])}
    if "escapes" in point:
        out["escape_rate"] = stats.rate(point["escapes"], point["defective_parts"])
        out["false_reject_rate"] = stats.rate(point["false_rejects"], point["good_parts"])
    return out


def misclassified(split: SplitData, logits: np.ndarray, temperature: float, classes: list[str], limit: int = 12) -> list[dict[str, Any]]:
    """The deployed runtime's test errors, most confident first: the ones a person should look at."""
    p = softmax(logits, temperature)
    pred, conf = p.argmax(1), p.max(1)
    wrong = np.flatnonzero(pred != split.labels)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:limit]
    return [{"path": str(split.paths[i]), "label": classes[split.labels[i]], "predicted": classes[pred[i]],
             "confidence": float(conf[i])} for i in wrong]


def write_manifest_calibration(bundle: Path, temperature: float, operating_threshold: float | None,
                               calib: dict[str, Any] | None, operating: dict[str, Any]) -> None:
    """Temperature and threshold go into ``model.json``, which every runtime reads; the copy embedded in
    the ONNX files stays the export-time one (it documents how the file was made). ``calib`` None keeps
    the stored calibration summary (a threshold re-tune does not refit the temperature)."""
    manifest = read_manifest(bundle)
    manifest.temperature = float(temperature)
    manifest.operating_threshold = operating_threshold
    manifest.ok_class = operating.get("ok_class")
    manifest.class_thresholds = dict(operating.get("class_thresholds") or {})
    if calib is not None:
        manifest.extra["calibration"] = {"temperature": temperature, "fitted_on": calib.get("fitted_on"),
                                         "test_ece_before": calib["test"]["ece_before"], "test_ece_after": calib["test"]["ece_after"]}
    manifest.extra["operating_point"] = {k: operating.get(k) for k in ("target", "reached", "certified", "confidence", "threshold",
                                                                       "runtime", "ok_class")}
    manifest.extra["operating_point"].update(
        {f"test_{k}": operating["test"].get(k) for k in ("automation_rate", "accepted_accuracy", "escape_rate")})
    write_json_atomic(bundle / MANIFEST_NAME, manifest.to_dict())


def measured_kpis(accuracy: dict[str, Any], suite: dict[str, Any], lat: dict[str, Any], operating: dict[str, Any],
                  calib: dict[str, Any], deployed: str) -> dict[str, float | None]:
    student, teacher = accuracy[deployed], accuracy["teacher"]
    summary = suite["summary"][deployed]
    e2e = latency.row_for(lat, deployed)
    return {
        "accuracy": student["accuracy"], "macro_f1": student["macro_f1"], "teacher_accuracy": teacher["accuracy"],
        "accuracy_gap": teacher["accuracy"] - student["accuracy"], "agreement": student["agreement"],
        "relative_robustness": summary["all"]["relative_robustness"],
        "heldout_relative_robustness": summary["held_out"]["relative_robustness"],
        "latency_p95_ms": e2e["p95_ms"] if e2e else None,
        "ece": calib["test"]["ece_after"], **operating_measures(operating), **heldout_family_measures(suite, deployed),
    }


def heldout_family_measures(suite: dict[str, Any], deployed: str) -> dict[str, float | None]:
    """Per held-out family, the deployed model's mean accuracy over that family's severities / its clean accuracy:
    the gate checks each against ``kpi.min_heldout_relative_robustness`` (a mean over families hides a collapse)."""
    summary = suite["summary"][deployed]
    clean = summary["clean_accuracy"]
    return {HELDOUT_FAMILY_KEY.format(f): (acc / clean if acc is not None and clean > 0 else None)
            for f, acc in summary["per_family"].items() if suite["families"][f]["coverage"] == "held-out"}


def operating_measures(operating: dict[str, Any]) -> dict[str, Any]:
    """What the gate reads from the operating section (also refreshed by ``kit threshold``)."""
    escapes = operating.get("escapes_test") or {}
    # A model that decided no test part alone (every part went to a person) has no escapes or false rejects of its
    # own: they are unmeasured, not zero, so a gated limit on them is not met.
    decided = bool(operating["test"].get("accepted"))
    per_class = {f"escape_rate[{c}]": row["rate"] if decided else None
                 for c, row in (escapes.get("classes") or {}).items() if row["kind"] == "escape"}
    return {
        "automation_rate": operating["test"]["automation_rate"], "accepted_accuracy": operating["test"]["accepted_accuracy"],
        "max_class_escape_rate": escapes.get("worst_rate") if decided else None, "worst_escape_class": escapes.get("worst"),
        "false_reject_rate": operating["test"].get("false_reject_rate") if decided else None, **per_class,
        # the certified bound on validation; None when the target could not be certified (a missed target)
        "operating_risk_upper": operating["val"].get("risk_upper") if operating.get("certified") else None,
        "operating_risk_limit": (operating.get("certificate") or {}).get("limit"),
        "operating_target": operating.get("target"),
        **test_risk(operating),
    }


def test_risk(operating: dict[str, Any]) -> dict[str, Any]:
    """The certified risk measured again on the test split, with its one-sided upper bound at the certificate's
    confidence: errors among the test parts decided alone, or escapes among the defective test parts."""
    cert, test = operating.get("certificate") or {}, operating["test"]
    if not operating.get("certified") or not cert.get("risk"):
        return {}
    if cert["risk"] == "accepted_error_rate":
        k, n = test["accepted"] - test["accepted_correct"], test["accepted"]
    else:
        k, n = test.get("escapes", 0), test.get("defective_parts", 0)
    if not n:
        return {"operating_test_risk": None, "operating_test_risk_upper": None}
    return {"operating_test_risk": k / n,
            "operating_test_risk_upper": stats.clopper_pearson_upper(k, n, operating.get("confidence") or 0.95)}


def differences_section(test_logits: dict[str, np.ndarray], labels: np.ndarray, deployed: str, method: str,
                        compare: list[str], seed: int) -> list[dict[str, Any]]:
    """Clean test accuracy differences that the report states, each with a paired bootstrap 95 % interval
    over the same test images: deployed student vs teacher, the main method's student vs each comparison
    student (both in PyTorch), INT8 vs FP32 (both in ONNX Runtime). ``diff`` = a - b."""
    pairs = [("deployed_vs_teacher", deployed, "teacher")]
    pairs += [("method_vs_" + m, "student", comparison_role(m)) for m in compare]
    pairs.append(("int8_vs_fp32", "onnx-int8", "onnx"))
    out = []
    for name, a, b in pairs:
        if a not in test_logits or b not in test_logits or a == b:
            continue
        diff = stats.paired_bootstrap_diff(test_logits[a].argmax(1) == labels, test_logits[b].argmax(1) == labels, seed=seed)
        out.append({"name": name, "a": a, "b": b, "measure": "test accuracy", "method": method if a == "student" else None,
                    "compared": b.removeprefix("student-") if b.startswith("student-") else None, **diff})
    return out


def gate_bounds(intervals: dict[str, Any], operating: dict[str, Any],
                differences: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The interval behind each gated rate (``gate.evaluate_gate`` with ``kpi.gate_on: bound``; the report).
    The accuracy gap (teacher minus deployed student) takes the paired bootstrap interval of their difference."""
    escapes = operating.get("escapes_test") or {}
    rows = escapes.get("classes") or {}
    out = {k: intervals[k] for k in ("accuracy", "automation_rate", "accepted_accuracy", "false_reject_rate") if k in intervals}
    out.update({f"escape_rate[{c}]": row for c, row in rows.items() if row["kind"] == "escape"})
    if escapes.get("worst"):
        out["max_class_escape_rate"] = rows[escapes["worst"]]
    pair = next((d for d in differences or [] if d["name"] == "deployed_vs_teacher" and d["diff"] is not None), None)
    if pair is not None:  # diff = deployed - teacher; the gap is its negative
        out["accuracy_gap"] = {"rate": -pair["diff"], "low": -pair["high"], "high": -pair["low"], "n": pair["n"],
                               "method": "paired bootstrap", "n_boot": pair["n_boot"]}
    return out


def rate_intervals(logits: np.ndarray, labels: np.ndarray, operating: dict[str, Any]) -> dict[str, Any]:
    """Every rate of page one with its n and 95 % Clopper-Pearson interval (test split, deployed runtime)."""
    correct = int((logits.argmax(1) == labels).sum())
    return {"accuracy": stats.rate(correct, len(labels)), **operating["test"].get("intervals", {})}


def write_verify_dir(run_dir: Path, record: KpiRecord) -> Path:
    staging = staging_dir(run_dir / VERIFY_DIR)
    write_kpi(staging / KPI_NAME, record)
    _write_tables(staging, record)
    return publish_dir(staging, run_dir / VERIFY_DIR)


def _write_tables(folder: Path, record: KpiRecord) -> None:
    models = record.models
    write_csv_atomic(folder / VERIFY_METRICS_CSV, [
        {"model": n, "kind": m["kind"], "runtime": m["runtime"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
         "teacher_agreement": m.get("agreement"), "mean_kl_vs_teacher": m.get("mean_kl")} for n, m in models.items()])
    write_csv_atomic(folder / PER_CLASS_CSV, [
        {"model": n, "class": c, **v} for n, m in models.items() for c, v in m["per_class"].items()])
    write_csv_atomic(folder / ROBUSTNESS_CSV, record.robustness["rows"])
    write_csv_atomic(folder / ROBUSTNESS_SUMMARY_CSV, [
        {"model": n, "families": part, "clean_accuracy": s["clean_accuracy"], "mean_accuracy": s[part]["mean_accuracy"],
         "relative_robustness": s[part]["relative_robustness"], "flip_rate": s[part]["flip_rate"],
         "teacher_agreement": s[part]["teacher_agreement"]}
        for n, s in record.robustness["summary"].items() for part in ("all", "in_recipe", "held_out")])
    write_csv_atomic(folder / LATENCY_CSV, record.latency["rows"])
    write_csv_atomic(folder / RELIABILITY_CSV, record.calibration["reliability_test"])
    write_csv_atomic(folder / GATE_CSV, [c.to_dict() for c in record.gate.checks])


def retune_threshold(run_dir: str | Path, target: ThresholdTarget, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``kit threshold``: a new operating threshold for a new target, without re-exporting.

    Uses the bundle's deployed runtime and its stored temperature; updates ``model.json`` and, when
    verification has run, the operating section and the gate in ``verify/kpi.json``.
    """
    run_dir = Path(run_dir)
    require_stages(run_dir, ["export"], "kit threshold")
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    bundle = run_dir / BUNDLE_DIR
    manifest = read_manifest(bundle)
    classes, spec = manifest.classes, manifest.preprocess
    deployed = auto_runtime(manifest.artefacts)
    scorer = bundle_scorer(bundle, deployed)
    val, test = load_split(run_dir, "val", spec, classes), load_split(run_dir, "test", spec, classes)
    held_out, certified_on = certification_split(run_dir, spec, classes, val, recipe.data.split.seed,
                                                 recipe.verify.certify_share)
    operating = operating_section(target, classes, scorer.logits(held_out.inputs(spec)), held_out.labels,
                                  {deployed: scorer.logits(test.inputs(spec))}, test.labels, manifest.temperature,
                                  manifest.operating_threshold, [deployed], deployed, recipe.line.ok_class, recipe.line.defect_rate,
                                  certified_on)
    write_manifest_calibration(bundle, manifest.temperature, operating["threshold"], None, operating)
    if operating.get("certificate"):
        log(f"threshold: {operating['certificate']['message']}")
    path = kpi_path(run_dir)
    if path.is_file():
        record = read_kpi(path)
        measured = {**record.measured.to_dict(), **operating_measures(operating)}
        intervals = {**record.intervals.to_dict(), **operating["test"]["intervals"]}
        previous = record.previous.to_dict() if record.previous is not None else None
        verdict = regression.with_regression_checks(
            gate.evaluate_gate(measured, recipe.kpi, recipe.line.takt_ms, gate_bounds(intervals, operating, record.differences)),
            previous)
        record.operating, record.measured = Operating.model_validate(operating), Measured.model_validate(measured)
        record.intervals, record.gate = Intervals.model_validate(intervals), verdict
        record.release = Release.model_validate(release_verdict(verdict))
        write_kpi(path, record)
        write_csv_atomic(path.parent / GATE_CSV, [c.to_dict() for c in record.gate.checks])
        log(f"threshold: updated {path}; verdict {record.verdict.label}")
    mark_report_stale(run_dir, "kit threshold")
    record_hashes(run_dir)  # what kit verify recorded, now as kit threshold rewrote it
    return operating

