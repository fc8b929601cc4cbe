"""Micro-batching for ``deploy serve``: concurrent requests share one inference call.

One worker thread per loaded model runs the batches, so the runtime sees one batch at a time (a
GPU gets batch throughput; two CPU runs in parallel would only fight over the cores). The worker
takes what is queued, up to ``max_batch``, and waits for company only for requests that are
already being received or decoded (``begin`` was called), and at most ``max_wait_ms`` after the
oldest queued request arrived. A lone request on a quiet line therefore never waits: serving
overhead at batch 1 stays the HTTP round trip, and under load batches form by themselves
(Triton's dynamic batcher waits ``max_queue_delay`` for requests that may never come).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deploy.predictor import Decision, Predictor


class QueueFull(Exception):
    """More requests are queued than ``max_queue``: the caller answers 503 and the line retries."""


@dataclass
class BatchResult:
    decision: Decision
    infer_ms: float  # the batch's inference (softmax and decision rule included)
    queue_ms: float  # from submit to the start of its batch
    batch_size: int


Callback = Callable[[BatchResult | BaseException], None]


@dataclass
class _Job:
    tensor: np.ndarray  # preprocessed CxHxW
    callback: Callback
    enqueued: float


class MicroBatcher:
    def __init__(self, predictor: Predictor, max_batch: int = 8, max_wait_ms: float = 2.0, max_queue: int = 1024,
                 on_batch: Callable[[int, float], None] | None = None, name: str = "batcher") -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0 (got {max_batch}, {max_wait_ms})")
        self.predictor, self.max_batch, self.max_wait_s = predictor, max_batch, max_wait_ms / 1000.0
        self.max_queue, self.on_batch = max_queue, on_batch
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._preparing = 0  # requests received but not yet submitted: the only company worth waiting for
        self._closed = False
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def begin(self) -> None:
        """A request is being received: the worker may wait (up to max_wait_ms) for it."""
        with self._cond:
            self._preparing += 1

    def abandon(self) -> None:
        """A begun request will not be submitted (bad input): stop waiting for it."""
        with self._cond:
            self._preparing -= 1
            self._cond.notify()

    def submit(self, tensor: np.ndarray, callback: Callback, begun: bool = True) -> None:
        """Queue one preprocessed image; ``callback`` gets its ``BatchResult`` (or the exception) on
        the worker thread."""
        with self._cond:
            if begun:
                self._preparing -= 1
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._queue) >= self.max_queue:
                self._cond.notify()
                raise QueueFull(f"{len(self._queue)} requests queued (--max-queue {self.max_queue})")
            self._queue.append(_Job(tensor, callback, time.perf_counter()))
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self, wait: bool = False) -> None:
        """Stop after the queued requests are answered."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if wait:
            self._thread.join()

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch and self._preparing > 0:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            started = time.perf_counter()
            try:
                batch = np.stack([job.tensor for job in jobs])
                decisions = self.predictor.decide_batch(batch)  # the Predictor's one decide path
            except BaseException as exc:  # the model failed: every request of the batch gets the error
                for job in jobs:
                    _call(job.callback, exc)
                continue
            infer_ms = (time.perf_counter() - started) * 1000.0
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(jobs), infer_ms)
            for job, decision in zip(jobs, decisions):
                _call(job.callback, BatchResult(decision, infer_ms, (started - job.enqueued) * 1000.0, len(jobs)))


def _call(callback: Callback, value: Any) -> None:
    try:
        callback(value)
    except Exception:  # a caller that went away must not stop the worker
        pass
