"""A small real bundle for the station tests, made in well under a second without torch.

A linear classifier in ONNX (Flatten -> MatMul -> Add) over 32 px gray images of the sample line,
with a manifest, decision rule and reference profile exactly as ``kit export`` writes them (the
manifest also embedded in ``model.onnx``'s metadata, as ``kit export`` embeds it), so ``Predictor``,
``deploy serve``, ``deploy watch`` and ``deploy monitor`` run on it unchanged.
Seeds give different models (different model ids) for reload tests.

``make_anomaly_bundle`` assembles an anomaly bundle (``task: anomaly``) the same way around the committed
graphs of ``tests/data/make_edge_anomaly.py`` (plain and hybrid), with a rule whose numbers are easy to
check by hand (``anomaly_rule``) and a reference profile of synthetic good parts (``good_parts``).

The ONNX files of the seeds the tests use are committed (``tests/data/``, 12 KB each), so the edge tier
(``pytest -m edge`` on an install without the ``train`` extra) needs no ``onnx`` package;
``tests/test_edge_tier.py`` checks that they are what ``build_onnx_model`` makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deploy.manifest import MANIFEST_NAME, Manifest, sha256_file
from deploy.preprocess import PreprocessSpec, preprocess_batch, read_image
from deploy.profile import PROFILE_NAME, build_profile, statistics_table

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "sample_line"
CLASSES = ["dent", "ok", "scratch"]
SIZE_PX = 32


def sample_images(per_class: int = 6, classes: tuple[str, ...] = ("ok", "scratch", "dent")) -> list[Path]:
    return [p for c in classes for p in sorted((SAMPLE / c).glob("*.png"))[:per_class]]


# A sitecustomize.py body that makes the training side unimportable: a subprocess started with it on PYTHONPATH
# behaves like an edge box, where torch, timm, albumentations and kit are not installed.
BLOCK_HEAVY = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'albumentations', 'kit'):
            raise ImportError(f'{name} is blocked: the edge runtime must not need it')
sys.meta_path.insert(0, _Block())
"""

EMBEDDED_MANIFEST_KEY = "inspection_kit_manifest"  # kit.export.onnx_fp32.MANIFEST_KEY (tests/test_export.py checks it)
MODEL_DIR = Path(__file__).resolve().parent / "data"
COMMITTED_SEEDS = (0, 1, 3)


def committed_model_path(seed: int) -> Path:
    return MODEL_DIR / f"edge_linear_seed{seed}.onnx"


def build_onnx_model(seed: int):
    """The linear classifier as an ``onnx.ModelProto`` (needs the ``onnx`` package)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n_in = SIZE_PX * SIZE_PX
    weights = (rng.normal(0, 0.06, (n_in, len(CLASSES)))).astype(np.float32)
    bias = np.array([0.0, 0.4, 0.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["scores"]),
         helper.make_node("Add", ["scores", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIZE_PX, SIZE_PX])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_embedded_manifest(model: bytes, manifest: dict) -> bytes:
    """``model`` with ``manifest`` in its ``metadata_props`` under the key ``kit export`` uses, without the
    ``onnx`` package: a serialized protobuf message followed by one more field is that message with the
    field added, so the entry (ModelProto field 14: a StringStringEntryProto of key 1 and value 2) is
    appended to the bytes."""
    key, value = EMBEDDED_MANIFEST_KEY.encode(), json.dumps(manifest, sort_keys=True).encode()
    entry = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value
    return model + bytes([(14 << 3) | 2]) + _varint(len(entry)) + entry


def make_bundle(folder: Path, seed: int = 0, threshold: float | None = 0.55, line: str = "station_line",
                classes: list[str] | None = None, embed: bool = True) -> Path:
    """``classes``: another class list than the model's three outputs (a bundle that does not fit its model);
    ``embed=False``: no manifest in ``model.onnx`` (a model file made elsewhere)."""
    import onnxruntime as ort

    folder.mkdir(parents=True, exist_ok=True)
    if seed in COMMITTED_SEEDS:
        model = committed_model_path(seed).read_bytes()
    else:
        model = build_onnx_model(seed).SerializeToString()
    spec = PreprocessSpec(image_size=(SIZE_PX, SIZE_PX), channels="gray")
    manifest = Manifest(
        classes=list(classes or CLASSES), preprocess=spec, artefacts={},
        temperature=1.0, operating_threshold=threshold, ok_class="ok",
        extra={"line": line, "created_at": "2026-01-01T00:00:00+00:00"},
    )
    # kit export embeds the manifest before the artefacts are hashed (so without them), then hashes the file
    (folder / "model.onnx").write_bytes(with_embedded_manifest(model, manifest.to_dict()) if embed else model)
    manifest.artefacts = {"onnx": {"file": "model.onnx", "opset": 17, "sha256": sha256_file(folder / "model.onnx"),
                                   "bytes": (folder / "model.onnx").stat().st_size}}
    reference = sample_images(20)
    images = [read_image(p, "gray") for p in reference]
    batch = preprocess_batch(images, spec)
    logits = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    from deploy.preprocess import prepare_image

    profile = build_profile(statistics_table([prepare_image(im, spec) for im in images]), logits, source="sample line",
                            thresholds={"psi_watch": 0.1, "psi_drift": 0.25, "ks_alpha": 0.01, "min_images": 30})
    (folder / PROFILE_NAME).write_text(json.dumps(profile), encoding="utf-8")
    manifest.extra["profile"] = {"file": PROFILE_NAME, "sha256": sha256_file(folder / PROFILE_NAME)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2), encoding="utf-8")
    return folder


# -- anomaly bundles -------------------------------------------------------------------------------------------

ANOMALY_SPEC = PreprocessSpec(image_size=(SIZE_PX, SIZE_PX), channels="gray", mean=(0.5,), std=(0.5,))
# good_scores: the q-th quantile is q / 99 up to 99 % (1.0 at the 99th percentile, as the contract normalises it),
# then 2.0 at 100 %: share below s is 0.99 s up to s = 1, then 0.99 + (s - 1) / 100 up to 2.
GOOD_SCORES = tuple([q / 99 for q in range(100)] + [2.0])
ACCEPT_BELOW, REJECT_AT = 0.93, 1.12
KIND_RADIUS = 0.04  # within 0.2 of a kind's normalised level: 25.5 grey levels


def anomaly_rule(hybrid: bool = False, **changes):
    from deploy.decision import AnomalyRule
    from tests.data.make_edge_anomaly import KINDS

    fields = {"ok_class": "ok", "accept_below": ACCEPT_BELOW, "reject_at": REJECT_AT, "good_scores": GOOD_SCORES,
              "kinds": KINDS if hybrid else (), "kind_radius": {k: KIND_RADIUS for k in KINDS} if hybrid else {}}
    return AnomalyRule(**{**fields, **changes})


def level_score(level: float) -> float:
    """The score (and every pixel of the map) of a uniform image at grey ``level``, by hand (make_edge_anomaly)."""
    from tests.data.make_edge_anomaly import CENTRE, SCALE

    return SCALE * (level / 127.5 - 1 - CENTRE) ** 2


def good_parts(n: int, seed: int = 0, size_px: int = 48, level: int = 128) -> list[np.ndarray]:
    """Synthetic good parts: mid grey with up to +-2..7 grey levels of noise (scores 0.004 to 0.06)."""
    rng = np.random.default_rng(seed)
    return [np.clip(level + rng.integers(-a, a + 1, (size_px, size_px)), 0, 255).astype(np.uint8)
            for a in rng.integers(2, 8, n)]


def make_anomaly_bundle(folder: Path, hybrid: bool = False, line: str = "anomaly_line", embed: bool = True,
                        rule=None, reference: list[np.ndarray] | None = None) -> Path:
    """An anomaly bundle as the kit writes it: ``Manifest(task="anomaly", anomaly=rule)``, the manifest embedded in
    ``model.onnx``, and a reference profile (``build_anomaly_profile``) of ``reference`` (default: 40 good parts)."""
    import onnxruntime as ort

    from deploy.preprocess import prepare_image
    from deploy.profile import build_anomaly_profile
    from tests.data.make_edge_anomaly import model_path

    folder.mkdir(parents=True, exist_ok=True)
    rule = rule or anomaly_rule(hybrid)
    manifest = Manifest(classes=rule.labels(), preprocess=ANOMALY_SPEC, artefacts={}, task="anomaly", anomaly=rule,
                        extra={"line": line, "created_at": "2026-01-01T00:00:00+00:00"})
    model = model_path(hybrid).read_bytes()
    (folder / "model.onnx").write_bytes(with_embedded_manifest(model, manifest.to_dict()) if embed else model)
    manifest.artefacts = {"onnx": {"file": "model.onnx", "opset": 17, "sha256": sha256_file(folder / "model.onnx"),
                                   "bytes": (folder / "model.onnx").stat().st_size}}
    images = reference if reference is not None else good_parts(40)
    outputs = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": preprocess_batch(images, ANOMALY_SPEC)})
    profile = build_anomaly_profile(statistics_table([prepare_image(im, ANOMALY_SPEC) for im in images]), outputs[0],
                                    source="good parts", thresholds={"psi_watch": 0.1, "psi_drift": 0.25,
                                                                     "ks_alpha": 0.01, "min_images": 30},
                                    kind_distance=outputs[2] if hybrid else None)
    (folder / PROFILE_NAME).write_text(json.dumps(profile), encoding="utf-8")
    manifest.extra["profile"] = {"file": PROFILE_NAME, "sha256": sha256_file(folder / PROFILE_NAME)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2), encoding="utf-8")
    return folder
