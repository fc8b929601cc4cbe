"""Latency table: every scorer at batch 1 and batch N, model-only and end-to-end, with model
file size and peak memory, compared with the line's time per part (takt).

All rows go through ``deploy.bench``, the harness the edge side uses, so a torch number and an
ONNX Runtime number are measured the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from deploy.bench import bench_end_to_end, bench_model
from deploy.memory import PeakMemory
from deploy.preprocess import PreprocessSpec
from kit.recipe.schema import LatencyConfig
from kit.scorers import Scorer


def thread_settings(threads: int) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "onnxruntime_intra_op_threads": threads or "default (one per physical core)",
            "requested": threads or "default"}


def measure(make_scorers: Sequence[Callable[[], Scorer]], spec: PreprocessSpec, paths: Sequence[Path],
            cfg: LatencyConfig, takt_ms: float | None, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """``make_scorers``: factories, so loading the model counts toward its peak memory."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    batches = sorted({1, cfg.batch})
    for make in make_scorers:
        with PeakMemory() as memory:
            scorer = make()
            own = scorer.input_spec(spec)  # a teacher reading larger images is timed on its own input size
            timings = []
            for batch in batches:
                iters = cfg.iters if batch == 1 else max(5, cfg.iters // 4)
                timings.append(("model_only", bench_model(scorer.infer, batch, cfg.warmup, iters, spec=own)))
                timings.append(("end_to_end", bench_end_to_end(scorer.infer, paths, batch, max(1, cfg.warmup // 2),
                                                               max(5, iters // 2), spec=own)))
        for mode, t in timings:
            row = {"model": scorer.name, "runtime": scorer.runtime, "mode": mode, **t,
                   "file_mb": scorer.file.stat().st_size / 1e6, "peak_rss_mb": memory.peak_mb, "added_rss_mb": memory.added_mb}
            if takt_ms is not None and mode == "end_to_end":
                row["takt_ms"] = takt_ms
                # batch 1: one part's latency; batch N: time per part when parts are batched (throughput)
                row["per_part_p95_ms"] = t["p95_ms"] / t["batch"]
                row["within_takt"] = bool(row["per_part_p95_ms"] <= takt_ms)
            rows.append(row)
        b1 = next(r for r in rows if r["model"] == scorer.name and r["mode"] == "end_to_end" and r["batch"] == 1)
        log(f"latency: {scorer.name}: end-to-end batch 1 p95 {b1['p95_ms']:.2f} ms")
        del scorer
    return {"threads": thread_settings(cfg.threads), "takt_ms": takt_ms, "batches": batches, "rows": rows}


def row_for(latency: dict[str, Any], model: str, mode: str = "end_to_end", batch: int = 1) -> dict[str, Any] | None:
    return next((r for r in latency["rows"] if r["model"] == model and r["mode"] == mode and r["batch"] == batch), None)
