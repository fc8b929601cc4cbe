"""The edge tier: ``python -m pytest -m edge`` runs on an edge box's install (``pip install
"inspection-kit[serve]"`` plus pytest), without torch, timm, albumentations, onnx or the training side.

Two guards keep it so: the tier collects in a subprocess where those packages cannot be imported, and the
committed ONNX files it serves are the ones the ``onnx`` package would build (so they are not stale).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.make_edge_anomaly import build_anomaly_model, model_path
from tests.edge_bundle import BLOCK_HEAVY, COMMITTED_SEEDS, build_onnx_model, committed_model_path

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]
# The training side and the train extra: none of it is on an edge box.
NOT_ON_AN_EDGE_BOX = ("torch", "timm", "albumentations", "kit", "onnx", "jinja2", "matplotlib", "yaml")
# Modules of the tier, at least: the station, the watcher, the review queue and these guards.
EDGE_MODULES = {"test_serve.py", "test_watch.py", "test_review_queue.py", "test_edge_install.py",
                "test_edge_tier.py", "test_constraints.py", "test_anomaly_edge.py"}


def test_the_edge_tier_collects_without_the_training_side(tmp_path):
    blocked = BLOCK_HEAVY.replace("('torch', 'timm', 'albumentations', 'kit')", repr(NOT_ON_AN_EDGE_BOX))
    assert blocked != BLOCK_HEAVY
    (tmp_path / "sitecustomize.py").write_text(blocked)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    probe = subprocess.run([sys.executable, "-c", "import onnx"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "edge", "--collect-only", "-q", "-p", "no:cacheprovider",
                             str(REPO / "tests")], env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    collected = {line.split("::")[0].split("/")[-1] for line in result.stdout.splitlines() if "::" in line}
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert EDGE_MODULES <= collected, f"missing from the edge tier: {sorted(EDGE_MODULES - collected)}"
    assert "error" not in result.stdout.lower().split("collected")[-1]


@pytest.mark.parametrize("seed", COMMITTED_SEEDS)
def test_the_committed_edge_models_are_what_onnx_builds(seed):
    onnx = pytest.importorskip("onnx", reason="the onnx package (train extra) builds the reference")
    assert committed_model_path(seed).read_bytes() == build_onnx_model(seed).SerializeToString()
    onnx.checker.check_model(str(committed_model_path(seed)))


@pytest.mark.parametrize("hybrid", [False, True], ids=["plain", "hybrid"])
def test_the_committed_anomaly_models_are_what_their_script_builds(hybrid):
    onnx = pytest.importorskip("onnx", reason="the onnx package (train extra) builds the reference")
    assert model_path(hybrid).read_bytes() == build_anomaly_model(hybrid).SerializeToString()
    onnx.checker.check_model(str(model_path(hybrid)))
