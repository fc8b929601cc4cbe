"""The run directory contract: file names, stage state, the recorded split.

Every stage reads only files written by earlier stages; these helpers are how it finds them.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kit.errors import RunDirError
from kit.io import read_json, write_json_atomic

LOCK_NAME, STATE_NAME, SPLIT_NAME = "recipe.lock.yaml", "state.json", "split.csv"
BUNDLE_DIR = "bundle"


def read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_NAME
    return read_json(path) if path.is_file() else {"stages": {}}


def mark_stage(run_dir: Path, state: dict[str, Any], stage: str, seconds: float, status: str = "done", **extra: Any) -> None:
    state.setdefault("stages", {})[stage] = {
        "status": status, "seconds": round(seconds, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra,
    }
    write_json_atomic(Path(run_dir) / STATE_NAME, state)


def require_stages(run_dir: Path, stages: list[str], command: str) -> dict[str, Any]:
    """The run's state, or a one-line error saying which stage is missing and how to finish it."""
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_NAME).is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {LOCK_NAME}); make one with `kit run RECIPE`")
    state = read_state(run_dir)
    for stage in stages:
        if state.get("stages", {}).get(stage, {}).get("status") != "done":
            raise RunDirError(
                f"{run_dir}: stage '{stage}' has not finished, so `{command}` cannot run; "
                f"finish the run with `kit run {run_dir} --resume`"
            )
    return state


def read_split(run_dir: Path, split: str) -> tuple[list[Path], list[str]]:
    """Paths and labels of one split exactly as the run used it."""
    path = Path(run_dir) / SPLIT_NAME
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {SPLIT_NAME}; finish the run with `kit run {run_dir} --resume`")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    return [Path(r["path"]) for r in rows], [r["label"] for r in rows]
