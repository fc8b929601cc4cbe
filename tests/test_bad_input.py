"""The bad-input catalogue, end to end through the CLI: one line naming the file or recipe field,
exit 1, no traceback, and nothing left behind that looks like a result.

Cases that are repaired rather than refused (16-bit and RGBA images, mixed sizes, odd file names)
must run through to a finished run.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deploy.cli import app as deploy_app
from kit.cli import app
from tests.conftest import tiny_recipe_dict, write_recipe


def _kit(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors and fragment in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def _run(tmp_path: Path, root: Path, **overrides):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(root, **overrides))
    return _kit("run", str(recipe), "--out", str(tmp_path / "runs"), "--stop-after", "train")


def _no_run_left(tmp_path: Path) -> None:
    line_dir = tmp_path / "runs" / "tiny_line"
    assert not line_dir.exists() or not any(line_dir.iterdir()), "a failed run left a run directory behind"


@pytest.fixture
def line(tmp_path, tiny_line) -> Path:
    root = tmp_path / "line"
    shutil.copytree(tiny_line, root)
    return root


# -- data -----------------------------------------------------------------------------------------

def test_nonexistent_data_root(tmp_path):
    _one_line_error(_run(tmp_path, tmp_path / "nowhere"), "data.root: folder not found:")
    _no_run_left(tmp_path)


def test_empty_data_root(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(_run(tmp_path, tmp_path / "empty"), "data.root: no class folders")
    _no_run_left(tmp_path)


def test_class_folder_without_images(tmp_path, line):
    (line / "stain").mkdir()
    (line / "stain" / "notes.txt").write_text("not an image")
    _one_line_error(_run(tmp_path, line), "class folder 'stain' has no images")
    _no_run_left(tmp_path)


@pytest.mark.parametrize("field, overrides", [
    ("line.ok_class", {"line.ok_class": "good part"}),
    ("line.defect_rate", {"line.ok_class": "ok", "line.defect_rate": {"scratch": 0.01, "crack": 0.01}}),
    ("kpi.max_class_escape_rate", {"line.ok_class": "ok", "kpi.max_class_escape_rate": {"crack": 0.01}}),
    ("verify.threshold.class_thresholds", {"verify.threshold": {"accepted_accuracy": 0.9, "class_thresholds": {"good": 0.9}}}),
    ("verify.threshold.ok_class", {"verify.threshold": {"max_escape_rate": 0.01, "ok_class": "good"}}),
])
def test_a_field_naming_a_class_the_line_lacks_stops_before_training(tmp_path, line, field, overrides):
    """The classes come from the folders, so the recipe cannot be checked alone: the data stage checks every field
    that names a class, before the teacher trains (it used to fail at export, naming a temporary file)."""
    result = _run(tmp_path, line, **overrides)
    _one_line_error(result, f"{field}: ")
    assert "is not one of the line's classes (dent, ok, scratch)" in " ".join(result.output.split())
    assert "teacher" not in result.output and "epoch" not in result.output  # stopped before any training
    _no_run_left(tmp_path)


def test_single_class(tmp_path, tiny_line):
    shutil.copytree(tiny_line / "ok", tmp_path / "one" / "ok")
    _one_line_error(_run(tmp_path, tmp_path / "one"), "found only one class ('ok')")


@pytest.mark.parametrize("case, content, message", [
    ("zero-byte", b"", "file is empty (0 bytes)"),
    ("text-as-png", b"this is a text file, not a PNG\n", "not a decodable image"),
    ("truncated-jpeg", None, "not a decodable image"),
])
def test_unreadable_image_stops_and_names_the_file(tmp_path, line, case, content, message):
    bad = line / "dent" / "bad image.png"
    if content is None:
        ok, buf = cv2.imencode(".jpg", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
        bad = bad.with_suffix(".jpg")
        content = buf.tobytes()[:300]
    bad.write_bytes(content)
    result = _run(tmp_path, line)
    _one_line_error(result, f"{bad}: {message}")
    assert "1 of 21 images unreadable" in " ".join(result.output.split())
    _no_run_left(tmp_path)


def test_unreadable_image_is_skipped_within_the_recipe_limit(tmp_path, line):
    (line / "ok" / "empty.png").write_bytes(b"")
    result = _run(tmp_path, line, **{"data.max_unreadable_fraction": 0.1})
    assert result.exit_code == 0, result.output
    assert "skipped unreadable image:" in result.output and "empty.png" in result.output


def test_16bit_rgba_mixed_sizes_and_odd_names_are_converted_and_run(tmp_path, line):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(line / "ok" / "sixteen bit.png"), (rng.random((70, 90)) * 65535).astype(np.uint16))
    cv2.imwrite(str(line / "ok" / "rgba ü.png"), (rng.random((40, 40, 4)) * 255).astype(np.uint8))
    cv2.imwrite(str(line / "dent" / "big.png"), (rng.random((200, 120)) * 255).astype(np.uint8))
    odd = line / "scratch" / "a;b $(echo x) & 'q'.png"
    shutil.copy(next((line / "scratch").glob("*.png")), odd)
    (line / "scratch").rename(line / "scratch línea 7")
    result = _run(tmp_path, line)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    split = (run_dir / "split.csv").read_text(encoding="utf-8")
    assert "sixteen bit.png" in split and "rgba ü.png" in split and "scratch línea 7" in split
    assert "$(echo x)" in split  # the name is data, never passed to a shell


@pytest.mark.parametrize("rows, message", [
    ("file,label\nok/ok_0000.png,ok\n", "missing column 'path'"),
    ("path,label\n../../etc/passwd,ok\n", "path '../../etc/passwd' is outside data.root"),
    ("path,label\nok/ok_0000.png,okay\nok/ok_0001.png,ok\ndent/dent_0000.png,dent\n", "unknown label 'okay'"),
])
def test_manifest_problems(tmp_path, tiny_line, rows, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(rows, encoding="utf-8")
    overrides = {"data.layout": "manifest", "data.manifest": str(manifest)}
    if "okay" in rows:
        overrides["data.classes"] = ["dent", "ok"]
    result = _run(tmp_path, tiny_line, **overrides)
    _one_line_error(result, message)
    assert "m.csv" in result.output


# -- recipe ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"teacher.epoch": 3}, "teacher.epoch: unknown field (did you mean epochs?)"),
    ({"teacher.epochs": "many"}, "teacher.epochs:"),
    ({"student.epochs": -2}, "student.epochs:"),
    ({"student.arch": "resnet_does_not_exist"}, "student.arch: unknown timm architecture 'resnet_does_not_exist'"),
    ({"views.strong": [{"MotionBlurr": {}}]}, "views.strong[0]: unknown transform 'MotionBlurr' (did you mean MotionBlur?)"),
    ({"views.strong": [{"MotionBlur": {"blur_limit": 2}}]}, "views.strong[0]: bad argument to MotionBlur"),
])
def test_recipe_mistakes(tmp_path, tiny_line, overrides, message):
    _one_line_error(_run(tmp_path, tiny_line, **overrides), message)
    assert not (tmp_path / "runs").exists()


def test_recipe_cannot_run_code(tmp_path, tiny_line):
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("line: !!python/object/apply:os.system ['touch pwned']\n", encoding="utf-8")
    _one_line_error(_kit("run", str(recipe), "--out", str(tmp_path / "runs")), "evil.yaml")
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


# -- checkpoints ------------------------------------------------------------------------------------

def test_teacher_checkpoint_of_another_architecture(tmp_path, tiny_line, finished_run):
    result = _run(tmp_path, tiny_line, **{"teacher.checkpoint": str(finished_run / "student.pt"), "teacher.arch": "resnet10t"})
    _one_line_error(result, "student.pt")
    assert "mobilenetv3_small_050" in result.output and "resnet10t" in result.output


def test_teacher_checkpoint_that_is_not_a_checkpoint(tmp_path, tiny_line):
    fake = tmp_path / "teacher.pt"
    fake.write_text("not a checkpoint at all")
    _one_line_error(_run(tmp_path, tiny_line, **{"teacher.checkpoint": str(fake)}), f"{fake}:")


class _Exploit:
    """Unpickling this runs ``touch <target>``: the marker a refused checkpoint must never create."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        import os
        import shlex

        return (os.system, (f"touch {shlex.quote(self.target)}",))


def test_checkpoint_that_runs_code_is_refused(tmp_path, tiny_line):
    evil, marker = tmp_path / "teacher.pt", tmp_path / "pwned_by_checkpoint"
    buf = io.BytesIO()
    torch.save({"format": "inspection-kit/model", "payload": _Exploit(marker)}, buf, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    evil.write_bytes(buf.getvalue())
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "the_marker_works")))  # the exploit is real: plain pickle runs it
    assert (tmp_path / "the_marker_works").exists()
    result = _run(tmp_path, tiny_line, **{"teacher.checkpoint": str(evil)})
    _one_line_error(result, f"{evil}:")
    assert not marker.exists(), "the checkpoint executed code"


# -- bundles and run directories --------------------------------------------------------------------

@pytest.fixture
def bundle(finished_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir / "bundle"


def test_bundle_with_an_altered_model_is_refused(bundle, tiny_line):
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    image = next((tiny_line / "ok").glob("*.png"))
    result = CliRunner().invoke(deploy_app, ["predict", str(bundle), str(image), "--runtime", "onnx"])
    assert result.exit_code == 1
    assert "does not match the manifest" in result.output and "Traceback" not in result.output


def test_corrupted_onnx_file_is_one_line(bundle, tiny_line):
    from deploy.manifest import sha256_file

    model = bundle / "model.onnx"
    model.write_bytes(b"\x08\x01garbage that is not a protobuf model")
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["artefacts"]["onnx"]["sha256"] = sha256_file(model)  # even a "valid" hash does not make it load
    (bundle / "model.json").write_text(json.dumps(manifest))
    image = next((tiny_line / "ok").glob("*.png"))
    result = CliRunner().invoke(deploy_app, ["predict", str(bundle), str(image), "--runtime", "onnx"])
    assert result.exit_code == 1
    assert "ONNX Runtime cannot load the model" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["export", "verify", "report"])
def test_stage_commands_on_an_incomplete_run(tmp_path, finished_run, command):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    state = json.loads((run_dir / "state.json").read_text())
    for stage in ("student", "export", "verify", "report"):
        state["stages"].pop(stage, None)
    (run_dir / "state.json").write_text(json.dumps(state))
    needed = "student" if command == "export" else "export"
    _one_line_error(_kit(command, str(run_dir)), f"stage '{needed}' has not finished")


def test_stage_commands_on_a_folder_that_is_not_a_run(tmp_path):
    for command in ("export", "verify", "report", "threshold"):
        args = [command, str(tmp_path)] + (["--target", "accepted_accuracy=0.99"] if command == "threshold" else [])
        _one_line_error(_kit(*args), "not a run directory")
