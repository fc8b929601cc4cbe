"""FP32 ONNX export with fixed tensor names and a dynamic batch axis, checked by onnx itself."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from kit.errors import KitError
from kit.io import write_atomic

INPUT_NAME, OUTPUT_NAME = "images", "logits"
HEATMAP_NAME = "heatmap"  # optional second output: class activation maps (kit.export.heatmap_head)
MANIFEST_KEY = "inspection_kit_manifest"


class ExportError(KitError):
    """An artefact could not be produced."""


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], *, opset: int = 18,
                max_batch: int = 4096, heatmap: bool = False, outputs: list[str] | None = None) -> str:
    """Export with torch's TorchScript-based exporter; fall back to the ``torch.export`` one.

    The TorchScript exporter goes first because its graphs are read correctly by more
    consumers: OpenCV 5's DNN module computes wrong logits for timm's MobileNetV3 exported by
    the ``torch.export`` path (opset 18) and right ones for the TorchScript path (see
    tests/test_export.py::test_opencv_dnn_gives_the_same_top1). It is also ~8x faster.
    Returns the exporter used (it goes into the manifest). The graph is checked with
    ``onnx.checker`` and shape inference before the file takes its final name.
    ``heatmap``: the model returns ``(logits, heatmap)``, exported as a second output. ``outputs``: other output
    names, in the model's return order (an anomaly model's ``score``, ``anomaly_map``, ``kind_distance``).
    """
    model = model.eval().cpu()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    path = Path(path)
    named = outputs
    outputs = list(named) if named else [OUTPUT_NAME, HEATMAP_NAME] if heatmap else [OUTPUT_NAME]
    errors = []
    for exporter in ("torchscript", "dynamo"):
        try:
            write_atomic(path, lambda tmp: _export(model, example, tmp, opset, max_batch, exporter, outputs))
            check_onnx(path, heatmap=heatmap, outputs=named)
            return exporter
        except ExportError:
            raise
        except Exception as exc:  # exporter internals raise many types; try the other exporter
            errors.append(f"{exporter}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    raise ExportError(f"{path}: ONNX export failed ({'; '.join(errors)})")


def _export(model: nn.Module, example: torch.Tensor, out: Path, opset: int, max_batch: int, exporter: str,
            outputs: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=max_batch)
            program = torch.onnx.export(
                model, (example,), input_names=[INPUT_NAME], output_names=outputs,
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
            )
            program.save(str(out))
        else:
            torch.onnx.export(
                model, (example,), str(out), input_names=[INPUT_NAME], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]}, opset_version=min(opset, 20),
                dynamo=False,
            )


def check_onnx(path: Path, heatmap: bool | None = None, outputs: list[str] | None = None) -> onnx.ModelProto:
    """``heatmap``: True / False require / forbid the ``heatmap`` output; None accepts either. ``outputs``: exactly
    these output names instead (anomaly graphs)."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises ValidationError, InferenceError, DecodeError ...
        raise ExportError(f"{path}: invalid ONNX model ({str(exc).strip().splitlines()[0]})") from None
    inputs = [i.name for i in model.graph.input]
    expected_names = outputs
    outputs = [o.name for o in model.graph.output]
    if expected_names:
        if inputs != [INPUT_NAME] or outputs != list(expected_names):
            raise ExportError(f"{path}: expected tensors {INPUT_NAME!r} -> {list(expected_names)}, got {inputs} -> {outputs}")
        return model
    with_heatmap = outputs == [OUTPUT_NAME, HEATMAP_NAME]
    if inputs != [INPUT_NAME] or not (outputs == [OUTPUT_NAME] or with_heatmap) or heatmap not in (None, with_heatmap):
        expected = [OUTPUT_NAME, HEATMAP_NAME] if heatmap else [OUTPUT_NAME]
        raise ExportError(f"{path}: expected tensors {INPUT_NAME!r} -> {expected}, got {inputs} -> {outputs}")
    return model


def embed_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into the ONNX file's ``metadata_props`` (atomically)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, json.dumps(manifest, sort_keys=True)
    write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))


def read_embedded_manifest(path: str | Path) -> dict[str, Any] | None:
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == MANIFEST_KEY:
            return json.loads(prop.value)
    return None
