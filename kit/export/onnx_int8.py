"""INT8 ONNX by ONNX Runtime static quantization (QDQ, per-channel weights).

Calibration images come from the training split and go through ``deploy.preprocess``, the
runtime's own preprocessing, so the calibrated ranges are the ranges the edge will see.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from kit.export.onnx_fp32 import HEATMAP_NAME, INPUT_NAME, ExportError, check_onnx
from kit.io import write_atomic

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class _BatchReader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def even_batch_size(n: int, cap: int) -> int:
    """The largest batch size <= cap that divides n: the histogram calibrators (entropy,
    percentile) stack per-batch outputs and fail on a ragged last batch."""
    return next(b for b in range(min(cap, n), 0, -1) if n % b == 0)


def heatmap_nodes(path: Path) -> list[str]:
    """The node that makes the ``heatmap`` output (the in-graph CAM projection), kept in FP32: one
    per-tensor int8 range over every class's map would leave a few levels for the spatial detail
    of one class (measured on the sample line: peak cell agreement with FP32 0.82 quantized; its
    input, the shared stride-8 features, stays quantized)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if HEATMAP_NAME in node.output and node.name]


def _nodes_under(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    if not prefixes:
        return []
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.name.startswith(prefixes)]


def export_onnx_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, *, method: str = "minmax",
                     batch_size: int = 16, outputs: list[str] | None = None, op_types: list[str] | None = None,
                     keep_fp32: tuple[str, ...] = ()) -> None:
    """Static QDQ quantization of ``fp32_path`` calibrated on ``calibration`` (float32 NCHW). ``outputs``: the
    graph's output names when they are not a classifier's; ``op_types``: quantize only these operators (an anomaly
    graph quantizes its convolutions and keeps the teacher-student difference in FP32: a difference of two
    quantized maps is mostly rounding); ``keep_fp32``: node-name prefixes left in FP32 (an anomaly graph's teacher,
    whose features are the student's target: quantized, they moved 5 % of the sparse line's reject decisions)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError(f"{out_path}: no calibration images")
    reader_cls = type("KitCalibrationReader", (_BatchReader, CalibrationDataReader), {})
    size = even_batch_size(len(calibration), batch_size)
    reader = reader_cls([calibration[i : i + size] for i in range(0, len(calibration), size)])
    with tempfile.TemporaryDirectory(prefix="kit-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference trips on some graphs; the plain model quantizes too
            prepared = fp32_path

        exclude = heatmap_nodes(prepared) + _nodes_under(prepared, keep_fp32)

        def quantize(tmp_out: Path) -> None:
            quantize_static(
                str(prepared), str(tmp_out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, _METHODS[method]), nodes_to_exclude=exclude,
                op_types_to_quantize=op_types,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )

        try:
            write_atomic(out_path, quantize)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"{out_path}: INT8 quantization failed ({str(exc).strip().splitlines()[0]})") from None
    check_onnx(out_path, outputs=outputs)
