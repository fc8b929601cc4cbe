"""A Triton Inference Server model repository inside the bundle (``kit export --formats ...,triton``).

GPU servers that serve many lines run one ``tritonserver --model-repository`` over the repositories
of several bundles. Per bundle:

    triton/<line>/config.pbtxt            platform onnxruntime_onnx
    triton/<line>/labels.txt              the classes, in output order (Triton's classification extension)
    triton/<line>/1/model.onnx            the bundle's model.onnx, byte for byte
    triton/<line>_tensorrt/...            platform tensorrt_plan, 1/model.plan, where an engine was built

Names, types and dims come from the manifest (and, for outputs beyond ``logits``, from the ONNX
graph itself), ``max_batch_size`` from the export's batch range, dynamic batching waits at most
``max_queue_delay_us``. Preprocessing is not in the model: clients run ``deploy.preprocess`` with the
bundle's ``model.json`` and apply softmax(logits / temperature) and the decision rule from it, so
preprocessing stays one implementation. (Reference: Triton's model configuration documentation,
``model_config.proto``.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from deploy.manifest import Manifest, sha256_file

TRITON_DIR = "triton"
LABELS_NAME = "labels.txt"
VERSION = "1"

# ONNX TensorProto element type -> Triton data type
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
_MANIFEST_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _onnx_outputs(path: Path) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims without the batch dimension; -1 where dynamic) of each graph output."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
        out.append((value.name, _TRITON_TYPES.get(tensor.elem_type, "TYPE_FP32"), dims))
    return out


def _dims(values: list[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def triton_config(name: str, platform: str, manifest: Manifest, outputs: list[tuple[str, str, list[int]]],
                  max_batch_size: int, preferred_batch: list[int], max_queue_delay_us: int) -> str:
    """config.pbtxt text (protobuf text format of ``inference.ModelConfig``)."""
    spec = manifest.preprocess
    in_type = _MANIFEST_TYPES.get(manifest.to_dict()["input"]["dtype"], "TYPE_FP32")
    logits_name = manifest.to_dict()["output"]["name"]
    lines = [
        "# Triton Inference Server model configuration, written by `kit export` (inspection-kit).",
        "# The model takes preprocessed images: run deploy.preprocess with the bundle's model.json on the client,",
        "# then probabilities = softmax(logits / temperature) and the decision rule, both from that model.json.",
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        '    name: "images"',
        f"    data_type: {in_type}",
        "    format: FORMAT_NCHW",
        f"    dims: {_dims([spec.num_channels, *spec.image_size])}",
        "  }",
        "]",
        "output [",
    ]
    for i, (out_name, out_type, dims) in enumerate(outputs):
        lines += ["  {", f'    name: "{out_name}"', f"    data_type: {out_type}"]
        if out_name == logits_name:
            lines += [f"    dims: {_dims([len(manifest.classes)])}", f'    label_filename: "{LABELS_NAME}"']
        else:
            lines.append(f"    dims: {_dims(dims)}")
        lines.append("  }," if i < len(outputs) - 1 else "  }")
    lines += [
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(preferred_batch)}",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    return "\n".join(lines) + "\n"


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # same bytes, no second copy on disk
    except OSError:
        shutil.copy2(src, dest)


def write_triton_repository(bundle_dir: str | Path, manifest: Manifest, *, max_batch_size: int = 32,
                            preferred_batch: list[int] | None = None, max_queue_delay_us: int = 2000) -> dict[str, Any]:
    """Write ``bundle_dir/triton/`` from the bundle's artefacts; returns the manifest entry (every
    file with its sha256 and size, so a repository copied to a server can be checked)."""
    bundle_dir = Path(bundle_dir)
    line = str(manifest.extra.get("line") or "model")
    preferred = sorted({b for b in (preferred_batch or [8]) if 1 <= b <= max_batch_size}) or [max_batch_size]
    onnx_path = bundle_dir / manifest.artefacts["onnx"]["file"]
    outputs = _onnx_outputs(onnx_path)
    logits_name = manifest.to_dict()["output"]["name"]
    if logits_name not in {o[0] for o in outputs}:
        outputs.insert(0, (logits_name, "TYPE_FP32", [len(manifest.classes)]))
    models = {line: ("onnxruntime_onnx", onnx_path, "model.onnx")}
    plan = next((f for f in ("tensorrt-fp16", "tensorrt-int8") if f in manifest.artefacts), None)
    if plan is not None:
        models[f"{line}_tensorrt"] = ("tensorrt_plan", bundle_dir / manifest.artefacts[plan]["file"], "model.plan")
    entry: dict[str, Any] = {"repository": TRITON_DIR, "models": {}}
    for name, (platform, source, filename) in models.items():
        folder = bundle_dir / TRITON_DIR / name
        _link_or_copy(source, folder / VERSION / filename)
        (folder / LABELS_NAME).write_text("".join(f"{c}\n" for c in manifest.classes), encoding="utf-8")
        (folder / "config.pbtxt").write_text(
            triton_config(name, platform, manifest, outputs, max_batch_size, preferred, max_queue_delay_us), encoding="utf-8")
        files = {}
        for rel in ("config.pbtxt", LABELS_NAME, f"{VERSION}/{filename}"):
            path = folder / rel
            files[f"{TRITON_DIR}/{name}/{rel}"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        entry["models"][name] = {"platform": platform, "max_batch_size": max_batch_size,
                                 "source": plan if platform == "tensorrt_plan" else "onnx", "files": files}
    return entry
