"""TensorRT engines built with the TensorRT Python API: plain plans that ``trtexec`` loads.

TensorRT 10: FP16 via the builder flag; INT8 by implicit calibration (entropy calibrator on
the same calibration images, with a calibration cache file). TensorRT 11 removed both (strong
typing only): there the INT8 engine is built from the QDQ ``model.int8.onnx`` (explicit
quantization) and FP16 is skipped with its reason. Nothing is prepended to a plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.runtimes.tensorrt_backend import machine_fingerprint, tensorrt_unavailable_reason
from kit.export.onnx_fp32 import INPUT_NAME, ExportError
from kit.io import write_atomic


class EngineSkipped(Exception):
    """An engine cannot be built on this machine; the message says why (one line)."""


def _calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path):
    import torch  # device buffers for calibration; the kit side may use torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches, self.index = batches, 0
            self.device_batch: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names: list[str]):
            if self.index >= len(self.batches):
                return None
            self.device_batch = torch.from_numpy(np.ascontiguousarray(self.batches[self.index])).cuda()
            self.index += 1
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            write_atomic(cache_path, lambda tmp: tmp.write_bytes(bytes(cache)))

    return EntropyCalibrator()


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    *,
    input_shape: tuple[int, int, int],
    batch_range: tuple[int, int, int],
    workspace_mb: int,
    calibration: np.ndarray | None = None,
    cache_path: Path | None = None,
    qdq_onnx_path: Path | None = None,
) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path``; returns the build fingerprint for the manifest.

    ``qdq_onnx_path``: the QDQ INT8 model, the source of an INT8 engine on TensorRT >= 11.
    """
    reason = tensorrt_unavailable_reason()
    if reason:
        raise EngineSkipped(reason)
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11
    if strongly_typed and precision == "fp16":
        raise EngineSkipped(f"TensorRT {trt.__version__} builds FP16 only from an FP16 ONNX model (ModelOpt AutoCast)")
    if strongly_typed and precision == "int8":
        if qdq_onnx_path is None or not qdq_onnx_path.is_file():
            raise EngineSkipped(f"TensorRT {trt.__version__} builds INT8 from model.int8.onnx; add onnx-int8 to the formats")
        onnx_path = qdq_onnx_path  # explicit quantization: the Q/DQ nodes carry the scales
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    lo, opt, hi = batch_range
    profile.set_shape(INPUT_NAME, (lo, *input_shape), (opt, *input_shape), (hi, *input_shape))
    config.add_optimization_profile(profile)
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines fall back to FP16, not FP32, where INT8 has no kernel
        if precision == "int8":
            if calibration is None or cache_path is None:
                raise ExportError("an INT8 engine needs calibration images and a cache path")
            config.set_flag(trt.BuilderFlag.INT8)
            batch = min(opt, len(calibration))
            batches = [calibration[i : i + batch] for i in range(0, len(calibration) - batch + 1, batch)]
            config.int8_calibrator = _calibrator(trt, batches, cache_path)
            config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{plan_path}: TensorRT failed to build the {precision} engine (see the log above)")
    write_atomic(plan_path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    return {**machine_fingerprint(), "precision": precision, "batch_range": list(batch_range),
            "quantization": "explicit (QDQ ONNX)" if strongly_typed and precision == "int8" else
            ("implicit (entropy calibration)" if precision == "int8" else "none")}
