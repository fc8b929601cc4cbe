"""Export of a real tiny run: ONNX FP32/INT8, manifest, parity ladder, edge runtime, OpenCV DNN."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from deploy import BundleError, Predictor, read_manifest
from deploy.preprocess import load_and_preprocess
from deploy.runtimes.tensorrt_backend import tensorrt_unavailable_reason
from kit.cli import app
from tests.edge_bundle import BLOCK_HEAVY
from kit.export import ParityGateError, export_bundle
from kit.export.onnx_fp32 import read_embedded_manifest
from kit.models import load_model
from kit.rundir import read_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(finished_run, run_dir)
    result = CliRunner().invoke(app, ["export", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "tensorrt-fp16: skipped (" in result.output or tensorrt_unavailable_reason() is None
    return run_dir


def test_bundle_files_and_manifest(exported):
    bundle = exported / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx", "parity.json", "profile.json"]
    manifest = read_manifest(bundle)
    assert manifest.classes == ["dent", "ok", "scratch"]
    assert manifest.preprocess.image_size == (32, 32) and manifest.preprocess.channels == "gray"
    assert set(manifest.artefacts) == {"onnx", "onnx-int8"}
    assert manifest.extra["student"]["arch"] == "mobilenetv3_small_050"
    assert len(manifest.artefacts["onnx"]["sha256"]) == 64
    state = json.loads((exported / "state.json").read_text())
    assert state["stages"]["export"]["status"] == "done"
    assert "tensorrt-fp16" in state["stages"]["export"]["skipped"]
    assert not (exported / ".bundle.partial").exists()


def test_onnx_is_valid_with_fixed_names_and_dynamic_batch(exported):
    model = onnx.load(str(exported / "bundle" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    (inp,), (out, *extra) = model.graph.input, model.graph.output
    assert inp.name == "images" and out.name == "logits"
    assert [o.name for o in extra] == ["heatmap"], "logits first, as before; the in-graph heatmap (issue 16) second"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    embedded = read_embedded_manifest(exported / "bundle" / "model.onnx")
    assert embedded["classes"] == ["dent", "ok", "scratch"] and embedded["preprocess"]["image_size"] == [32, 32]


def test_the_station_reads_the_manifest_under_the_key_kit_export_embeds_it():
    """deploy compares model.json with the manifest embedded in the ONNX file (deploy.manifest), and the test
    bundle of tests/edge_bundle.py embeds one the same way: all three must name the same metadata key."""
    from deploy.manifest import EMBEDDED_MANIFEST_KEY
    from kit.export.onnx_fp32 import MANIFEST_KEY
    from tests.edge_bundle import EMBEDDED_MANIFEST_KEY as TEST_BUNDLE_KEY

    assert MANIFEST_KEY == EMBEDDED_MANIFEST_KEY == TEST_BUNDLE_KEY


def test_torch_and_onnxruntime_logits_agree_on_real_images(exported):
    student, _ = load_model(exported / "student.pt")
    manifest = read_manifest(exported / "bundle")
    paths, _ = read_split(exported, "test")
    x = np.stack([load_and_preprocess(p, manifest.preprocess) for p in paths])
    with torch.no_grad():
        expected = student.eval()(torch.from_numpy(x)).numpy()
    got = Predictor.from_bundle(exported / "bundle", "onnx").logits(x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    for batch in (1, 3):
        np.testing.assert_allclose(Predictor.from_bundle(exported / "bundle", "onnx").logits(x[:batch]), expected[:batch], atol=1e-4, rtol=1e-4)


def test_parity_ladder_contents(exported):
    parity = json.loads((exported / "bundle" / "parity.json").read_text())
    assert [r["rung"] for r in parity["rungs"]] == ["teacher", "student", "onnx", "onnx-int8"]
    onnx_row = parity["rungs"][2]
    assert onnx_row["parent"] == "student" and onnx_row["vs_parent"]["agreement"] == 1.0
    assert onnx_row["vs_parent"]["max_abs_delta_p"] <= 1e-4
    assert len(onnx_row["vs_parent"]["worst"]) == min(5, parity["test_images"])
    int8_row = parity["rungs"][3]
    assert int8_row["parent"] == "onnx" and 0.5 <= int8_row["vs_parent"]["agreement"] <= 1.0
    assert parity["passed"] is True
    assert {g["rung"] for g in parity["gate"]["checks"]} == {"onnx", "onnx-int8"}


def test_int8_model_is_quantized_and_runs(exported):
    model = onnx.load(str(exported / "bundle" / "model.int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (exported / "bundle" / "model.int8.onnx").stat().st_size < (exported / "bundle" / "model.onnx").stat().st_size
    decisions = Predictor.from_bundle(exported / "bundle", "onnx-int8").predict_paths(read_split(exported, "test")[0])
    assert all(d.label in ("dent", "ok", "scratch") and 0 < d.confidence <= 1 for d in decisions)


def test_opencv_dnn_gives_the_same_top1(exported):
    manifest = read_manifest(exported / "bundle")
    paths, _ = read_split(exported, "test")
    x = np.stack([load_and_preprocess(p, manifest.preprocess) for p in paths])
    net = cv2.dnn.readNetFromONNX(str(exported / "bundle" / "model.onnx"))
    tops = []
    for i in range(len(x)):
        net.setInput(x[i : i + 1])
        tops.append(int(net.forward("logits").argmax()))
    ort_tops = Predictor.from_bundle(exported / "bundle", "onnx").logits(x).argmax(1).tolist()
    assert tops == ort_tops


def test_altered_artefact_is_refused(exported, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported / "bundle", bundle)
    with (bundle / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"model.onnx: sha256 .* does not match the manifest"):
        Predictor.from_bundle(bundle, "onnx")


def test_export_writes_a_triton_repository(exported, tmp_path):
    """``--formats onnx,triton``: the repository in the bundle, its config parsed with tritonclient's
    model_config_pb2 (tests/test_triton_export.py), its files in the manifest; the Predictor unaffected."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from kit.recipe import read_recipe_lock
    from tests.test_triton_export import check_repository

    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    result = CliRunner().invoke(app, ["export", str(run_dir), "--formats", "onnx,triton"])
    assert result.exit_code == 0, result.output
    assert "triton: tiny_line in triton/" in result.output
    recipe = read_recipe_lock(run_dir / "recipe.lock.yaml")
    check_repository(run_dir / "bundle", recipe.export.max_batch, [recipe.export.opt_batch])
    assert "triton" not in read_manifest(run_dir / "bundle").artefacts  # a repository, not a runtime
    assert Predictor.from_bundle(run_dir / "bundle", "auto").runtime.name == "onnx"


def test_missing_runtime_artefact_and_tensorrt_skip(exported):
    with pytest.raises(BundleError, match=r"the bundle has no 'tensorrt-fp16' artefact \(has: onnx, onnx-int8\)"):
        Predictor.from_bundle(exported / "bundle", "tensorrt-fp16")
    with pytest.raises(BundleError, match=r"the bundle has no 'tensorrt-fp16' artefact"):
        Predictor.from_bundle(exported / "bundle", "tensorrt")
    assert Predictor.from_bundle(exported / "bundle").runtime.name in ("onnx", "tensorrt-fp16")


def test_failed_gate_exits_nonzero_with_the_table(exported, tmp_path):
    import yaml

    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    lock = yaml.safe_load((run_dir / "recipe.lock.yaml").read_text())
    lock["recipe"]["export"]["parity"]["onnx_max_abs_prob_delta"] = 0.0
    (run_dir / "recipe.lock.yaml").write_text(yaml.safe_dump(lock))
    result = CliRunner().invoke(app, ["export", str(run_dir), "--formats", "onnx"])
    assert result.exit_code == 1
    assert "FAIL export.parity.onnx_max_abs_prob_delta: ONNX FP32 max |delta p| against the torch student" in result.output
    assert "parity gate failed: export.parity.onnx_max_abs_prob_delta" in result.output
    assert "error: " in result.output and "parity gate failed: export.parity.onnx_max_abs_prob_delta = " in result.output
    with pytest.raises(ParityGateError):
        export_bundle(run_dir, ["onnx"], log=lambda m: None)


def test_export_on_an_unfinished_run_is_refused(tmp_path, finished_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    del state["stages"]["student"]
    (run_dir / "state.json").write_text(json.dumps(state))
    result = CliRunner().invoke(app, ["export", str(run_dir)])
    assert result.exit_code == 1
    assert f"error: {run_dir}: stage 'student' has not finished, so `kit export` cannot run" in result.output


def test_edge_runtime_predicts_without_torch(exported, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    images = read_split(exported, "test")[0][:3]
    result = subprocess.run([sys.executable, "-m", "deploy", "predict", str(exported / "bundle"), *map(str, images),
                             "--runtime", "onnx"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in images]
    assert all(line["runtime"] == "onnx" and line["label"] in ("dent", "ok", "scratch") for line in lines)
    assert all(line["abstain"] is False for line in lines)


@pytest.mark.gpu
@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=f"TensorRT path: {tensorrt_unavailable_reason()}")
def test_tensorrt_engine_builds_and_agrees(exported, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    result = export_bundle(run_dir, ["onnx", "onnx-int8", "tensorrt-fp16", "tensorrt-int8"], log=lambda m: None)
    assert "tensorrt-fp16" in result.built or "tensorrt-fp16" in result.skipped
    for fmt in ("tensorrt-fp16", "tensorrt-int8"):
        if fmt in result.built:
            row = next(r for r in result.parity["rungs"] if r["rung"] == fmt)
            assert row["vs_parent"]["agreement"] >= 0.9


def test_latency_bench_returns_ordered_percentiles(exported):
    from deploy.bench import bench_end_to_end, bench_model

    predictor = Predictor.from_bundle(exported / "bundle", "onnx")
    model_only = bench_model(predictor, batch=2, warmup=2, iters=20)
    assert 0 < model_only["p50_ms"] <= model_only["p95_ms"] <= model_only["p99_ms"]
    assert model_only["batch"] == 2 and model_only["images_per_s"] > 0
    e2e = bench_end_to_end(predictor, read_split(exported, "test")[0], batch=1, warmup=1, iters=10)
    assert e2e["iters"] == 10 and 0 < e2e["p50_ms"] <= e2e["p99_ms"]


def test_engine_fingerprint_mismatch_is_refused():
    from deploy.runtimes.tensorrt_backend import check_fingerprint

    built = {"tensorrt": "10.13.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    check_fingerprint(Path("model.fp16.plan"), built, dict(built))
    with pytest.raises(BundleError, match=r"model.fp16.plan: engine was built for gpu 'NVIDIA H200', this machine has 'NVIDIA L4'"):
        check_fingerprint(Path("model.fp16.plan"), built, {**built, "gpu": "NVIDIA L4"})
    with pytest.raises(BundleError, match="no build fingerprint"):
        check_fingerprint(Path("model.fp16.plan"), None, built)


def test_calibration_batches_divide_the_set_evenly():
    from kit.export.onnx_int8 import even_batch_size

    assert even_batch_size(396, 16) == 12 and even_batch_size(128, 16) == 16
    assert even_batch_size(127, 16) == 1 and even_batch_size(5, 16) == 5
