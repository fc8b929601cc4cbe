"""``kit export``: a run's student -> ``RUN_DIR/bundle/``, verified by the parity ladder.

The bundle is assembled in a staging folder and renamed into place when complete, so a
crash never leaves a ``bundle/`` that looks finished. Every runtime in the ladder is the real
edge ``Predictor`` on the staged bundle, not a look-alike.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, get_args

import numpy as np
import torch

from deploy.manifest import MANIFEST_NAME, Manifest, sha256_file
from deploy.manifest import read_manifest
from deploy.predictor import softmax
from deploy.preprocess import PreprocessSpec, load_and_preprocess, to_tensor
from deploy.profile import PROFILE_NAME, build_profile, statistics_table
from kit.data import preprocess_spec
from kit.errors import ArgumentError, KitError
from kit.export.heatmap_head import HeatmapModel, bundle_heatmaps, fit_heatmap_head, torch_heatmaps
from kit.export.onnx_fp32 import embed_manifest, export_onnx
from kit.export.onnx_int8 import export_onnx_int8
from kit.export.parity import Rung, run_ladder
from kit.evaluate import EVAL_BATCH
from kit.verdict import describe_failures
from kit.export.tensorrt_engine import EngineSkipped, build_engine
from kit.export.triton import write_triton_repository
from kit.io import publish_dir, staging_dir, write_json_atomic
from kit.models import load_model
from kit.recipe import read_recipe_lock, recipe_hash
from kit.recipe.schema import ExportFormat
from kit.scorers import bundle_scorer, checkpoint_spec, model_scorer
from kit.rundir import (BUNDLE_DIR, CERTIFY_SPLIT, LOCK_NAME, PARITY_NAME, checkpoint_path, has_split, load_split, mark_report_stale, mark_stage, read_split,
                        require_stages)

FILES: dict[str, str] = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx",
                         "tensorrt-fp16": "model.fp16.plan", "tensorrt-int8": "model.int8.plan"}
CALIBRATION_CACHE = "calibration.cache"


class ParityGateError(KitError):
    """The bundle was written, but a rung of the parity ladder missed its tolerance."""


@dataclass
class ExportResult:
    bundle_dir: Path
    parity: dict[str, Any]
    built: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # format -> reason


def _versions() -> dict[str, str]:
    import cv2
    import onnx
    import onnxruntime
    import timm

    out = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
           "numpy": np.__version__}
    try:
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return out


def _calibration_set(run_dir: Path, spec, count: int, seed: int) -> np.ndarray:
    """``count`` training images (seeded pick), through the runtime's own preprocessing."""
    paths, _labels = read_split(run_dir, "train")
    order = np.random.default_rng(seed).permutation(len(paths))[:count]
    return np.stack([load_and_preprocess(paths[i], spec) for i in sorted(order)])


def chosen_formats(formats: list[str] | None, recipe_formats: list[str]) -> list[str]:
    """The formats to build (the command's, else the recipe's), checked; ONNX FP32 first, every other is built from it."""
    formats = list(formats or recipe_formats)
    valid = get_args(ExportFormat)
    for fmt in formats:
        if fmt not in valid:
            raise ArgumentError("formats", f"unknown format {fmt!r}; choose from {', '.join(valid)}")
    if "onnx" not in formats:
        formats.insert(0, "onnx")
    return formats


def export_bundle(run_dir: str | Path, formats: list[ExportFormat] | None = None,
                  log: Callable[[str], None] = print) -> ExportResult:
    run_dir = Path(run_dir)
    state = require_stages(run_dir, ["student"], "kit export")
    started = time.perf_counter()
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    cfg = recipe.export
    formats = chosen_formats(formats, cfg.formats)
    spec = preprocess_spec(recipe)
    student, student_ckpt = load_model(checkpoint_path(run_dir, "student"))
    teacher, teacher_ckpt = load_model(checkpoint_path(run_dir, "teacher"))
    classes = list(student_ckpt["classes"])
    input_shape = (spec.num_channels, *spec.image_size)

    staging = staging_dir(run_dir / BUNDLE_DIR)
    artefacts: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}

    # Training images: the INT8 calibration set, and what the in-graph heatmap's projection is fitted on.
    calibration = _calibration_set(run_dir, spec, cfg.calibration_images, recipe.seed)
    head = fit_heatmap_head(student, calibration)
    exported = HeatmapModel(student, head) if head is not None else student
    exporter = export_onnx(exported, staging / FILES["onnx"], input_shape, opset=cfg.opset,
                           max_batch=max(cfg.max_batch, 4096), heatmap=head is not None)
    artefacts["onnx"] = {"file": FILES["onnx"], "exporter": exporter, "opset": cfg.opset}
    log(f"onnx: {FILES['onnx']} (exporter: {exporter}, opset {cfg.opset})")
    if head is not None:
        log(f"heatmap: in-graph CAM from {head.layer} (stride {head.reduction}), "
            f"fitted projection picks the model's top-1 on {head.probe_agreement:.1%} of {len(calibration)} training images")
    else:
        log(f"heatmap: {student_ckpt['model_args']['arch']} names no feature levels; the bundle falls back to occlusion")
    if "onnx-int8" in formats:
        export_onnx_int8(staging / FILES["onnx"], staging / FILES["onnx-int8"], calibration, method=cfg.calibration_method)
        artefacts["onnx-int8"] = {"file": FILES["onnx-int8"], "quantization": "QDQ static, per-channel int8 weights",
                                  "calibration_images": int(len(calibration)), "calibration_method": cfg.calibration_method}
        log(f"onnx-int8: {FILES['onnx-int8']} ({len(calibration)} calibration images, {cfg.calibration_method})")
    for fmt in ("tensorrt-fp16", "tensorrt-int8"):
        if fmt not in formats:
            continue
        precision = fmt.split("-")[1]
        try:
            fingerprint = build_engine(
                staging / FILES["onnx"], staging / FILES[fmt], precision, input_shape=input_shape,
                batch_range=(cfg.min_batch, cfg.opt_batch, cfg.max_batch), workspace_mb=cfg.workspace_mb,
                calibration=calibration, cache_path=staging / CALIBRATION_CACHE,
                qdq_onnx_path=staging / FILES["onnx-int8"],
            )
            artefacts[fmt] = {"file": FILES[fmt], "fingerprint": fingerprint}
            log(f"{fmt}: {FILES[fmt]} ({fingerprint['gpu']}, TensorRT {fingerprint['tensorrt']})")
        except EngineSkipped as exc:
            skipped[fmt] = str(exc)
            log(f"{fmt}: skipped ({exc})")

    manifest = Manifest(
        classes=classes, preprocess=spec, artefacts={}, temperature=1.0, operating_threshold=cfg.operating_threshold,
        ok_class=recipe.line.ok_class or ("ok" if "ok" in classes else None),
        extra={
            "line": recipe.line.name, "recipe_hash": recipe_hash(recipe),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "student": {**student_ckpt["model_args"], "method": student_ckpt.get("method")},
            "versions": _versions(), "platform": f"{platform.system()} {platform.machine()}",
        },
    )
    if head is not None:
        manifest.extra["heatmap"] = head.describe()
    for fmt in ("onnx", "onnx-int8"):
        if fmt in artefacts:
            embed_manifest(staging / FILES[fmt], manifest.to_dict())
    for fmt, entry in artefacts.items():
        path = staging / entry["file"]
        entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    manifest.artefacts = artefacts
    if "triton" in formats:  # a model repository for Triton servers: a separate manifest entry, not a runtime
        manifest.extra["triton"] = write_triton_repository(staging, manifest, max_batch_size=cfg.max_batch,
                                                           preferred_batch=[cfg.opt_batch])
        log(f"triton: {', '.join(manifest.extra['triton']['models'])} in triton/ (config.pbtxt, labels.txt, 1/)")
    write_json_atomic(staging / MANIFEST_NAME, manifest.to_dict())

    parity = _parity_ladder(run_dir, staging, (teacher, checkpoint_spec(teacher_ckpt)), student, spec, classes, manifest, recipe,
                            exported if head is not None else None)
    write_json_atomic(staging / PARITY_NAME, parity)
    write_json_atomic(staging / PROFILE_NAME, _reference_profile(run_dir, staging, spec, recipe))
    manifest.extra["profile"] = {"file": PROFILE_NAME, "sha256": sha256_file(staging / PROFILE_NAME)}
    write_json_atomic(staging / MANIFEST_NAME, manifest.to_dict())

    bundle = publish_dir(staging, run_dir / BUNDLE_DIR)
    mark_report_stale(run_dir, "kit export")  # the report described the previous bundle
    mark_stage(  # drops verify and report: they measured the previous bundle
        run_dir, state, "export", time.perf_counter() - started, status="done" if parity["passed"] else "gate-failed",
               built=list(artefacts), skipped=skipped)
    result = ExportResult(bundle_dir=bundle, parity=parity, built=list(artefacts), skipped=skipped)
    if not parity["passed"]:
        raise ParityGateError(f"{bundle}: parity gate failed: {describe_failures(parity['gate'])}")
    return result


def _reference_profile(run_dir: Path, bundle: Path, spec, recipe) -> dict[str, Any]:
    """What ``deploy monitor`` compares new images with: imaging statistics and ONNX FP32 logits on
    the held-out (validation, its certification share, test) images, the closest thing to production the run has seen."""
    classes = read_manifest(bundle).classes
    splits = ("val", CERTIFY_SPLIT, "test") if has_split(run_dir, CERTIFY_SPLIT) else ("val", "test")
    images = np.concatenate([load_split(run_dir, split, spec, classes).images for split in splits])
    logits = bundle_scorer(bundle, "onnx").logits(to_tensor(images, spec))
    return build_profile(statistics_table(list(images)), logits, source="validation + test splits",
                         thresholds=recipe.monitor.model_dump())


def _parity_ladder(run_dir: Path, bundle: Path, teacher: tuple[Any, PreprocessSpec | None], student, spec,
                   classes: list[str], manifest: Manifest, recipe, with_heatmap: HeatmapModel | None = None) -> dict[str, Any]:
    """``teacher``: the model and the input it records (None or ``spec``: the student's)."""
    test = load_split(run_dir, "test", spec, classes)
    # A fresh C-ordered copy: canonical strides even for one channel, where the batched view's channel
    # stride would make torch pick its channels-last kernels (same values to ~1e-6, other rounding).
    inputs = np.array(test.inputs(spec), order="C", copy=True)
    teacher_model, teacher_spec = teacher
    teacher_inputs = inputs if teacher_spec in (None, spec) else \
        np.array(load_split(run_dir, "test", teacher_spec, classes).inputs(teacher_spec), order="C", copy=True)
    cpu = torch.device("cpu")
    # The torch rungs batch as the run's evaluation does, so their figures equal metrics.json's.
    scorers = [model_scorer(role, model, cpu, checkpoint_path(run_dir, role), batch_size=EVAL_BATCH)
               for role, model in (("teacher", teacher_model), ("student", student))]
    scorers += [bundle_scorer(bundle, fmt) for fmt in manifest.artefacts]
    rungs = [Rung(s.name, "torch (cpu)" if s.kind == "torch" else s.runtime,
                  softmax(s.logits(teacher_inputs if s.name == "teacher" else inputs), manifest.temperature))
             for s in scorers]
    if with_heatmap is not None:  # the heatmap output, rung by rung, from the torch student with its head on
        by_name = {r.name: r for r in rungs}
        by_name["student"].heatmaps = torch_heatmaps(with_heatmap, inputs, batch_size=EVAL_BATCH)[1]
        for fmt in manifest.artefacts:
            by_name[fmt].heatmaps = bundle_heatmaps(bundle, fmt, inputs)
    return run_ladder(rungs, test.labels, [str(p) for p in test.paths], manifest.operating_threshold, recipe.export.parity)
