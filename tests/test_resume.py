"""Kill a real ``kit run`` with SIGKILL mid-training, resume it, get the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from kit.run import run_line
from tests.conftest import tiny_recipe_dict, write_recipe


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_line):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_line, **{"student.epochs": 6}))
    reference = run_line(recipe, out_root=tmp_path / "ref", name="ref").metrics

    run_dir = tmp_path / "runs" / "tiny_line" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kit", "run", str(recipe), "--out", str(tmp_path / "runs"), "--name", "killed"],
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

    result = subprocess.run([sys.executable, "-m", "kit", "run", str(run_dir), "--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "student: resuming after epoch" in result.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    for role in ("teacher", "student"):
        assert resumed[role]["confusion_matrix"] == reference[role]["confusion_matrix"]
        assert resumed[role]["accuracy"] == reference[role]["accuracy"]
    assert resumed["agreement"] == reference["agreement"]
