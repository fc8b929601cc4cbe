"""``Predictor``: bundle in, decisions out. Preprocessing, inference, calibrated probabilities,
and the abstain decision, all driven by the bundle manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from deploy.errors import DeployError
from deploy.manifest import Manifest, read_manifest, verified_artefact
from deploy.preprocess import preprocess_batch, read_image
from deploy.runtimes import Runtime, get_runtime

AUTO_ORDER = ("tensorrt-fp16", "tensorrt-int8", "onnx", "onnx-int8")


@dataclass
class Decision:
    label: str  # predicted class, also when abstaining
    confidence: float  # calibrated max probability
    abstain: bool  # confidence below the operating threshold: route to a person
    runtime: str
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Predictor:
    """Runs one bundle artefact; use ``from_bundle``."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, runtime: Runtime) -> None:
        self.bundle_dir, self.manifest, self.runtime = bundle_dir, manifest, runtime

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, runtime: str = "auto", **options: Any) -> "Predictor":
        """``runtime``: auto (TensorRT where it runs, else ONNX FP32), onnx, onnx-int8, tensorrt (the
        bundle's FP16 engine, else its INT8 one), tensorrt-fp16, tensorrt-int8.

        Every artefact's sha256 is checked against the manifest before it is loaded.
        """
        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir)
        if runtime == "auto":
            return cls._auto(bundle_dir, manifest, options)
        if runtime == "tensorrt":
            runtime = "tensorrt-int8" if "tensorrt-int8" in manifest.artefacts and "tensorrt-fp16" not in manifest.artefacts else "tensorrt-fp16"
        try:
            factory = get_runtime(runtime)
        except KeyError as exc:
            raise DeployError(str(exc).strip('"')) from None
        return cls(bundle_dir, manifest, factory(verified_artefact(bundle_dir, manifest, runtime), manifest, options))

    @classmethod
    def _auto(cls, bundle_dir: Path, manifest: Manifest, options: dict[str, Any]) -> "Predictor":
        from deploy.runtimes.tensorrt_backend import tensorrt_unavailable_reason

        trt_ok = tensorrt_unavailable_reason() is None
        for fmt in AUTO_ORDER:
            if fmt in manifest.artefacts and (trt_ok or not fmt.startswith("tensorrt")):
                return cls.from_bundle(bundle_dir, fmt, **options)
        raise DeployError(f"{bundle_dir}: no artefact this machine can run (bundle has: {', '.join(manifest.artefacts)})")

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NCHW batch -> raw logits."""
        return self.runtime.run(images)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images), self.manifest.temperature)

    def decide(self, probabilities: np.ndarray, paths: Sequence[str | None] | None = None) -> list[Decision]:
        threshold = self.manifest.operating_threshold
        top = probabilities.argmax(axis=1)
        out = []
        for i, cls_idx in enumerate(top):
            conf = float(probabilities[i, cls_idx])
            out.append(Decision(
                label=self.classes[cls_idx], confidence=conf,
                abstain=threshold is not None and conf < threshold, runtime=self.runtime.name,
                path=None if paths is None else (str(paths[i]) if paths[i] is not None else None),
            ))
        return out

    def predict_images(self, images: Sequence[np.ndarray]) -> list[Decision]:
        """Decoded uint8 images (HxWxC, any size) -> decisions."""
        return self.decide(self.probabilities(preprocess_batch(images, self.manifest.preprocess)))

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int = 32) -> list[Decision]:
        paths = [Path(p) for p in paths]
        out: list[Decision] = []
        spec = self.manifest.preprocess
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = preprocess_batch([read_image(p, spec.channels) for p in chunk], spec)
            out += self.decide(self.probabilities(batch), [str(p) for p in chunk])
        return out

    def describe(self) -> str:
        return self.runtime.describe()
