"""Latency of a bundle runtime: model-only and end-to-end (decode + preprocess + infer + decide).

Percentiles come from individual timed calls after a warm-up, with ``time.perf_counter``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploy.predictor import Predictor
from deploy.preprocess import preprocess_batch, read_image


def _timed(fn: Callable[[], Any], warmup: int, iters: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times * 1000.0


def summarize(times_ms: np.ndarray, batch: int) -> dict[str, float]:
    p50, p95, p99 = np.percentile(times_ms, [50, 95, 99])
    return {"batch": batch, "iters": int(len(times_ms)), "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "mean_ms": float(times_ms.mean()),
            "images_per_s": float(batch * 1000.0 / times_ms.mean())}


def bench_model(predictor: Predictor, batch: int = 1, warmup: int = 10, iters: int = 100) -> dict[str, float]:
    """Inference alone on a preprocessed batch (what the accelerator sees)."""
    c, (h, w) = predictor.manifest.preprocess.num_channels, predictor.manifest.preprocess.image_size
    x = np.random.default_rng(0).normal(size=(batch, c, h, w)).astype(np.float32)
    return summarize(_timed(lambda: predictor.logits(x), warmup, iters), batch)


def bench_end_to_end(predictor: Predictor, paths: Sequence[str | Path], batch: int = 1, warmup: int = 5,
                     iters: int = 50) -> dict[str, float]:
    """Read files, preprocess, infer, decide: what one part on the line costs."""
    paths = list(paths)
    spec = predictor.manifest.preprocess
    state = {"i": 0}

    def step() -> None:
        chunk = [paths[(state["i"] + k) % len(paths)] for k in range(batch)]
        state["i"] += batch
        images = [read_image(p, spec.channels) for p in chunk]
        predictor.decide(predictor.probabilities(preprocess_batch(images, spec)))

    return summarize(_timed(step, warmup, iters), batch)
