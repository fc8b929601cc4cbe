"""Drift monitoring: imaging statistics, PSI / KS rules, and ``deploy monitor`` on a real bundle,
torch-free."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy.monitor import Thresholds, monitor, psi
from deploy.profile import image_statistics
from kit.rundir import read_split
from tests.edge_bundle import BLOCK_HEAVY

REPO = Path(__file__).resolve().parents[1]


def _texture(seed: int = 0, angle: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64]
    t = np.radians(angle)
    stripes = 128 + 60 * np.sin((x * np.cos(t) + y * np.sin(t)) / 3.0)
    return np.clip(stripes + rng.normal(0, 4, (64, 64)), 0, 255).astype(np.uint8)[:, :, None]


def test_statistics_move_the_right_way():
    base = _texture()
    s = image_statistics(base)
    assert image_statistics((base * 0.5).astype(np.uint8))["brightness"] < s["brightness"] - 50
    assert image_statistics(cv2.GaussianBlur(base, (0, 0), 2.0)[:, :, None])["sharpness"] < s["sharpness"] - 0.5
    noisy = np.clip(base + np.random.default_rng(1).normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    assert image_statistics(noisy)["noise"] > 2 * s["noise"]
    ramp = np.clip(base.astype(float) * np.linspace(0.4, 1.4, 64)[None, :, None], 0, 255).astype(np.uint8)
    assert image_statistics(ramp)["nonuniformity"] > s["nonuniformity"] + 0.3
    rotated = image_statistics(_texture(angle=90))
    assert abs(((rotated["orientation"] - s["orientation"]) % 180) - 90) < 10
    assert s["coherence"] > 0.8


def test_psi_is_zero_for_the_same_sample_and_grows_with_the_shift():
    ref = np.random.default_rng(0).normal(0, 1, 2000)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)
    shifts = [psi(ref, ref + d) for d in (0.1, 0.5, 1.0)]
    assert shifts[0] < 0.1 < shifts[1] < shifts[2]


def test_status_needs_size_and_significance_for_drift():
    th = Thresholds(psi_watch=0.1, psi_drift=0.25, ks_alpha=0.01)
    assert th.status(0.5, 1e-6) == "drift"
    assert th.status(0.5, 0.3) == "watch"  # large but not significant: few images
    assert th.status(0.15, 1e-4) == "watch"
    assert th.status(0.15, 0.3) == "ok"  # the usual sampling noise of a small folder
    assert th.status(0.02, 1e-5) == "ok"  # significant but negligible: a huge folder


@pytest.fixture(scope="module")
def folders(finished_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitor")
    reference = read_split(finished_run, "val")[0] + read_split(finished_run, "certify")[0] + read_split(finished_run, "test")[0]
    out = {name: root / name for name in ("same", "darker", "blurred")}
    for d in out.values():
        d.mkdir()
    for i, path in enumerate(reference * 3):  # three copies: enough images for a test to be significant
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if i < len(reference):
            shutil.copy(path, out["same"] / f"{i:03d}.png")
        cv2.imwrite(str(out["darker"] / f"{i:03d}.png"), (img * (0.45 + 0.01 * (i % 5))).astype(np.uint8))
        cv2.imwrite(str(out["blurred"] / f"{i:03d}.png"), cv2.GaussianBlur(img, (0, 0), 2.0 + 0.1 * (i % 5)))
    return out


def test_bundle_carries_a_reference_profile(finished_run):
    manifest = json.loads((finished_run / "bundle" / "model.json").read_text())
    profile = json.loads((finished_run / "bundle" / "profile.json").read_text())
    n = sum(len(read_split(finished_run, split)[0]) for split in ("val", "certify", "test"))  # every held-out image
    assert manifest["profile"]["file"] == "profile.json" and profile["images"] == n
    assert len(profile["logits"]) == n and len(profile["statistics"]["brightness"]) == n
    assert profile["thresholds"] == {"psi_watch": 0.1, "psi_drift": 0.25, "ks_alpha": 0.01, "min_images": 30}


def test_monitor_separates_shifted_from_unshifted(finished_run, folders):
    bundle = finished_run / "bundle"
    same = monitor(bundle, sorted(folders["same"].glob("*.png")))
    assert same["status"] == "ok", [(r["check"], r["status"]) for r in same["checks"]]
    darker = monitor(bundle, sorted(folders["darker"].glob("*.png")))
    by_check = {r["check"]: r for r in darker["checks"]}
    assert darker["status"] == "drift" and by_check["brightness"]["status"] == "drift"
    assert by_check["brightness"]["new_median"] < 0.6 * by_check["brightness"]["reference_median"]
    blurred = {r["check"]: r for r in monitor(bundle, sorted(folders["blurred"].glob("*.png")))["checks"]}
    assert blurred["sharpness"]["status"] == "drift"
    assert any("unreliable" in note for note in same["notes"])  # a tiny folder says so


def test_deploy_monitor_runs_without_torch_and_exits_2_on_drift(finished_run, folders, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    cmd = [sys.executable, "-m", "deploy", "monitor", str(finished_run / "bundle")]
    ok = subprocess.run(cmd + [str(folders["same"]), "--out", str(tmp_path / "same")], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1].startswith("OK:")
    drift = subprocess.run(cmd + [str(folders["darker"]), "--out", str(tmp_path / "dark")], env=env, capture_output=True, text=True)
    assert drift.returncode == 2, drift.stderr
    report = json.loads((tmp_path / "dark" / "drift.json").read_text())
    assert report["status"] == "drift" and (tmp_path / "dark" / "drift.png").stat().st_size > 0


def test_monitor_on_a_bundle_without_profile(finished_run, tmp_path):
    from typer.testing import CliRunner

    from deploy.cli import app

    bundle = tmp_path / "bundle"
    shutil.copytree(finished_run / "bundle", bundle)
    (bundle / "profile.json").unlink()
    result = CliRunner().invoke(app, ["monitor", str(bundle), str(tmp_path)])
    assert result.exit_code == 1 and "no reference profile" in result.output
