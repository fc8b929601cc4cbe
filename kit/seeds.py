"""Every random stream of a run from one recipe seed: a derived seed per purpose, stable across
processes and platforms, so a view, a shuffle or a corrupted test image is the same on every run."""

from __future__ import annotations

import numpy as np

# What a derived seed is for (its second part): each purpose draws from its own stream.
SEED_VIEW, SEED_TORCH, SEED_SHUFFLE, SEED_CORRUPTION = 0, 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from non-negative integers; stable across processes and platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def view_seed(run_seed: int, epoch: int, index: int, view: int) -> int:
    """The seed of one view of one sample in one epoch."""
    return derive_seed(run_seed, SEED_VIEW, epoch, index, view)
