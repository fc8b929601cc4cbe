"""``kit run``: the stage table (``stages``), what the stages share (``context``) and the entry
point (``line``)."""

from kit.run.line import Launch, find_resumable, new_run_dir, prepare_run, resolve_target, run_line
from kit.run.stages import STOP_POINTS, RunResult, Stage, build_stages, walk_stages

__all__ = ["Launch", "RunResult", "STOP_POINTS", "Stage", "build_stages", "find_resumable", "new_run_dir",
           "prepare_run", "resolve_target", "run_line", "walk_stages"]
