"""torch.distributed training on CPU: two gloo processes give the single-process result."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kit.run import run_line
from kit.train.distributed import DistContext, SplitBatchSampler
from tests.conftest import tiny_recipe_dict, write_recipe

# ConvNeXt normalises per sample (LayerNorm), so splitting a batch across processes changes nothing
# but the order of float sums: the two runs must agree to this tolerance. (BatchNorm models differ
# by per-process batch statistics on CPU; on CUDA the kit switches them to SyncBatchNorm.)
WEIGHT_TOLERANCE = 1e-5
DDP_OVERRIDES = {"teacher.arch": "convnext_atto", "student.arch": "convnext_atto", "teacher.batch_size": 8,
                 "student.batch_size": 8, "teacher.epochs": 3, "student.epochs": 3, "compare": []}


def test_split_batches_are_the_single_process_batches():
    single = SplitBatchSampler(23, 8, DistContext(0, 1, 0), seed=5, drop_last=True)
    ranks = [list(SplitBatchSampler(23, 8, DistContext(r, 2, r), seed=5, drop_last=True)) for r in (0, 1)]
    for whole, a, b in zip(single, *ranks):
        assert whole == a + b and len(a) == len(b) == 4
    torch_order = [b.tolist() for b in torch.utils.data.DataLoader(range(23), batch_size=8, shuffle=True, drop_last=True,
                                                                     generator=torch.Generator().manual_seed(5))]
    assert list(single) == torch_order
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        SplitBatchSampler(23, 8, DistContext(0, 3, 0), seed=5, drop_last=True)


def _history(run_dir):
    with (run_dir / "history.csv").open() as fh:
        return [(r["role"], r["epoch"], float(r["loss"]), float(r["val_accuracy"])) for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, tiny_line):
    recipe = write_recipe(tmp_path / "ddp.yaml", tiny_recipe_dict(tiny_line, **DDP_OVERRIDES))
    single = run_line(recipe, out_root=tmp_path / "runs", name="one", stop_after="train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "kit", "run", str(recipe), "--out", str(tmp_path / "runs"), "--name", "two",
                             "--stop-after", "train", "--nproc-per-node", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "runs" / "tiny_line" / "two"
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny_line").iterdir()) == ["one", "two"]  # one run dir, not one per rank
    assert "2 processes (torch.distributed)" in (two / "run.log").read_text()
    h1, h2 = _history(single.run_dir), _history(two)
    assert [r[:2] for r in h1] == [r[:2] for r in h2]
    assert np.allclose([r[2] for r in h1], [r[2] for r in h2], rtol=1e-4)
    for role in ("teacher", "student"):
        a = torch.load(single.run_dir / f"{role}.pt", weights_only=True)["state_dict"]
        b = torch.load(two / f"{role}.pt", weights_only=True)["state_dict"]
        assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < WEIGHT_TOLERANCE, role
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["student"]["confusion_matrix"] == single.metrics["student"]["confusion_matrix"]
    assert not (two / "checkpoints").exists()
