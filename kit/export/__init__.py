"""Export: the student as an edge bundle (ONNX FP32/INT8, TensorRT), checked by the parity ladder."""

from kit.export.bundle import ExportResult, ParityGateError, export_bundle
from kit.export.onnx_fp32 import ExportError

__all__ = ["ExportError", "ExportResult", "ParityGateError", "export_bundle"]
