"""torch.distributed for the kit: process group, the launcher, and the pieces the training loop
needs to run the same epoch on N processes (a batch split across ranks, summed metrics, one
writer).

The kit does not start processes itself: ``kit run --nproc-per-node N`` hands its own command
line to ``torch.distributed.run`` (the machinery behind ``torchrun``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker; a run
started directly by ``torchrun -m kit run ...`` is the same thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_type: str) -> DistContext:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); single process otherwise."""
    if not launched_by_torchrun():
        return SINGLE
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run directory name)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class SplitBatchSampler(Sampler):
    """The single-process batches, each split across the ranks.

    Every rank draws the epoch's global batches exactly as the single-process loader does (same
    seed, same sampler); rank r takes the r-th slice of each. N processes therefore see exactly the
    samples one process would see in each step, and DDP's gradient averaging makes the step the
    same up to per-rank BatchNorm statistics and float summation order.
    """

    def __init__(self, n: int, batch_size: int, ctx: DistContext, seed: int, drop_last: bool, epoch: int | None = None,
                 balance_labels: np.ndarray | None = None) -> None:
        if batch_size % ctx.world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {ctx.world_size} processes")
        self.n, self.batch_size, self.ctx, self.epoch_seed, self.drop_last = n, batch_size, ctx, seed, drop_last
        self.epoch = epoch  # when set, indices are yielded as (epoch, index) for ViewDataset
        # With labels, each epoch draws every class equally often (kit.data.balance) instead of a shuffle.
        self.balance_labels = balance_labels

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.epoch_seed = epoch, seed

    def _global_batches(self) -> list[np.ndarray]:
        if self.balance_labels is not None:
            from kit.data.balance import balanced_order

            order = balanced_order(self.balance_labels, np.random.default_rng(self.epoch_seed), self.n)
            stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
            return [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]
        # Exactly the batches the single-process loader draws: the same DataLoader, over indices.
        loader = DataLoader(range(self.n), batch_size=self.batch_size, shuffle=True, drop_last=self.drop_last,
                            generator=torch.Generator().manual_seed(self.epoch_seed))
        return [batch.numpy() for batch in loader]

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.ctx.world_size
        r = self.ctx.rank
        for batch in self._global_batches():
            share = max(1, int(np.ceil(len(batch) / self.ctx.world_size))) if len(batch) < self.batch_size else per_rank
            part = batch[r * share : (r + 1) * share].tolist()
            if part:
                yield part if self.epoch is None else [(self.epoch, i) for i in part]

    def __len__(self) -> int:
        return len(self._global_batches())


class ViewsForward(nn.Module):
    """One forward call for all of a step's views, so DDP sees one forward per backward even when
    the student runs once per view (each view keeps its own BatchNorm statistics)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(v) for v in views)


def wrap_for_training(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    wrapped = ViewsForward(model)
    if not ctx.enabled:
        return wrapped
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)


def launch(argv: Sequence[str], nproc_per_node: int, nnodes: str = "1", rdzv_endpoint: str | None = None,
           rdzv_id: str | None = None, node_rank: int | None = None) -> None:
    """Run ``python -m kit <argv>`` under torch.distributed's elastic launcher (what ``torchrun`` does)."""
    from torch.distributed.run import parse_args, run

    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}"]
    if rdzv_endpoint:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id or 'kit'}"]
    else:
        args += ["--standalone"]
    if node_rank is not None:
        args.append(f"--node-rank={node_rank}")
    run(parse_args([*args, "-m", "kit", *argv]))
