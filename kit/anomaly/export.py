"""``kit export`` in anomaly mode: ``student.pt`` (the whole ``AnomalyModel``) -> ``RUN_DIR/bundle/``.

The graph computes everything the edge needs: ``score``, ``anomaly_map`` (and the hybrid's ``kind_distance``),
so no runtime re-implements the scoring. INT8 quantizes the student's convolutions only: the teacher's features
are the student's target and the difference of the two is the score, so both stay in FP32 (quantizing the teacher
flipped 5 % of the sparse line's reject decisions; the student alone, none). The parity ladder compares scores, maps and decisions rung by rung (torch -> ONNX FP32 -> INT8 /
TensorRT) at the bundle's reject threshold. The manifest's decision block starts at the provisional threshold
1.0 (the 99th percentile of good validation parts) until ``kit verify`` certifies the operating point.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from deploy.decision import AnomalyRule
from deploy.manifest import MANIFEST_NAME, Manifest, sha256_file
from deploy.predictor import Predictor
from deploy.preprocess import load_and_preprocess, to_tensor
from deploy.profile import PROFILE_NAME, build_anomaly_profile, statistics_table
from kit.anomaly.model import AnomalyModel, load_anomaly_model
from kit.data import preprocess_spec
from kit.errors import ArgumentError
from kit.export.bundle import CALIBRATION_CACHE, FILES, ParityGateError, _versions, chosen_formats
from kit.export.onnx_fp32 import embed_manifest, export_onnx
from kit.export.onnx_int8 import export_onnx_int8
from kit.export.tensorrt_engine import EngineSkipped, build_engine
from kit.io import publish_dir, staging_dir, write_json_atomic
from kit.recipe import read_recipe_lock, recipe_hash
from kit.rundir import (BUNDLE_DIR, LOCK_NAME, PARITY_NAME, checkpoint_path, load_split, mark_report_stale, mark_stage,
                        read_split, require_stages)
from kit.verdict import check, describe_failures, verdict

OUTPUTS = ["score", "anomaly_map"]
KIND_OUTPUT = "kind_distance"
DEFECT_LABEL = "defect"
PROVISIONAL_THRESHOLD = 1.0  # the 99th percentile of good validation parts, until kit verify certifies


def output_names(model: AnomalyModel) -> list[str]:
    return OUTPUTS + ([KIND_OUTPUT] if model.named_kinds else [])


def _good_calibration(run_dir: Path, spec, ok_class: str, count: int, seed: int) -> np.ndarray:
    """INT8 ranges from good training parts: the parts the graph sees most."""
    paths, labels = read_split(run_dir, "train")
    good = [p for p, label in zip(paths, labels) if label == ok_class]
    order = np.random.default_rng(seed).permutation(len(good))[:count]
    return np.stack([load_and_preprocess(good[i], spec) for i in sorted(order)])


def good_score_quantiles(scores: np.ndarray) -> list[float]:
    """The 0 .. 100 % quantiles of good parts' scores: what ``deploy.decision.AnomalyRule`` turns into confidence."""
    return [float(v) for v in np.quantile(np.asarray(scores, np.float64), np.linspace(0, 1, 101))]


def anomaly_rule(recipe: Any, args: dict[str, Any], reject_at: float, accept_below: float, good_scores: list[float],
                 certified: bool) -> AnomalyRule:
    return AnomalyRule(ok_class=recipe.line.ok_class, reject_at=float(reject_at), accept_below=float(accept_below),
                       defect_label=DEFECT_LABEL, kinds=tuple(args.get("kinds") or ()),
                       kind_radius=dict(args.get("kind_radius") or {}), unknown_label=recipe.anomaly.unknown_label,
                       good_scores=tuple(good_scores), certified=certified)


@torch.no_grad()
def torch_outputs(model: AnomalyModel, inputs: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    model.eval()
    parts = [model(torch.from_numpy(inputs[i:i + batch])) for i in range(0, len(inputs), batch)]
    return [torch.cat([p[k] for p in parts]).numpy() for k in range(len(parts[0]))]


def bundle_outputs(bundle: Path, fmt: str, inputs: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """The artefact's outputs in the graph's order, through the edge runtime itself."""
    return predictor_outputs(Predictor.from_bundle(bundle, fmt), inputs, batch)


def predictor_outputs(predictor: Predictor, inputs: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """``bundle_outputs`` with a loaded Predictor: callers that score many sets load (and hash-check) it once."""
    parts = [predictor.runtime.run_named(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]
    names = list(parts[0])
    return [np.concatenate([p[n] for p in parts]) for n in names]


def export_anomaly_bundle(run_dir: str | Path, formats: list[str] | None = None,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
    run_dir = Path(run_dir)
    state = require_stages(run_dir, ["student"], "kit export")
    started = time.perf_counter()
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    cfg = recipe.export
    formats = chosen_formats(formats, cfg.formats)
    if "triton" in formats:
        raise ArgumentError("formats", "triton serves classifiers' logits; an anomaly bundle is served by `deploy serve`")
    spec = preprocess_spec(recipe)
    model, body = load_anomaly_model(checkpoint_path(run_dir, "student"))
    args, names = body["model_args"], output_names(model)
    staging = staging_dir(run_dir / BUNDLE_DIR)
    input_shape = (spec.num_channels, *spec.image_size)
    exporter = export_onnx(model, staging / FILES["onnx"], input_shape, opset=cfg.opset, max_batch=max(cfg.max_batch, 4096),
                           outputs=names)
    artefacts: dict[str, dict[str, Any]] = {"onnx": {"file": FILES["onnx"], "exporter": exporter, "opset": cfg.opset}}
    log(f"onnx: {FILES['onnx']} (exporter: {exporter}, opset {cfg.opset}; outputs {', '.join(names)})")
    calibration = _good_calibration(run_dir, spec, recipe.line.ok_class, cfg.calibration_images, recipe.seed)
    if "onnx-int8" in formats:
        export_onnx_int8(staging / FILES["onnx"], staging / FILES["onnx-int8"], calibration, method=cfg.calibration_method,
                         outputs=names, op_types=["Conv"], keep_fp32=("/teacher/",))
        artefacts["onnx-int8"] = {"file": FILES["onnx-int8"], "quantization": "QDQ static, the student's convolutions "
                                  "in int8, the teacher and the scoring in FP32",
                                  "calibration_images": int(len(calibration)), "calibration_method": cfg.calibration_method}
        log(f"onnx-int8: {FILES['onnx-int8']} ({len(calibration)} good calibration images; the student in int8, the "
            "teacher in FP32: its features are the target, and quantized they moved 5 % of the sparse line's decisions)")
    skipped: dict[str, str] = {}
    for fmt in ("tensorrt-fp16", "tensorrt-int8"):
        if fmt not in formats:
            continue
        try:
            fingerprint = build_engine(staging / FILES["onnx"], staging / FILES[fmt], fmt.split("-")[1],
                                       input_shape=input_shape, batch_range=(cfg.min_batch, cfg.opt_batch, cfg.max_batch),
                                       workspace_mb=cfg.workspace_mb, calibration=calibration,
                                       cache_path=staging / CALIBRATION_CACHE, qdq_onnx_path=staging / FILES["onnx-int8"])
            artefacts[fmt] = {"file": FILES[fmt], "fingerprint": fingerprint}
        except EngineSkipped as exc:
            skipped[fmt] = str(exc)
            log(f"{fmt}: skipped ({exc})")

    val = load_split(run_dir, "val", spec, _classes(body))
    ok_index = _classes(body).index(recipe.line.ok_class)
    val_scores = torch_outputs(model, val.inputs(spec)[val.labels == ok_index])[0]
    rule = anomaly_rule(recipe, args, PROVISIONAL_THRESHOLD, PROVISIONAL_THRESHOLD, good_score_quantiles(val_scores), False)
    manifest = Manifest(
        classes=rule.labels(), preprocess=spec, artefacts={}, temperature=1.0, operating_threshold=None,
        ok_class=recipe.line.ok_class, task="anomaly", anomaly=rule,
        extra={"line": recipe.line.name, "recipe_hash": recipe_hash(recipe),
               "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "student": {**args, "method": "anomaly"}, "line_classes": _classes(body), "versions": _versions()},
    )
    for fmt in ("onnx", "onnx-int8"):
        if fmt in artefacts:
            embed_manifest(staging / FILES[fmt], manifest.to_dict())
    for entry in artefacts.values():
        path = staging / entry["file"]
        entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    manifest.artefacts = artefacts
    write_json_atomic(staging / MANIFEST_NAME, manifest.to_dict())
    parity = anomaly_parity(run_dir, staging, model, spec, _classes(body), list(artefacts), recipe)
    write_json_atomic(staging / PARITY_NAME, parity)
    write_json_atomic(staging / PROFILE_NAME, reference_profile(run_dir, staging, spec, _classes(body), recipe))
    manifest.extra["profile"] = {"file": PROFILE_NAME, "sha256": sha256_file(staging / PROFILE_NAME)}
    write_json_atomic(staging / MANIFEST_NAME, manifest.to_dict())
    bundle = publish_dir(staging, run_dir / BUNDLE_DIR)
    mark_report_stale(run_dir, "kit export")
    mark_stage(run_dir, state, "export", time.perf_counter() - started, status="done" if parity["passed"] else "gate-failed",
               built=list(artefacts), skipped=skipped)
    if not parity["passed"]:
        raise ParityGateError(f"{bundle}: parity gate failed: {describe_failures(parity['gate'])}")
    return parity


def reference_profile(run_dir: Path, bundle: Path, spec, classes: list[str], recipe: Any) -> dict[str, Any]:
    """What ``deploy monitor`` compares the line with: imaging statistics and the ONNX FP32 scores (and kind
    distances) on the held-out validation + test images, the closest thing to production the run has seen."""
    images = np.concatenate([load_split(run_dir, split, spec, classes).images for split in ("val", "test")])
    outputs = bundle_outputs(bundle, "onnx", to_tensor(images, spec))
    return build_anomaly_profile(statistics_table(list(images)), outputs[0], "validation + test splits",
                                 recipe.monitor.model_dump(), outputs[2] if len(outputs) > 2 else None)


def _classes(body: dict[str, Any]) -> list[str]:
    return list(body["classes"])


def _compare(a: list[np.ndarray], b: list[np.ndarray], threshold: float) -> dict[str, Any]:
    score_delta = np.abs(a[0] - b[0])
    relative = score_delta / np.maximum(np.abs(a[0]), 1.0)
    map_delta = np.abs(a[1] - b[1])
    flipped = (a[0] >= threshold) != (b[0] >= threshold)
    return {"decision_agreement": float(1 - flipped.mean()) if len(flipped) else 1.0, "decisions_flipped": int(flipped.sum()),
            "max_abs_score_delta": float(score_delta.max()) if score_delta.size else 0.0,
            "max_rel_score_delta": float(relative.max()) if relative.size else 0.0,
            "mean_abs_map_delta": float(map_delta.mean()) if map_delta.size else 0.0,
            "peak_agreement": float(np.mean(a[1].reshape(len(a[1]), -1).argmax(1) == b[1].reshape(len(b[1]), -1).argmax(1)))
            if len(a[1]) else 1.0}


PARENT = {"onnx": "student", "onnx-int8": "onnx", "tensorrt-fp16": "onnx", "tensorrt-int8": "onnx"}
AGREEMENT_GATE = {"onnx": "onnx_min_agreement", "onnx-int8": "int8_min_agreement",
                  "tensorrt-fp16": "tensorrt_fp16_min_agreement", "tensorrt-int8": "tensorrt_int8_min_agreement"}


def anomaly_parity(run_dir: Path, bundle: Path, model: AnomalyModel, spec, classes: list[str], formats: list[str],
                   recipe: Any) -> dict[str, Any]:
    """Every rung on the test images: reject decisions at the provisional threshold, scores and maps."""
    test = load_split(run_dir, "test", spec, classes)
    inputs = np.array(test.inputs(spec), order="C", copy=True)
    outputs = {"student": torch_outputs(model, inputs)}
    for fmt in formats:
        outputs[fmt] = bundle_outputs(bundle, fmt, inputs)
    gates, rows, checks = recipe.export.parity, [], []
    for name, out in outputs.items():
        row: dict[str, Any] = {"rung": name, "runtime": "torch (cpu)" if name == "student" else name}
        parent = PARENT.get(name)
        if parent in outputs:
            row["parent"] = parent
            row["vs_parent"] = vs = _compare(outputs[parent], out, PROVISIONAL_THRESHOLD)
            checks.append(check(f"export.parity.{AGREEMENT_GATE[name]}", "decision_agreement",
                                f"{name} reject decisions agree with {parent} at the provisional threshold",
                                vs["decision_agreement"], getattr(gates, AGREEMENT_GATE[name]), ">=", rung=name))
            if name == "onnx":
                checks.append(check("export.parity.anomaly_onnx_max_rel_score_delta", "max_rel_score_delta",
                                    "ONNX FP32 max |delta score| / max(|score|, 1) against the torch model",
                                    vs["max_rel_score_delta"], gates.anomaly_onnx_max_rel_score_delta, "<=", rung=name))
        rows.append(row)
    result = verdict(checks)
    return {"task": "anomaly", "test_images": len(test.labels), "operating_threshold": PROVISIONAL_THRESHOLD,
            "rungs": rows, "gate": result, "passed": result["passed"]}
