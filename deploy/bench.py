"""Latency of any inference function: model-only and end-to-end (decode + preprocess + infer +
decide), so the torch models of the training side and every bundle runtime are timed by the
same harness.

Percentiles come from individual timed calls after a warm-up, with ``time.perf_counter``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deploy.predictor import Predictor, softmax
from deploy.preprocess import PreprocessSpec, preprocess_batch, read_image

Infer = Callable[[np.ndarray], np.ndarray]  # preprocessed float32 NCHW batch -> logits
Decide = Callable[[np.ndarray], Any]  # preprocessed float32 NCHW batch -> the decision (whatever form it takes)


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


def _unpack(target: Predictor | Infer, spec: PreprocessSpec | None) -> tuple[Callable[[np.ndarray], Any], PreprocessSpec, Decide]:
    """(the forward pass, the preprocessing, forward pass + decision). A classifier's decision is the calibrated
    probabilities and the abstain threshold; an anomaly bundle's (``Predictor.outputs``: score and map in one
    pass) its rule, through ``Predictor.decide_batch``."""
    if isinstance(target, Predictor):
        m = target.manifest
        if m.anomaly is not None:
            return target.outputs, m.preprocess, target.decide_batch
        return target.logits, m.preprocess, _classify(target.logits, m.temperature, m.operating_threshold)
    if spec is None:
        raise ValueError("a bare inference function needs the PreprocessSpec it expects")
    return target, spec, _classify(target, 1.0, None)


def _classify(infer: Infer, temperature: float, threshold: float | None) -> Decide:
    def decide(batch: np.ndarray) -> Any:
        probabilities = softmax(infer(batch), temperature)
        top, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        return top, (confidence < threshold if threshold is not None else None)

    return decide


def bench_model(target: Predictor | Infer, batch: int = 1, warmup: int = 10, iters: int = 100,
                spec: PreprocessSpec | None = None) -> dict[str, float]:
    """Inference alone on a preprocessed batch (what the accelerator sees)."""
    infer, spec, _ = _unpack(target, spec)
    c, (h, w) = spec.num_channels, spec.image_size
    x = np.random.default_rng(0).normal(size=(batch, c, h, w)).astype(np.float32)
    return summarize(_timed(lambda: infer(x), warmup, iters), batch)


def bench_end_to_end(target: Predictor | Infer, paths: Sequence[str | Path], batch: int = 1, warmup: int = 5,
                     iters: int = 50, spec: PreprocessSpec | None = None) -> dict[str, float]:
    """Read files, preprocess, infer, decide (calibrated probabilities and abstain threshold, or an anomaly
    bundle's rule): what one part on the line costs."""
    _, spec, decide = _unpack(target, spec)
    paths = list(paths)
    if not paths:
        raise ValueError("end-to-end timing needs at least one image")
    state = {"i": 0}

    def step() -> None:
        chunk = [paths[(state["i"] + k) % len(paths)] for k in range(batch)]
        state["i"] += batch
        decide(preprocess_batch([read_image(p, spec.channels) for p in chunk], spec))

    return summarize(_timed(step, warmup, iters), batch)


def bench_heatmap(predictor: Predictor, paths: Sequence[str | Path] = (), batch: int = 1, warmup: int = 5,
                  iters: int = 50) -> dict[str, Any]:
    """What a heatmap adds to one decision, end to end (read, preprocess, infer, decide; then the
    same with the map for the predicted class, in the image's coordinates): both timings, the
    added p50 in ms and per cent, and the method (``cam`` in the graph, or ``occlusion``).

    Without ``paths`` the images are synthetic (seeded noise at the model's input size) and the
    timings leave out the file read."""
    from deploy.heatmap import heatmap_method

    spec = predictor.manifest.preprocess
    paths = list(paths)
    if paths:
        def images(i: int) -> list[np.ndarray]:
            return [read_image(paths[(i + k) % len(paths)], spec.channels) for k in range(batch)]
    else:
        rng = np.random.default_rng(0)
        fixed = [rng.integers(0, 256, (*spec.image_size, spec.num_channels), dtype=np.uint8) for _ in range(batch)]

        def images(i: int) -> list[np.ndarray]:
            return fixed

    def timed(with_heatmap: bool) -> np.ndarray:
        state = {"i": 0}

        def step() -> None:
            predictor.predict_images(images(state["i"]), batch_size=batch, heatmap=with_heatmap)
            state["i"] += batch

        return _timed(step, warmup, iters)

    alone, explained = summarize(timed(False), batch), summarize(timed(True), batch)
    added = explained["p50_ms"] - alone["p50_ms"]
    return {"method": heatmap_method(predictor), "decision": alone, "with_heatmap": explained,
            "added_p50_ms": added, "added_p50_pct": 100.0 * added / alone["p50_ms"] if alone["p50_ms"] > 0 else None,
            "images": "files" if paths else "synthetic"}
