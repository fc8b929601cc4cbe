"""ONNX Runtime for the FP32 and INT8 ONNX artefacts; providers TensorRT > CUDA > CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeployError
from deploy.manifest import EMBEDDED_MANIFEST_KEY, Manifest

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """The requested providers, or every available one in preference order."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise DeployError(f"ONNX Runtime provider {missing[0]} is not available here (available: {', '.join(available)})")
        return list(requested)
    return [p for p in PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    def __init__(self, name: str, model_path: Path, *, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, allow_spinning: bool = True) -> None:
        """``allow_spinning=False``: idle intra-op threads sleep instead of spinning. A server wants that:
        between batches the spinning threads take the CPU its event loop needs (deploy serve on 2 cores:
        1,550 instead of 1,130-1,375 images/s with 8 clients)."""
        import onnxruntime as ort

        self.name = name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=choose_providers(providers))
        except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeployError(f"{model_path}: ONNX Runtime cannot load the model ({first})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # per output, its declared shape: an int where the graph fixes a dimension, None where it is symbolic
        self.output_shapes = {o.name: [d if isinstance(d, int) else None for d in o.shape] for o in self.session.get_outputs()}
        # The decision needs the logits alone (first output of older bundles, named "logits" in all).
        self.logits_name = "logits" if "logits" in self.output_names else self.output_names[0]
        self.intra_op_threads = intra_op_threads
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.logits_name)
        # scores per image where the graph declares it ([batch, 6]); None where it is symbolic ([batch, "n"])
        self.output_width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        # the manifest kit export embedded in the file (deploy.manifest.check_embedded_manifest)
        self.embedded_manifest = self.session.get_modelmeta().custom_metadata_map.get(EMBEDDED_MANIFEST_KEY)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.logits_name], {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    def run_named(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name, in one pass (an anomaly bundle's score, anomaly_map, kind_distance)."""
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(self.output_names, outputs))

    def run_with_heatmap(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the in-graph ``heatmap`` output (batch x classes x h x w), in one pass."""
        if "heatmap" not in self.output_names:
            raise DeployError(f"{self.name}: the model has no 'heatmap' output (outputs: {', '.join(self.output_names)})")
        logits, heatmap = self.session.run([self.logits_name, "heatmap"],
                                           {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return logits, heatmap

    def describe(self) -> str:
        threads = f", {self.intra_op_threads} threads" if self.intra_op_threads else ""
        return f"{self.name} on ONNX Runtime ({', '.join(self.providers)}{threads})"


def _factory(fmt: str):
    def build(model_path: Path, manifest: Manifest, options: dict[str, Any]) -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(fmt, model_path, providers=options.get("providers"),
                                  intra_op_threads=options.get("intra_op_threads"),
                                  allow_spinning=options.get("allow_spinning", True))

    return build


# What this backend runs, by bundle format; ``deploy.runtimes`` registers these when a runtime is
# first asked for (a backend never imports the registry: the registry imports the backends).
RUNTIMES = {"onnx": _factory("onnx"), "onnx-int8": _factory("onnx-int8")}
