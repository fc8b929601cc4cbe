"""Defect heatmaps inside the exported graph: a class activation map from a stride-8 feature map.

Why this method (measured on the sample line, 100 defective test images, student
``ese_vovnet19b_slim_dw`` at 64 px; pointing game = heatmap peak inside the defect mask with
3 px tolerance at model input; ``benchmarks/heatmap_quality.py``, tables in benchmarks/RESULTS.md):

=============================================  ========  ===================================
method (deployed student)                      pointing  cost per image, batch 1 (1 thread)
=============================================  ========  ===================================
Grad-CAM, last stage (stride 32, 2x2 cells)    0.13      a backward pass (torch only)
Grad-CAM, stage 1 (stride 8; torch only)       0.83      a backward pass (torch only)
occlusion 8 px patches, stride 4, via ORT      0.76      169 extra inferences, 110-230 ms
**stride-8 CAM in the graph (this module)**    0.88      +0.1 ms (+19 %) end to end, ONNX FP32
  the same, ONNX INT8                          0.91      within noise
=============================================  ========  ===================================

(Probe CAMs at stride 4 and 16 scored 0.84 and 0.51 in the same selection run; the teacher with
this method scores 0.91, with Grad-CAM on its last stage 0.34.)

The students end at stride 32, so their own CAM (last stage through the classifier, which for
global average pooling + linear equals Grad-CAM on that stage) has 2x2 cells at 64 px and its
peak is a quadrant, not a defect. A stride-8 map localises (8x8 cells at 64 px, 12x12 at 96 px),
but the classifier reads 512 last-stage channels, not the stride-8 ones. So the projection is
fitted: ridge regression of the model's own logits on its globally pooled stride-8 features over
the training split (closed form, deterministic, a second on a CPU). Applied per cell, that
projection is a CAM (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization")
whose spatial mean is the fitted logit (a model that pools by its maximum, ``kit.models.local_cnn``, is fitted
on max-pooled features, as its classifier reads them). The fraction of training images on which the fitted
logits pick the model's own top-1 class is kept in the manifest (``heatmap.probe_agreement``) as
the measure of how faithfully the map reads the model. The projection is a 1x1 convolution on an
existing tensor, exported as the extra ONNX output ``heatmap`` (batch x classes x h x w), so every
runtime (ONNX FP32, INT8, TensorRT) computes it in the same pass as the logits, and the parity
ladder compares it rung by rung like the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

HEATMAP_OUTPUT = "heatmap"
TARGET_REDUCTION = 8  # px of input per heatmap cell; measured best of 4 / 8 / 16 / 32 (module docstring)
RIDGE = 1e-2  # ridge strength, relative to the mean diagonal of the Gram matrix
FIT_BATCH = 64
ORIGIN_IMAGES = 16  # real images whose input gradients locate a cell's centre


@dataclass
class HeatmapHead:
    """The fitted projection: ``layer``'s channels -> one map per class."""

    layer: str  # module name inside the model (timm ``feature_info``)
    reduction: int  # input px per cell
    weight: np.ndarray  # (classes, channels)
    bias: np.ndarray  # (classes,)
    probe_agreement: float  # share of fitting images where the fitted logits' top-1 is the model's
    origin_px: tuple[float, float]  # (x, y): cell (i, j) is centred on input pixel (reduction * j + x, reduction * i + y)

    def describe(self) -> dict[str, Any]:
        """The manifest entry (``model.json`` ``heatmap``)."""
        return {"output": HEATMAP_OUTPUT, "method": "cam", "layer": self.layer, "reduction": self.reduction,
                "fit": "ridge regression of the model's logits on its pooled features (training split)",
                "probe_agreement": round(self.probe_agreement, 4),
                "origin_px": [round(float(v), 3) for v in self.origin_px],
                "shape": ["batch", int(self.weight.shape[0]), "height / reduction", "width / reduction"]}


def heatmap_layer(model: nn.Module) -> tuple[str, int] | None:
    """(module name, reduction) of the feature level closest to stride 8 that timm names in
    ``feature_info``; None for a model without one (then the bundle has no in-graph heatmap)."""
    info = getattr(model, "feature_info", None)
    levels = [(f["module"], int(f["reduction"])) for f in (info or []) if isinstance(f, dict) and "module" in f]
    if not levels:
        return None
    return min(levels, key=lambda lv: (abs(np.log2(lv[1] / TARGET_REDUCTION)), -lv[1]))


class _Capture:
    """Forward hook that keeps a module's output (traced like any other tensor by the exporters)."""

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self.value = output


@torch.no_grad()
def _pooled_features(model: nn.Module, layer: str, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    capture = _Capture(model.get_submodule(layer))
    pooled, logits = [], []
    by_max = getattr(model, "global_pool", None) == "max"  # kit.models.local_cnn: one neighbourhood decides
    try:
        for start in range(0, len(inputs), FIT_BATCH):
            logits.append(model(torch.from_numpy(np.ascontiguousarray(inputs[start : start + FIT_BATCH]))).float())
            features = capture.value.float()
            pooled.append(features.amax(dim=(2, 3)) if by_max else features.mean(dim=(2, 3)))
    finally:
        capture.handle.remove()
    return torch.cat(pooled).double().numpy(), torch.cat(logits).double().numpy()


def fit_heatmap_head(model: nn.Module, inputs: np.ndarray) -> HeatmapHead | None:
    """Fit the stride-8 projection on ``inputs`` (preprocessed float32 NCHW, the training split)."""
    found = heatmap_layer(model)
    if found is None or len(inputs) == 0:
        return None
    layer, reduction = found
    model = model.eval().cpu()
    pooled, logits = _pooled_features(model, layer, inputs)
    design = np.concatenate([pooled, np.ones((len(pooled), 1))], axis=1)
    gram = design.T @ design
    ridge = RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram))
    ridge[-1, -1] = 0.0  # the bias is not shrunk
    solution = np.linalg.solve(gram + ridge, design.T @ logits)  # (channels + 1, classes)
    agreement = float(np.mean((design @ solution).argmax(1) == logits.argmax(1)))
    return HeatmapHead(layer, reduction, solution[:-1].T.astype(np.float32).copy(),
                       solution[-1].astype(np.float32).copy(), agreement, cell_origin(model, layer, inputs[:ORIGIN_IMAGES]))


def cell_origin(model: nn.Module, layer: str, inputs: np.ndarray) -> tuple[float, float]:
    """Where a cell of ``layer`` looks, as (x, y) input px of cell (0, 0)'s centre: the centre of mass of
    |d cell / d input| for a central cell, on real images, minus the cell's index times the stride.

    Padding and pooling decide it, and architectures differ: the middle of the cell's pixels
    ((stride - 1) / 2 = 3.5 at stride 8) for the sample student, about 2 for resnet10t, 0 for plain
    stride-2 3x3 convolutions with padding 1 (tests/test_heatmap.py's blob model, where the middle put the
    peak 3.5 px off the blob). ``deploy.heatmap`` maps cells back to image pixels with it.
    """
    capture = _Capture(model.get_submodule(layer))
    x = torch.from_numpy(np.ascontiguousarray(inputs)).requires_grad_(True)
    try:
        model(x)
    finally:
        capture.handle.remove()
    features = capture.value
    rows, cols = features.shape[2:]
    i, j = rows // 2, cols // 2
    (grad,) = torch.autograd.grad(features[:, :, i, j].sum(), x)
    weight = grad.abs().sum(dim=(0, 1)).double().numpy()
    height, width = weight.shape
    centre_y = float((weight.sum(1) * np.arange(height)).sum() / weight.sum())
    centre_x = float((weight.sum(0) * np.arange(width)).sum() / weight.sum())
    return centre_x - width / cols * j, centre_y - height / rows * i


class HeatmapModel(nn.Module):
    """``model`` with a second output: ``(logits, heatmap)``, heatmap = batch x classes x h x w."""

    def __init__(self, model: nn.Module, head: HeatmapHead) -> None:
        super().__init__()
        self.model = model
        classes, channels = head.weight.shape
        self.project = nn.Conv2d(channels, classes, kernel_size=1)
        with torch.no_grad():
            self.project.weight.copy_(torch.from_numpy(head.weight).view(classes, channels, 1, 1))
            self.project.bias.copy_(torch.from_numpy(head.bias))
        self._capture = _Capture(model.get_submodule(head.layer))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, self.project(self._capture.value)


@torch.no_grad()
def torch_heatmaps(model: HeatmapModel, inputs: np.ndarray, batch_size: int = FIT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(logits, cell maps) of a torch model with its head: the reference rung of the parity ladder and
    the teacher's heatmaps in ``kit verify``."""
    model.eval()
    logits, maps = [], []
    for start in range(0, len(inputs), batch_size):
        lg, hm = model(torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size])))
        logits.append(lg.float().numpy())
        maps.append(hm.float().numpy())
    return np.concatenate(logits), np.concatenate(maps)


def bundle_heatmaps(bundle_dir, fmt: str, inputs: np.ndarray, batch_size: int = FIT_BATCH) -> np.ndarray:
    """The ``heatmap`` output of one bundle artefact, run by the real edge runtime."""
    from deploy.predictor import Predictor

    runtime = Predictor.from_bundle(bundle_dir, fmt).runtime
    return np.concatenate([runtime.run_with_heatmap(inputs[i : i + batch_size])[1] for i in range(0, len(inputs), batch_size)])
