"""The CUDA path: AMP training (bf16, and fp16 with a grad scaler), the ONNX Runtime CUDA
provider. Skipped with the reason where this machine has no CUDA device."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from kit.models import load_model
from kit.rundir import read_split
from kit.run import run_line
from tests.conftest import tiny_recipe_dict, write_recipe

pytestmark = pytest.mark.gpu

GPU_RECIPE = {"device": "cuda", "data.num_workers": 2, "compare": [], "export.formats": ["onnx"]}


def _losses(run_dir):
    with (run_dir / "history.csv").open() as fh:
        return [(r["role"], float(r["loss"]), float(r["images_per_s"])) for r in csv.DictReader(fh)]


def test_cuda_run_trains_with_bf16_autocast_and_finishes_the_chain(tmp_path, tiny_line):
    recipe = write_recipe(tmp_path / "gpu.yaml", tiny_recipe_dict(tiny_line, **GPU_RECIPE))
    result = run_line(recipe, out_root=tmp_path / "runs", name="bf16")
    log = (result.run_dir / "run.log").read_text()
    assert "cuda:0" in log or "cuda (" in log, log[:2000]
    assert "AMP bfloat16, channels_last" in log
    losses = _losses(result.run_dir)
    assert {r for r, _, _ in losses} == {"teacher", "student"}
    assert all(math.isfinite(loss) and ips > 0 for _, loss, ips in losses)
    # A checkpoint trained on the GPU loads on the CPU (weights_only) and its ONNX export agrees.
    _, body = load_model(result.run_dir / "student.pt")
    assert body["method"] == "crld"
    parity = json.loads((result.run_dir / "bundle" / "parity.json").read_text())
    onnx_rung = next(r for r in parity["rungs"] if r["rung"] == "onnx")
    assert onnx_rung["vs_parent"]["agreement"] == 1.0
    assert onnx_rung["vs_parent"]["max_abs_delta_p"] < 1e-3
    # verify scores the torch models on the GPU and the bundle on ONNX Runtime, then the report.
    latency = json.loads((result.run_dir / "verify" / "kpi.json").read_text())["latency"]
    assert any(r["model"] == "student" and r["runtime"].startswith("torch (cuda")  and r["p50_ms"] > 0 for r in latency["rows"])
    assert (result.run_dir / "report" / "report.html").is_file()


def test_fp16_autocast_uses_a_grad_scaler(tmp_path, tiny_line, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # an older GPU (T4, V100)
    recipe = write_recipe(tmp_path / "fp16.yaml", tiny_recipe_dict(tiny_line, **GPU_RECIPE))
    result = run_line(recipe, out_root=tmp_path / "runs", name="fp16", stop_after="train")
    assert "AMP float16" in (result.run_dir / "run.log").read_text()
    assert all(math.isfinite(loss) for _, loss, _ in _losses(result.run_dir))
    assert 0.0 <= result.metrics["student"]["accuracy"] <= 1.0


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _ort_has_cuda(), reason="ONNX Runtime has no CUDA provider here: pip install 'inspection-kit[gpu]' (onnxruntime-gpu)")
def test_onnxruntime_cuda_provider_matches_cpu(finished_run):
    from deploy.predictor import Predictor
    from deploy.preprocess import preprocess_batch, read_image

    cpu = Predictor.from_bundle(finished_run / "bundle", "onnx", providers=["CPUExecutionProvider"])
    gpu = Predictor.from_bundle(finished_run / "bundle", "onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "CUDAExecutionProvider" in gpu.describe()
    spec = cpu.manifest.preprocess
    batch = preprocess_batch([read_image(p, spec.channels) for p in read_split(finished_run, "test")[0]], spec)
    a, b = cpu.probabilities(batch), gpu.probabilities(batch)
    assert np.abs(a - b).max() < 1e-3
    assert (a.argmax(1) == b.argmax(1)).all()


def test_local_cnn_flattens_in_float32_under_bf16_autocast():
    """A defect is a small difference of two large values: bf16 would round it away, so kit.models.local_cnn's
    background flattening runs in float32 inside an autocast region, and the model trains under AMP."""
    import timm

    from kit.models.local_cnn import FlattenBackground

    torch.manual_seed(0)
    x = (torch.rand(4, 1, 64, 64) * 4 + 100.0)  # a bright surface: large values, small differences
    expected = FlattenBackground(1)(x)
    flat = FlattenBackground(1).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = flat(x.cuda())
    assert got.dtype == torch.float32
    assert (got.cpu() - expected).abs().max() < 1e-3  # bf16 arithmetic would be off by ~0.5 at 100
    model = timm.create_model("local_cnn_s", num_classes=3, in_chans=1).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x.cuda().to(memory_format=torch.channels_last)), torch.tensor([0, 1, 2, 0]).cuda())
    loss.backward()
    optimizer.step()
    assert math.isfinite(float(loss.detach())) and all(torch.isfinite(p).all() for p in model.parameters())
