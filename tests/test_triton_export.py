"""The Triton model repository ``kit export --formats ...,triton`` writes, checked by parsing its
config.pbtxt with tritonclient's own ``model_config_pb2`` (Triton's ModelConfig message)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402

from deploy import Predictor, read_manifest  # noqa: E402
from deploy.manifest import sha256_file  # noqa: E402
from kit.export.triton import write_triton_repository  # noqa: E402
from tests.edge_bundle import make_bundle, sample_images  # noqa: E402


def parse_config(path: Path):
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def check_repository(bundle: Path, max_batch: int, preferred: list[int]) -> dict:
    """What every Triton repository of a bundle must satisfy; returns the manifest entry."""
    manifest = read_manifest(bundle)
    entry = manifest.extra["triton"]
    line = manifest.extra["line"]
    assert line in entry["models"]
    for name, model in entry["models"].items():
        folder = bundle / "triton" / name
        config = parse_config(folder / "config.pbtxt")
        assert config.name == name and config.platform == model["platform"]
        assert config.max_batch_size == max_batch
        assert list(config.dynamic_batching.preferred_batch_size) == preferred
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        (inp,) = config.input
        spec = manifest.preprocess
        assert (inp.name, inp.data_type, list(inp.dims)) == ("images", model_config_pb2.TYPE_FP32,
                                                           [spec.num_channels, *spec.image_size])
        assert inp.format == model_config_pb2.ModelInput.FORMAT_NCHW
        logits = next(o for o in config.output if o.name == "logits")
        assert (logits.data_type, list(logits.dims), logits.label_filename) == \
            (model_config_pb2.TYPE_FP32, [len(manifest.classes)], "labels.txt")
        assert (folder / "labels.txt").read_text().splitlines() == manifest.classes
        for rel, meta in model["files"].items():
            assert sha256_file(bundle / rel) == meta["sha256"] and (bundle / rel).stat().st_size == meta["bytes"]
    onnx_model = entry["models"][line]
    assert onnx_model["platform"] == "onnxruntime_onnx"
    assert sha256_file(bundle / "triton" / line / "1" / "model.onnx") == manifest.artefacts["onnx"]["sha256"]
    return entry


def test_repository_config_parses_with_tritons_model_config(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    manifest = read_manifest(bundle)
    before = Predictor.from_bundle(bundle, "onnx").predict(sample_images(2))
    manifest.extra["triton"] = write_triton_repository(bundle, manifest, max_batch_size=16, preferred_batch=[8, 64])
    (bundle / "model.json").write_text(json.dumps(manifest.to_dict()), encoding="utf-8")
    entry = check_repository(bundle, 16, [8])  # a preferred size above max_batch_size is left out
    assert list(entry["models"]) == ["station_line"]
    # the bundle still loads and decides the same with the repository in it
    after = Predictor.from_bundle(bundle, "auto").predict(sample_images(2))
    assert [(d.label, d.action) for d in after] == [(d.label, d.action) for d in before]
    assert np.allclose([d.confidence for d in after], [d.confidence for d in before], atol=1e-6)


def test_a_built_engine_gets_a_tensorrt_plan_model(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    manifest = read_manifest(bundle)
    (bundle / "model.fp16.plan").write_bytes(b"engine bytes")  # the repository copies it; it is never run here
    manifest.artefacts["tensorrt-fp16"] = {"file": "model.fp16.plan", "sha256": sha256_file(bundle / "model.fp16.plan"),
                                           "bytes": 12}
    entry = write_triton_repository(bundle, manifest, max_batch_size=32, preferred_batch=[8])
    config = parse_config(bundle / "triton" / "station_line_tensorrt" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert (bundle / "triton" / "station_line_tensorrt" / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert entry["models"]["station_line_tensorrt"]["source"] == "tensorrt-fp16"


def test_triton_client_example_preprocesses_with_deploy(tmp_path):
    """The README's client path without a server: deploy.preprocess on the client, the repository's
    model.onnx as Triton would run it, softmax(logits / T) and the bundle's decision rule: the same
    decisions as the Predictor."""
    import onnxruntime as ort

    from deploy.predictor import softmax
    from deploy.preprocess import preprocess_batch, read_image

    bundle = make_bundle(tmp_path / "bundle")
    manifest = read_manifest(bundle)
    write_triton_repository(bundle, manifest)
    paths = sample_images(3)
    batch = preprocess_batch([read_image(p, manifest.preprocess.channels) for p in paths], manifest.preprocess)
    session = ort.InferenceSession(str(bundle / "triton" / "station_line" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    probabilities = softmax(session.run(["logits"], {"images": batch})[0], manifest.temperature)
    rule = manifest.decision_rule
    accepted = rule.accepted(probabilities, manifest.classes)
    labels = [manifest.classes[i] for i in probabilities.argmax(1)]
    actions = [rule.action(label, not ok) for label, ok in zip(labels, accepted)]
    want = Predictor.from_bundle(bundle, "onnx").predict(paths)
    assert actions == [d.action for d in want] and labels == [d.label for d in want]


def test_triton_format_is_a_valid_export_choice():
    from typing import get_args

    from kit.recipe.schema import ExportConfig, ExportFormat

    assert "triton" in get_args(ExportFormat)
    assert ExportConfig(formats=["onnx", "triton"]).formats == ["onnx", "triton"]
