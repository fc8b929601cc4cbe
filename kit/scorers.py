"""Every model the kit measures (the parity ladder, verification, benchmarks), behind one
interface: preprocessed batch in, logits out.

Torch models (teacher, student, comparison students) and the bundle's edge runtimes (the real
``deploy.Predictor``) become ``Scorer``s, so accuracy, robustness and latency code never asks
which kind it is holding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from deploy.predictor import Predictor
from deploy.preprocess import PreprocessSpec
from kit.evaluate import predict_logits
from kit.models import load_model

CHUNK = 64


@dataclass
class Scorer:
    name: str  # teacher, student, student-kd, onnx, onnx-int8, tensorrt-fp16, ...
    kind: str  # torch | bundle
    runtime: str  # what ran it, for the tables
    infer: Callable[[np.ndarray], np.ndarray]  # float32 NCHW -> logits, any batch size
    file: Path  # the checkpoint or artefact, for its size
    batch_size: int = CHUNK  # images per call; torch CPU kernels round differently at other batch sizes
    # Its own preprocessing when it reads other inputs than the bundle (a teacher on larger images); None: the bundle's.
    spec: PreprocessSpec | None = None

    def input_spec(self, default: PreprocessSpec) -> PreprocessSpec:
        return self.spec or default

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        if len(inputs) == 0:
            return np.zeros((0, 0), np.float32)
        n = self.batch_size
        return np.concatenate([self.infer(inputs[i : i + n]) for i in range(0, len(inputs), n)])

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.logits(inputs).argmax(axis=1)


def torch_scorer(name: str, checkpoint: Path, device: torch.device) -> Scorer:
    model, body = load_model(checkpoint)
    return model_scorer(name, model, device, checkpoint, spec=checkpoint_spec(body))


def checkpoint_spec(body: dict) -> PreprocessSpec | None:
    """The preprocessing a checkpoint records it was trained on (None for one that records none)."""
    recorded = body.get("preprocess")
    return PreprocessSpec.from_dict(recorded) if recorded else None


def model_scorer(name: str, model: torch.nn.Module, device: torch.device, file: Path, batch_size: int = CHUNK,
                 spec: PreprocessSpec | None = None) -> Scorer:
    """A torch model already in memory (``file``: where it is, or will be, saved; ``spec``: what it reads)."""
    model.to(device).eval()

    def infer(x: np.ndarray) -> np.ndarray:
        return predict_logits(model, torch.from_numpy(np.ascontiguousarray(x)), device, batch_size=batch_size).numpy()

    return Scorer(name, "torch", f"torch ({device.type}, {torch.get_num_threads()} threads)" if device.type == "cpu"
                  else f"torch ({device})", infer, file, spec=spec)


def bundle_scorer(bundle_dir: Path, fmt: str, threads: int = 0) -> Scorer:
    predictor = Predictor.from_bundle(bundle_dir, fmt, intra_op_threads=threads or None)
    return Scorer(fmt, "bundle", predictor.describe(), predictor.logits,
                  bundle_dir / predictor.manifest.artefacts[fmt]["file"])


def onnx_file_scorer(name: str, path: Path, threads: int = 0) -> Scorer:
    """An ONNX file outside the bundle (the teacher exported for a same-runtime speed comparison)."""
    from deploy.runtimes.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(name, path, intra_op_threads=threads or None)
    return Scorer(name, "onnx-file", backend.describe(), backend.run, path)
