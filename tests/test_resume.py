"""Kill a real ``kit run`` mid-training (SIGKILL, SIGTERM), resume it, get the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.run import run_line
from tests.conftest import tiny_recipe_dict, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_line) -> Path:
    return write_recipe(tmp_path_factory.mktemp("resume") / "tiny.yaml", tiny_recipe_dict(tiny_line, **{"student.epochs": 6}))


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> dict:
    """One uninterrupted run that both interrupted runs must reproduce (trained once, not once per test)."""
    return run_line(recipe, out_root=tmp_path_factory.mktemp("ref"), name="ref", stop_after="train").metrics


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, recipe, reference):

    run_dir = tmp_path / "runs" / "tiny_line" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kit", "run", str(recipe), "--out", str(tmp_path / "runs"), "--name", "killed",
         "--stop-after", "train"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    resume_state = run_dir / "checkpoints" / "student.last.pt"
    deadline = time.monotonic() + 120
    while not resume_state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((run_dir / "state.json").read_text())
    assert "teacher" in state["stages"] and "student" not in state["stages"], "the run was not interrupted mid-student"
    assert not (run_dir / "metrics.json").exists()

    result = subprocess.run([sys.executable, "-m", "kit", "run", str(run_dir), "--resume", "--stop-after", "train"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "student: resuming after epoch" in result.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    for role in ("teacher", "student"):
        assert resumed[role]["confusion_matrix"] == reference[role]["confusion_matrix"]
        assert resumed[role]["accuracy"] == reference[role]["accuracy"]
    assert resumed["agreement"] == reference["agreement"]


def test_sigterm_stops_cleanly_and_resume_finishes_the_comparison_student(tmp_path, recipe, reference):

    run_dir = tmp_path / "runs" / "tiny_line" / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kit", "run", str(recipe), "--out", str(tmp_path / "runs"), "--name", "term",
         "--stop-after", "train"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    resume_state = run_dir / "checkpoints" / "student-none.last.pt"
    deadline = time.monotonic() + 180
    while not resume_state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    state = json.loads((run_dir / "state.json").read_text())
    assert "student" in state["stages"] and "student-none" not in state["stages"]
    assert not list(run_dir.rglob("*.tmp")), "a half-written file was left behind"

    result = subprocess.run([sys.executable, "-m", "kit", "run", str(run_dir), "--resume", "--stop-after", "train"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["compare"]["none"]["confusion_matrix"] == reference["compare"]["none"]["confusion_matrix"]
    assert resumed["student"]["accuracy"] == reference["student"]["accuracy"]
