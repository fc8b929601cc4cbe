"""Defect heatmaps from the bundle (issue 16): a tiny model trained to find one bright blob must
peak on it through every runtime, in the input image's coordinates; FP32 and INT8 agree; older
bundles fall back to occlusion; overlays are written; the edge path needs no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deploy.cli import app as deploy_app
from deploy.errors import DeployError
from deploy.heatmap import Heatmap, peak_of, to_image_coordinates
from deploy.manifest import MANIFEST_NAME, Manifest, sha256_file
from deploy.predictor import Predictor
from deploy.preprocess import PreprocessSpec, preprocess_batch
from kit.export.heatmap_head import HeatmapModel, fit_heatmap_head, heatmap_layer
from kit.export.onnx_fp32 import export_onnx
from kit.export.onnx_int8 import export_onnx_int8
from kit.export.parity import compare_heatmaps
from tests.edge_bundle import BLOCK_HEAVY

REPO = Path(__file__).resolve().parents[1]
IMAGE_PX, INPUT_PX, BLOB_RADIUS_PX = 48, 32, 4
SPEC = PreprocessSpec(image_size=(INPUT_PX, INPUT_PX), channels="gray")
CLASSES = ["blob", "plain"]
# FP32 vs INT8 maps (each min-max normalised to [0, 1], in image pixels): mean |delta| per image at most
# MAP_TOLERANCE and peaks at most one stride-8 cell apart (8 px at model input = 12 px at 48 px).
MAP_TOLERANCE = 0.1
PEAK_TOLERANCE_PX = 8 * IMAGE_PX / INPUT_PX


class BlobNet(nn.Module):
    """Four stride-2 convolutions, global average pooling, a linear classifier; ``feature_info`` names
    its levels the way timm models do."""

    def __init__(self) -> None:
        super().__init__()
        block = lambda cin, cout: nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU())  # noqa: E731
        self.s2, self.s4, self.s8, self.s16 = block(1, 8), block(8, 16), block(16, 16), block(16, 16)
        self.fc = nn.Linear(16, len(CLASSES))
        self.feature_info = [{"module": f"s{r}", "reduction": r, "num_chs": c} for r, c in ((2, 8), (4, 16), (8, 16), (16, 16))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.s16(self.s8(self.s4(self.s2(x)))).mean(dim=(2, 3)))


def _blob_images(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Half with one bright disk (class 0, ``blob``), half plain noise; the blob centres (x, y)."""
    rng = np.random.default_rng(seed)
    images, labels, centres = [], np.arange(n) % 2, np.zeros((n, 2), int)
    for i in range(n):
        img = rng.normal(100, 12, (IMAGE_PX, IMAGE_PX)).clip(0, 255).astype(np.uint8)
        if labels[i] == 0:
            centres[i] = rng.integers(8, IMAGE_PX - 8, 2)
            cv2.circle(img, (int(centres[i][0]), int(centres[i][1])), BLOB_RADIUS_PX, 230, -1, cv2.LINE_AA)
        images.append(img)
    return images, labels, centres


def _write_bundle(folder: Path, model: nn.Module, calibration: np.ndarray, heatmap: bool) -> Path:
    folder.mkdir(parents=True)
    head = fit_heatmap_head(model, calibration)
    exported = HeatmapModel(model, head) if heatmap else model
    export_onnx(exported, folder / "model.onnx", (1, INPUT_PX, INPUT_PX), heatmap=heatmap)
    export_onnx_int8(folder / "model.onnx", folder / "model.int8.onnx", calibration)
    artefacts = {fmt: {"file": name, "sha256": sha256_file(folder / name)}
                 for fmt, name in (("onnx", "model.onnx"), ("onnx-int8", "model.int8.onnx"))}
    extra = {"heatmap": head.describe()} if heatmap else {}
    manifest = Manifest(classes=CLASSES, preprocess=SPEC, artefacts=artefacts, extra=extra)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict()), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """A BlobNet trained for a second, exported with the in-graph heatmap and without it. One torch
    thread: on a busy 2-core machine two threads spin against each other (40 s instead of 0.3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        images, labels, _ = _blob_images(256, seed=0)
        x, y = torch.from_numpy(preprocess_batch(images, SPEC)), torch.from_numpy(labels)
        model = BlobNet()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(60):
            batch = torch.from_numpy(np.random.default_rng(step).choice(len(x), 32, replace=False))
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        root = tmp_path_factory.mktemp("heatmap")
        calibration = x[:64].numpy()
        return {"cam": _write_bundle(root / "cam", model, calibration, heatmap=True),
                "legacy": _write_bundle(root / "legacy", model, calibration, heatmap=False)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blobs() -> tuple[list[np.ndarray], np.ndarray]:
    images, labels, centres = _blob_images(24, seed=1)
    keep = labels == 0
    return [im for im, k in zip(images, keep) if k], centres[keep]


def _peak_errors(decisions, centres) -> np.ndarray:
    return np.array([np.hypot(*np.subtract(d.heatmap.peak_xy, c)) for d, c in zip(decisions, centres)])


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_the_heatmap_peaks_on_the_blob_in_image_coordinates(bundles, blobs, runtime):
    images, centres = blobs
    predictor = Predictor.from_bundle(bundles["cam"], runtime)
    decisions = predictor.predict(images, heatmap=True)
    assert all(d.label == "blob" for d in decisions)
    for d in decisions:
        assert d.heatmap.method == "cam" and d.heatmap.label == "blob"
        assert d.heatmap.map.shape == (IMAGE_PX, IMAGE_PX) and d.heatmap.map.dtype == np.float32
        assert d.heatmap.map.min() >= 0 and d.heatmap.map.max() == pytest.approx(1.0)
        assert d.heatmap.peak_xy == peak_of(d.heatmap.map)
    assert np.mean(_peak_errors(decisions, centres) <= BLOB_RADIUS_PX + 4) >= 0.9
    row = decisions[0].to_dict()
    assert row["heatmap"] == {"label": "blob", "peak_xy": list(decisions[0].heatmap.peak_xy), "method": "cam", "size": [48, 48]}
    json.dumps(row)
    assert "heatmap" not in predictor.predict(images[:1])[0].to_dict(), "no heatmap asked: the JSON line is unchanged"


def test_fp32_and_int8_maps_agree_within_the_stated_tolerance(bundles, blobs):
    images, _ = blobs
    fp32, int8 = (Predictor.from_bundle(bundles["cam"], r).predict(images, heatmap=True) for r in ("onnx", "onnx-int8"))
    for a, b in zip(fp32, int8):
        assert np.abs(a.heatmap.map - b.heatmap.map).mean() <= MAP_TOLERANCE
        assert np.hypot(*np.subtract(a.heatmap.peak_xy, b.heatmap.peak_xy)) <= PEAK_TOLERANCE_PX


def test_int8_keeps_the_heatmap_projection_in_float(bundles):
    graph = onnx.load(str(bundles["cam"] / "model.int8.onnx")).graph
    producer = next(n for n in graph.node if "heatmap" in n.output)
    assert producer.op_type == "Conv", "the projection itself, not a QuantizeLinear/DequantizeLinear pair"
    assert [o.name for o in graph.output] == ["logits", "heatmap"]


def test_a_bundle_without_the_heatmap_output_falls_back_to_occlusion(bundles, blobs):
    images, centres = blobs
    predictor = Predictor.from_bundle(bundles["legacy"], "onnx")
    assert [o.name for o in predictor.runtime.session.get_outputs()] == ["logits"]
    decisions = predictor.predict(images[:4], heatmap=True)
    assert all(d.heatmap.method == "occlusion" and d.heatmap.map.shape == (IMAGE_PX, IMAGE_PX) for d in decisions)
    assert np.mean(_peak_errors(decisions, centres[:4]) <= BLOB_RADIUS_PX + 6) >= 0.75


def test_a_named_class_and_the_errors(bundles, blobs):
    images, _ = blobs
    predictor = Predictor.from_bundle(bundles["cam"], "onnx")
    (d,) = predictor.predict(images[:1], heatmap=True, heatmap_class="plain")
    assert d.label == "blob" and d.heatmap.label == "plain"
    with pytest.raises(DeployError, match=r"^heatmap class 'scratch' is not one of the bundle's classes \(blob, plain\)$"):
        predictor.predict(images[:1], heatmap=True, heatmap_class="scratch")
    with pytest.raises(DeployError, match=r"^heatmap_class='plain' needs heatmap=True$"):
        predictor.predict(images[:1], heatmap_class="plain")


def test_maps_follow_the_roi_back_into_the_image():
    spec = PreprocessSpec(image_size=(16, 16), channels="gray", roi=(20, 10, 32, 32))
    cells = np.zeros((4, 4), np.float32)
    cells[1, 2] = 1.0  # centre at model input (4 * 2 + 0.25, 4 * 1 + 0.25) px -> ROI (17, 9) px -> image (37, 19) px
    image_map = to_image_coordinates(cells, (80, 100), spec, origin_px=(0.25, 0.25))
    assert image_map.shape == (80, 100) and image_map[:10].max() == 0 and image_map[:, :20].max() == 0
    assert image_map[10:42, 20:52].min() == 0 and image_map.max() == 1.0 and image_map[42:].max() == 0
    assert peak_of(image_map) == (37, 19)
    middle = to_image_coordinates(cells, (80, 100), spec)  # no origin: the middle of the cell, (4 - 1) / 2
    assert peak_of(middle) in {(39, 21), (40, 21), (39, 22), (40, 22)}  # centre (39.5, 21.5)


def test_overlay_png_and_deploy_predict_heatmaps(bundles, blobs, tmp_path):
    images, _ = blobs
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, image in enumerate(images[:3]):
        cv2.imwrite(str(folder / f"part_{i}.png"), image)
    result = CliRunner().invoke(deploy_app, ["predict", str(bundles["cam"]), str(folder), "--runtime", "onnx",
                                             "--heatmaps", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["heatmap"]["overlay"]).name for r in rows] == ["part_0.png", "part_1.png", "part_2.png"]
    overlay = cv2.imread(rows[0]["heatmap"]["overlay"], cv2.IMREAD_COLOR)
    assert overlay.shape[1] >= 256 and overlay.shape[0] > overlay.shape[1], "the image enlarged, with a caption strip"
    assert np.ptp(overlay[..., 2].astype(int) - overlay[..., 0].astype(int)) > 100, "a colour map, not grey"
    refused = CliRunner().invoke(deploy_app, ["predict", str(bundles["cam"]), str(folder), "--heatmap-class", "blob"])
    assert refused.exit_code == 1 and "error: --heatmap-class needs --heatmaps OUT_DIR" in refused.output


def test_deploy_predict_heatmaps_runs_without_torch(bundles, blobs, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    image = tmp_path / "part.png"
    cv2.imwrite(str(image), blobs[0][0])
    result = subprocess.run([sys.executable, "-m", "deploy", "predict", str(bundles["cam"]), str(image), "--runtime", "onnx-int8",
                             "--heatmaps", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["heatmap"]["method"] == "cam" and (tmp_path / "out" / "part.png").is_file()


def test_bench_reports_what_the_heatmap_adds(bundles):
    from deploy.bench import bench_heatmap

    result = bench_heatmap(Predictor.from_bundle(bundles["cam"], "onnx"), batch=2, warmup=1, iters=5)
    assert result["method"] == "cam" and result["images"] == "synthetic"
    assert result["added_p50_ms"] == pytest.approx(result["with_heatmap"]["p50_ms"] - result["decision"]["p50_ms"])
    result = CliRunner().invoke(deploy_app, ["bench", str(bundles["cam"]), "--runtime", "onnx", "--iters", "5", "--heatmap"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["heatmap"]["method"] == "cam"


def test_the_feature_level_nearest_stride_8_is_chosen():
    assert heatmap_layer(BlobNet()) == ("s8", 8)
    assert heatmap_layer(nn.Linear(2, 2)) is None


def test_heatmap_parity_measures():
    maps = np.zeros((2, 2, 2, 2))
    maps[:, 0, 0, 0] = 1.0
    moved = maps.copy()
    moved[1, 0] = [[0.0, 0.0], [0.0, 1.0]]
    result = compare_heatmaps(maps, moved, np.array([0, 0]))
    assert result == {"peak_agreement": 0.5, "max_abs_delta": 1.0, "mean_abs_delta": 0.25}


def test_heatmap_to_dict_leaves_the_map_out():
    h = Heatmap(np.zeros((3, 4), np.float32), (1, 2), "dent", "cam")
    assert h.to_dict() == {"label": "dent", "peak_xy": [1, 2], "method": "cam", "size": [4, 3]}
