"""Uncertainty for the figures in ``kpi.json``: binomial intervals and a paired bootstrap.

A rate measured on a few hundred images is a point estimate; 0 errors in 100 parts is also
what a process with a 3 % error rate produces one time in twenty. Every rate therefore carries
an interval, and a claim "the error rate is at most x" carries a one-sided upper bound.

Conventions: ``confidence`` is the coverage (0.95), ``alpha = 1 - confidence``. Two-sided
intervals put ``alpha / 2`` in each tail; one-sided bounds put all of ``alpha`` in one tail,
so a one-sided 95 % upper bound is the upper end of a two-sided 90 % interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import beta, norm

RATE_METHOD = "clopper-pearson"
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22  # resampled indices held at once (32 MB of int64)


def _check_counts(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (got {confidence})")
    return 1.0 - confidence


def _beta_upper(k: np.ndarray, n: np.ndarray, tail: float) -> np.ndarray:
    """Upper Clopper-Pearson end with ``tail`` probability above it: Beta(1 - tail; k + 1, n - k), 1 at k = n."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    full = k >= n
    high = beta.ppf(1.0 - tail, k + 1.0, np.where(full, 1.0, n - k))
    return np.where(full, 1.0, high)


def _beta_lower(k: np.ndarray, n: np.ndarray, tail: float) -> np.ndarray:
    """Lower Clopper-Pearson end with ``tail`` probability below it: Beta(tail; k, n - k + 1), 0 at k = 0."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    none = k <= 0
    low = beta.ppf(tail, np.where(none, 1.0, k), n - k + 1.0)
    return np.where(none, 0.0, low)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact binomial interval for ``k`` events in ``n`` trials.

    ``low = Beta(alpha/2; k, n-k+1)`` and ``high = Beta(1-alpha/2; k+1, n-k)``, i.e. the
    proportions p at which ``P(Bin(n, p) >= k) = alpha/2`` and ``P(Bin(n, p) <= k) = alpha/2``;
    ``low = 0`` at k = 0 and ``high = 1`` at k = n. Coverage is at least ``confidence`` for
    every p (Clopper & Pearson 1934, Biometrika 26:404). At k = 0 it has the closed form
    ``high = 1 - (alpha/2)^(1/n)``: 0/100 at 95 % gives 0.0362. ``n = 0`` gives (0, 1).
    """
    _check_counts(k, n)
    alpha = _check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    return float(_beta_lower(k, n, alpha / 2)), float(_beta_upper(k, n, alpha / 2))


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact upper bound: the rate is at most this with probability ``confidence``.

    ``Beta(1-alpha; k+1, n-k)``, the p at which ``P(Bin(n, p) <= k) = alpha`` (Clopper & Pearson
    1934); 1 at k = n. At k = 0 it is ``1 - alpha^(1/n)``: 0/100 at 95 % gives 0.0295 (the
    two-sided interval's upper end, 0.0362, spends only alpha/2 on this side). ``n = 0`` gives 1.
    """
    _check_counts(k, n)
    alpha = _check_confidence(confidence)
    return 1.0 if n == 0 else float(_beta_upper(k, n, alpha))


def zero_failure_sample_size(limit: float, confidence: float = 0.95) -> int | None:
    """The fewest trials whose zero events put the one-sided upper bound at or below ``limit``.

    Solves ``1 - alpha^(1/n) <= limit``: ``n = ceil(ln(alpha) / ln(1 - limit))`` (the "rule of
    three" ``n ~ 3 / limit`` at 95 %). 0.5 % at 95 % needs 598; 1 % needs 299. None when
    ``limit <= 0``: no finite sample certifies a rate of exactly zero.
    """
    alpha = _check_confidence(confidence)
    if limit <= 0:
        return None
    if limit >= 1:
        return 0
    n = math.ceil(math.log(alpha) / math.log1p(-limit) - 1e-9)
    return n if float(_beta_upper(0, n, alpha)) <= limit else n + 1


def sample_size_with_failures(failures: int, limit: float, confidence: float = 0.95) -> int | None:
    """The fewest trials whose ``failures`` give a one-sided upper bound at or below ``limit`` (None: limit <= 0)."""
    if limit <= 0:
        return None
    n = max(failures + 1, zero_failure_sample_size(limit, confidence) or 1)
    while clopper_pearson_upper(failures, n, confidence) > limit:
        n = math.ceil(n * 1.25)
    low, high = max(failures + 1, n // 2), n
    while low < high:  # the bound falls as n grows: bisect to the first n that meets the limit
        mid = (low + high) // 2
        if clopper_pearson_upper(failures, mid, confidence) <= limit:
            high = mid
        else:
            low = mid + 1
    return high


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval (Wilson 1927, JASA 22:209).

    ``(p + z^2/2n -+ z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``z = Phi^-1(1 - alpha/2)``:
    the p whose normal score test does not reject. Narrower than Clopper-Pearson, coverage close
    to nominal on average rather than guaranteed (Newcombe 1998, Stat Med 17:857: 81/263 gives
    0.2553 to 0.3662). ``n = 0`` gives (0, 1).
    """
    _check_counts(k, n)
    alpha = _check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(1.0 - alpha / 2))
    p = k / n
    scale = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """A rate as ``kpi.json`` carries it: counts, point estimate and two-sided Clopper-Pearson interval.

    ``rate`` is None when ``n == 0`` (nothing measured); the interval is then (0, 1).
    """
    low, high = clopper_pearson(k, n, confidence)
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "low": low, "high": high,
            "confidence": confidence, "method": RATE_METHOD}


def ppm(value: float | None) -> float | None:
    """A rate in parts per million (0.0012 -> 1200.0), None passes through."""
    return None if value is None else value * 1e6


def paired_bootstrap_diff(a_correct: np.ndarray, b_correct: np.ndarray, n_boot: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Difference of two models' accuracy on the same images, with a paired percentile interval.

    Draws image indices with replacement, the same indices for both models, so the interval
    reflects only the images on which they disagree; ``diff = mean(a) - mean(b)`` and the
    interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles of the ``n_boot`` resampled
    differences (Efron & Tibshirani 1993, An Introduction to the Bootstrap, ch. 13).
    Deterministic for a given ``seed``. Empty inputs give None for diff and interval.
    """
    a = np.asarray(a_correct, dtype=float).ravel()
    b = np.asarray(b_correct, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths (got {a.size} and {b.size})")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1 (got {n_boot})")
    alpha = _check_confidence(confidence)
    n = a.size
    if n == 0:
        return {"diff": None, "low": None, "high": None, "n": 0, "n_boot": n_boot}
    per_image = a - b
    diffs = _resampled_means(per_image, n_boot, np.random.default_rng(seed))
    low, high = np.quantile(diffs, [alpha / 2, 1.0 - alpha / 2])
    return {"diff": float(per_image.mean()), "low": float(low), "high": float(high), "n": n, "n_boot": n_boot}


def _resampled_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``values``, drawn in chunks to bound memory."""
    n = values.size
    rows = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = [values[rng.integers(0, n, size=(min(rows, n_boot - start), n))].mean(axis=1)
             for start in range(0, n_boot, rows)]
    return np.concatenate(means)
