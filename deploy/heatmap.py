"""Defect heatmaps on the edge: where in the image the model saw the class it decided (or another).

Two methods, chosen from measurements on the sample line (100 defective test images; pointing
game = heatmap peak inside the defect mask, 3 px tolerance at model input; cost per image at
batch 1 on one CPU thread; ``benchmarks/heatmap_quality.py`` and ``benchmarks/RESULTS.md``):

- ``cam`` (bundles exported since issue 16): the bundle's ONNX / TensorRT graph has a second output
  ``heatmap``, a class activation map from the student's stride-8 features through a projection
  fitted to the student's own logits (``kit.export.heatmap_head`` explains the fit). Pointing game 0.88
  (INT8 0.91) for the deployed student against 0.13 for Grad-CAM on its last stage (stride 32: 2x2
  cells at 64 px). It is computed in the same pass as the decision, so it costs a 1x1 convolution
  and the resize to image coordinates: +0.1 ms (+19 %) per part at batch 1 end to end on ONNX FP32
  (``deploy bench --heatmap`` measures it on the line's machine).
- ``occlusion`` (older bundles without that output, any model): the decision's logit drop when an
  8 px square (at model input) is set to the normalised mean, on a 4 px grid, batched through the
  same runtime (Zeiler and Fergus 2014). Pointing game 0.76 but 169 extra inferences per image
  (110-230 ms on one CPU thread for the sample student): compute it for the images that need it
  (abstained, rejected, or asked for).

An anomaly bundle (``task: anomaly``) needs neither: its graph's ``anomaly_map`` output, the score per pixel
of the model input, comes from the same forward pass as the score (method ``anomaly-map``); it is mapped
to the image's pixels like the others. It is one map, for whatever the part is, not one per class.

Maps are returned in the input image's coordinates (the inverse of the manifest's ROI crop and
resize; zero outside the ROI), min-max normalised to [0, 1], with the peak as (x, y) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

from deploy.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from deploy.predictor import Predictor

HEATMAP_OUTPUT = "heatmap"
ANOMALY_MAP_METHOD = "anomaly-map"  # an anomaly bundle's anomaly_map output, from the decision's forward pass
OCCLUSION_PATCH_FRACTION = 8  # patch side = input side / 8 (8 px at 64 px), stride half of it
OCCLUSION_BATCH = 256  # occluded copies per runtime call


@dataclass
class Heatmap:
    """One image's map for one class."""

    map: np.ndarray  # float32 HxW in the input image's pixels, [0, 1]
    peak_xy: tuple[int, int]  # (x, y) px in the input image, where ``map`` is largest
    label: str  # the class the map is for
    method: str  # cam | occlusion | anomaly-map

    def to_dict(self) -> dict[str, Any]:
        """What a JSON line carries (the map itself goes to a PNG: ``deploy.overlay``)."""
        return {"label": self.label, "peak_xy": list(self.peak_xy), "method": self.method,
                "size": [int(self.map.shape[1]), int(self.map.shape[0])]}


def heatmap_method(predictor: "Predictor") -> str:
    """``anomaly-map`` for an anomaly bundle; ``cam`` when a classifier's manifest and the loaded artefact both
    have the in-graph output; else ``occlusion``."""
    if predictor.manifest.anomaly is not None:
        return ANOMALY_MAP_METHOD
    entry = predictor.manifest.extra.get("heatmap")
    has_output = HEATMAP_OUTPUT in getattr(predictor.runtime, "output_names", [])
    return "cam" if entry and has_output and hasattr(predictor.runtime, "run_with_heatmap") else "occlusion"


def normalise(cells: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a flat map: all zeros)."""
    cells = cells.astype(np.float32)
    span = float(cells.max() - cells.min()) if cells.size else 0.0
    return (cells - cells.min()) / span if span > 0 else np.zeros_like(cells)


def to_image_coordinates(cells: np.ndarray, image_hw: tuple[int, int], spec: PreprocessSpec,
                         origin_px: Sequence[float] | None = None) -> np.ndarray:
    """A map over the model input (h x w cells, each ``reduction`` input px) -> the input image's HxW
    pixels, min-max normalised to [0, 1] (the peak is 1); outside the ROI the map is 0.

    Inverse of ``prepare_image`` (ROI crop, then resize), interpolated linearly between cell
    centres. Cell (i, j) is centred on input pixel (reduction * j + x, reduction * i + y) for
    ``origin_px`` = (x, y), which the export measures per model and writes into the manifest
    (``heatmap.origin_px``): padding and pooling move it, from 0 (plain stride-2 3x3 convolutions)
    to the middle of the cell's pixels. None: the middle, (reduction - 1) / 2, i.e. a plain resize
    (also what a full-resolution occlusion map needs).
    """
    height, width = image_hw
    x, y, w, h = spec.roi if spec.roi is not None else (0, 0, width, height)
    (in_h, in_w), (cells_h, cells_w) = spec.image_size, cells.shape
    scale_x, scale_y = w / in_w, h / in_h  # model input px -> ROI px (cv2.resize: X + 0.5 = (u + 0.5) * scale)
    step_x, step_y = in_w / cells_w, in_h / cells_h
    origin_x, origin_y = origin_px if origin_px is not None else ((step_x - 1) / 2, (step_y - 1) / 2)
    warp = np.float32([[step_x * scale_x, 0, (origin_x + 0.5) * scale_x - 0.5],
                       [0, step_y * scale_y, (origin_y + 0.5) * scale_y - 0.5]])
    roi_map = cv2.warpAffine(cells.astype(np.float32), warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = np.zeros((height, width), np.float32)
    out[y : y + h, x : x + w] = normalise(roi_map)
    return out


def peak_of(image_map: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(image_map)), image_map.shape)
    return int(x), int(y)


def class_maps(predictor: "Predictor", batch: np.ndarray, class_index: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits, one map per image over the model input, method) for the predicted class, or for
    ``class_index`` when given."""
    if heatmap_method(predictor) == "cam":
        logits, maps = predictor.runtime.run_with_heatmap(batch)
        chosen = logits.argmax(axis=1) if class_index is None else np.full(len(batch), class_index)
        return logits, maps[np.arange(len(batch)), chosen], "cam"
    logits = predictor.logits(batch)
    chosen = logits.argmax(axis=1) if class_index is None else np.full(len(batch), class_index)
    return logits, occlusion_maps(predictor.logits, batch, chosen, logits), "occlusion"


def occlusion_maps(infer, batch: np.ndarray, classes: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
    """Logit drop of ``classes[i]`` when a square of the input is set to 0 (the normalised mean),
    averaged over the squares covering each pixel; N x H x W at model input."""
    _, _, height, width = batch.shape
    patch = max(2, min(height, width) // OCCLUSION_PATCH_FRACTION)
    stride = max(1, patch // 2)
    rows = sorted(set(range(0, height - patch + 1, stride)) | {height - patch})
    cols = sorted(set(range(0, width - patch + 1, stride)) | {width - patch})
    squares = [(r, c) for r in rows for c in cols]
    coverage = np.zeros((height, width), np.float32)
    for r, c in squares:
        coverage[r : r + patch, c : c + patch] += 1
    base = infer(batch) if logits is None else logits
    out = np.zeros((len(batch), height, width), np.float32)
    for i, image in enumerate(batch):
        drops = []
        for start in range(0, len(squares), OCCLUSION_BATCH):
            chunk = squares[start : start + OCCLUSION_BATCH]
            copies = np.repeat(image[None], len(chunk), axis=0)
            for k, (r, c) in enumerate(chunk):
                copies[k, :, r : r + patch, c : c + patch] = 0.0
            drops.append(base[i, classes[i]] - infer(copies)[:, classes[i]])
        for drop, (r, c) in zip(np.concatenate(drops), squares):
            out[i, r : r + patch, c : c + patch] += drop
        out[i] /= coverage
    return out


def heatmaps_for(maps: np.ndarray, images: Sequence[np.ndarray], labels: Sequence[str], method: str,
                 spec: PreprocessSpec, origin_px: Sequence[float] | None = None) -> list[Heatmap]:
    out = []
    for cells, image, label in zip(maps, images, labels):
        image_map = to_image_coordinates(cells, image.shape[:2], spec, origin_px if method == "cam" else None)
        out.append(Heatmap(image_map, peak_of(image_map), label, method))
    return out
