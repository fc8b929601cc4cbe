"""Class balance for lines with mostly good parts.

A line with 90 % good parts trains a model that calls everything good unless the rare classes are
seen as often as the common one (class-balanced sampling) or count as much in the loss
(inverse-frequency weights, as scikit-learn's ``class_weight="balanced"``). Both are chosen per role
by ``balance:`` in the recipe; ``auto`` turns sampling on above ``IMBALANCE_RATIO``, the same
ratio ``kit init-line`` warns about.
"""

from __future__ import annotations

import numpy as np

IMBALANCE_RATIO = 5.0  # largest / smallest class count above which a line counts as imbalanced


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def imbalance_ratio(labels: np.ndarray, num_classes: int) -> float:
    """Largest over smallest count among the classes present."""
    counts = class_counts(labels, num_classes)
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def resolve_balance(mode: str, labels: np.ndarray, num_classes: int) -> str:
    """``auto`` -> ``sampler`` for an imbalanced training split, else ``none``; other modes as given."""
    if mode != "auto":
        return mode
    return "sampler" if imbalance_ratio(labels, num_classes) > IMBALANCE_RATIO else "none"


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (k * count_c)`` per class (1.0 for every class of a balanced split); absent classes get 0."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def balanced_order(labels: np.ndarray, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """One epoch of ``size`` sample indices (default: the split size) in which every class present
    appears equally often (to within one). Each class cycles through a fresh permutation of its own
    images, so a rare image repeats only after all of its class has been seen."""
    labels = np.asarray(labels)
    size = len(labels) if size is None else size
    classes = np.flatnonzero(class_counts(labels, int(labels.max()) + 1 if len(labels) else 0))
    if len(classes) == 0 or size == 0:
        return np.zeros(0, dtype=np.int64)
    share = np.full(len(classes), size // len(classes))
    share[rng.permutation(len(classes))[: size % len(classes)]] += 1
    parts = []
    for cls, n in zip(classes, share):
        members = np.flatnonzero(labels == cls)
        rounds = -(-n // len(members))
        parts.append(np.concatenate([rng.permutation(members) for _ in range(rounds)])[:n])
    return rng.permutation(np.concatenate(parts)).astype(np.int64)
