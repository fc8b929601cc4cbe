"""What the station refuses to load (deploy.manifest, deploy.predictor): a ``model.json`` missing a value
that steers decisions, one that disagrees with the manifest embedded in the model file, and a class list
that does not match the model's outputs. Each is refused in one line by ``deploy predict``, ``deploy
watch`` and ``deploy serve`` (a reload is refused in tests/test_serve.py), never served."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from deploy.cli import app as deploy_app
from deploy.manifest import BundleError, read_manifest, sha256_file
from deploy.predictor import Predictor
from tests.edge_bundle import CLASSES, make_bundle, sample_images

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", seed=0)


def _edited(bundle: Path, folder: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of ``bundle`` whose model.json was edited by hand."""
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "model.json").read_text())
    edit(manifest)
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _predict(bundle: Path, *paths: Path):
    return CliRunner().invoke(deploy_app, ["predict", str(bundle), *map(str, paths or sample_images(2)), "--runtime", "onnx"])


# -- defect 2: every value that steers a decision is explicit -------------------------------------------------

MISSING = {
    "decision": (lambda m: m.pop("decision"), "decision: missing; it holds the good-part class (ok_class) that "
                 "tells accept from reject"),
    "decision.ok_class": (lambda m: m["decision"].pop("ok_class"), "decision.ok_class: missing; name the good-part "
                          "class, or write null for a line without one (every confident decision is then accept)"),
    "temperature": (lambda m: m.pop("temperature"), "temperature: missing; write the calibrated temperature "
                    "(1.0: uncalibrated)"),
    "operating_threshold": (lambda m: m.pop("operating_threshold"), "operating_threshold: missing; write the "
                            "certified threshold, or null for no review band (every part decided by the model)"),
}


@pytest.mark.parametrize("field", list(MISSING))
def test_a_manifest_without_a_value_that_steers_decisions_is_refused_in_one_line(bundle, tmp_path, field):
    """Each of these was filled in silently: no decision block or no ok_class answered a 100 % scratch with
    accept, no temperature became 1.0, no threshold sent no part to review."""
    edit, reason = MISSING[field]
    edited = _edited(bundle, tmp_path / "b", edit)
    with pytest.raises(BundleError) as refused:
        Predictor.from_bundle(edited, "onnx")
    assert str(refused.value) == f"{edited / 'model.json'}: {reason}"
    result = _predict(edited)
    assert result.exit_code == 1 and result.output == f"error: {edited / 'model.json'}: {reason}\n"


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m.update(temperature=0), "temperature: 0 is not a positive number"),
    (lambda m: m.update(temperature="1.0"), "temperature: '1.0' is not a positive number"),
    (lambda m: m.update(operating_threshold="high"), "operating_threshold: 'high' is not a number or null"),
    (lambda m: m["decision"].update(threshold=0.2), "decision.threshold 0.2 disagrees with operating_threshold 0.55; "
     "the two are written together, one of them was edited by hand: re-export or re-verify the bundle"),
    (lambda m: m.update(classes=["ok", "ok", "scratch"]), "classes: 'ok' is named twice"),
])
def test_a_manifest_with_a_bad_steering_value_is_refused(bundle, tmp_path, edit, reason):
    edited = _edited(bundle, tmp_path / "b", edit)
    with pytest.raises(BundleError) as refused:
        read_manifest(edited)
    assert str(refused.value) == f"{edited / 'model.json'}: {reason}"


def test_explicit_nulls_are_decisions_of_their_own(bundle, tmp_path):
    """``operating_threshold: null`` says "no review band"; ``ok_class: null`` says "a line without a good-part
    class". Written out, they load; what is missing is refused (above)."""
    def edit(m):
        m["operating_threshold"] = None
        m["decision"].update(threshold=None, ok_class=None)

    predictor = Predictor.from_bundle(_edited(bundle, tmp_path / "b", edit), "onnx")
    decisions = predictor.predict_paths(sample_images(3))
    assert {d.action for d in decisions} == {"accept"} and not any(d.abstain for d in decisions)


def test_a_bundle_of_kit_export_before_verify_and_after_loads(bundle, tmp_path):
    """What ``kit verify`` writes back (kit/verify/kpi.py write_manifest_calibration): its own temperature,
    threshold and ok_class, and the operating point it certified; model.json then differs from the manifest
    embedded at export in exactly these values, which is allowed."""
    def verified(m):
        m.update(temperature=1.7, operating_threshold=0.8)
        m["decision"].update(threshold=0.8, ok_class="ok", class_thresholds={"ok": 0.9})
        m["operating_point"] = {"target": "accepted_accuracy>=0.99", "threshold": 0.8, "ok_class": "ok"}
        m["calibration"] = {"temperature": 1.7}

    manifest = read_manifest(_edited(bundle, tmp_path / "b", verified))
    assert (manifest.temperature, manifest.operating_threshold, manifest.ok_class) == (1.7, 0.8, "ok")
    assert Predictor.from_bundle(tmp_path / "b", "onnx").manifest.class_thresholds == {"ok": 0.9}


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m.update(classes=["scratch", "ok", "dent"]),
     "classes ['scratch', 'ok', 'dent'] differ from the ones model.onnx was exported with (['dent', 'ok', 'scratch'])"),
    (lambda m: m["preprocess"].update(mean=[0.2]),
     "preprocess.mean [0.2] differs from the one model.onnx was exported with ([0.449])"),
])
def test_a_manifest_that_disagrees_with_the_one_embedded_in_the_model_is_refused(bundle, tmp_path, edit, reason):
    """model.onnx is hash-checked and carries the manifest it was exported with; model.json was never compared
    with it, so a reordered class list turned every scratch into a dent with no word."""
    edited = _edited(bundle, tmp_path / "b", edit)
    manifest = json.loads((edited / "model.json").read_text())
    assert manifest["artefacts"]["onnx"]["sha256"] == sha256_file(edited / "model.onnx")  # the model itself is intact
    result = _predict(edited)
    assert result.exit_code == 1
    assert result.output == (f"error: {edited / 'model.json'}: {reason}; model.json was edited or belongs to another "
                             "model: copy the bundle again or re-export it (kit export RUN_DIR)\n")


def test_a_model_file_without_an_embedded_manifest_is_checked_by_its_outputs_alone(tmp_path):
    predictor = Predictor.from_bundle(make_bundle(tmp_path / "b", embed=False), "onnx")
    assert len(predictor.predict_paths(sample_images(1))) == 3  # one per class


# -- defect 3: the class list matches the model's outputs -------------------------------------------------------

def test_a_class_list_shorter_than_the_model_output_is_refused_at_load(tmp_path):
    """Two names for three outputs loaded; a part of the third class then failed its whole micro-batch."""
    narrow = make_bundle(tmp_path / "narrow", classes=["dent", "ok"])
    with pytest.raises(BundleError) as refused:
        Predictor.from_bundle(narrow, "onnx")
    assert str(refused.value) == (f"{narrow / 'model.onnx'}: the model gives 3 scores per image, model.json names 2 "
                                  "classes (dent, ok); the class list must name every output, in order: re-export "
                                  "the bundle (kit export RUN_DIR)")


def test_an_output_width_the_graph_does_not_declare_is_measured_by_a_warm_up_run(tmp_path):
    """A model whose output shape is symbolic (``[batch, classes]``): one inference on a zero batch tells."""
    onnx = pytest.importorskip("onnx", reason="the onnx package (train extra) builds the model")
    from tests.edge_bundle import build_onnx_model

    wide = make_bundle(tmp_path / "wide", classes=["dent", "ok", "scratch", "pit"], embed=False)
    model = build_onnx_model(0)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(model, wide / "model.onnx")
    manifest = json.loads((wide / "model.json").read_text())
    manifest["artefacts"]["onnx"]["sha256"] = sha256_file(wide / "model.onnx")
    (wide / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"the model gives 3 scores per image, model.json names 4 classes \(dent, ok, "
                       r"scratch, pit\)"):
        Predictor.from_bundle(wide, "onnx")
    (wide / "model.json").write_text(json.dumps({**manifest, "classes": CLASSES,
                                                 "decision": {**manifest["decision"], "class_thresholds": {}}}))
    assert Predictor.from_bundle(wide, "onnx").classes == CLASSES  # the same model with the right list loads


@pytest.mark.parametrize("command", ["predict", "watch", "serve"])
def test_every_station_command_refuses_a_class_list_that_does_not_fit_in_one_line(tmp_path, command):
    """In a subprocess with a time limit: a station that loads the bundle would serve (or watch) until stopped."""
    if command == "serve":
        pytest.importorskip("fastapi")
    narrow = make_bundle(tmp_path / "narrow", classes=["dent", "ok"])
    (tmp_path / "in").mkdir()
    args = {"predict": ["predict", str(narrow), *map(str, sample_images(3, ("scratch",))), "--runtime", "onnx"],
            "watch": ["watch", str(tmp_path / "in"), "--bundle", str(narrow), "--done", str(tmp_path / "done"),
                      "--runtime", "onnx"],
            "serve": ["serve", str(narrow), "--port", "0", "--runtime", "onnx", "--no-log"]}[command]
    try:
        result = subprocess.run([sys.executable, "-m", "deploy", *args], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"deploy {command} took the bundle and ran: {exc.stderr}") from None
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr == (f"error: {narrow / 'model.onnx'}: the model gives 3 scores per image, model.json names "
                             "2 classes (dent, ok); the class list must name every output, in order: re-export the "
                             "bundle (kit export RUN_DIR)\n")
