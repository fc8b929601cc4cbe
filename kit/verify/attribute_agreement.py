"""Attribute agreement in a quality engineer's terms (AIAG MSA, 4th edition, chapter III-C).

A measurement-system analysis of an inspection treats every inspector, and the model, as an
*appraiser* whose calls on known parts are compared with a *reference* (the standard). The figures a
plant's MSA tool prints, each a count k of n with its interval, so they recompute:

- **effectiveness**: decisions that equal the reference, over all decisions (AIAG: acceptable
  >= 90 %, marginal >= 80 %). With several defect classes a decision counts as effective only
  when its class is right: a crack called scratch is not effective, though it is no miss.
- **miss rate**: defective decisions called good, over decisions on defective parts (<= 2 %, <= 5 %).
- **false-alarm rate**: good decisions called defective, over decisions on good parts (<= 5 %, <= 10 %).
- **Cohen's kappa** between two aligned sequences of calls, with the large-sample standard error
  of Fleiss, Cohen & Everitt (1969, Psychol Bull 72:323), the one statsmodels reports.
- **Fleiss' kappa** for several appraisers rating the same parts (Fleiss 1971, Psychol Bull
  76:378), with its standard error under no agreement (Fleiss, Nee & Landis 1979) for the test and
  a percentile bootstrap over parts for the interval.

Each decision (one appraiser, one part, one trial) is one opportunity, as in AIAG's tables. The
rates use the two-sided Clopper-Pearson interval of ``kit.verify.stats.rate``; the number of parts
a target needs is the one-sided zero-failure sample size (a miss rate <= 2 % at 95 % needs 149
defective parts with no miss).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np
from scipy.stats import norm

from kit.verify.stats import rate, zero_failure_sample_size

# measure -> (acceptable limit, marginal limit, direction): AIAG MSA 4th ed., attribute agreement.
AIAG_LEVELS: dict[str, tuple[float, float, str]] = {
    "effectiveness": (0.90, 0.80, "at least"),
    "miss_rate": (0.02, 0.05, "at most"),
    "false_alarm_rate": (0.05, 0.10, "at most"),
}
VERDICT_ORDER = ("acceptable", "marginal", "unacceptable")
AIAG_REFERENCE = "AIAG Measurement Systems Analysis, 4th ed. (2010), attribute agreement"


def aiag_level(measure: str, value: float | None) -> str | None:
    """'acceptable', 'marginal' or 'unacceptable' for one measure's point value (None: not measured)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    acceptable, marginal, direction = AIAG_LEVELS[measure]
    if direction == "at least":
        return "acceptable" if value >= acceptable else "marginal" if value >= marginal else "unacceptable"
    return "acceptable" if value <= acceptable else "marginal" if value <= marginal else "unacceptable"


def aiag_verdict(levels: Sequence[str | None]) -> str | None:
    """The worst of the measured levels: an appraiser is as good as its weakest measure."""
    measured = [level for level in levels if level is not None]
    return max(measured, key=VERDICT_ORDER.index) if measured else None


def versus_reference(calls: Sequence[str], reference: Sequence[str], *, good: str,
                     confidence: float = 0.95) -> dict[str, Any]:
    """One appraiser's decisions against the reference: effectiveness, miss and false-alarm rates.

    ``calls[i]`` and ``reference[i]`` are one decision and the truth of its part; ``good`` is the
    call that means "no defect". Each rate is ``kit.verify.stats.rate`` (k, n, two-sided interval),
    with its AIAG level.
    """
    if len(calls) != len(reference):
        raise ValueError(f"{len(calls)} calls but {len(reference)} reference calls")
    calls_a, truth = np.asarray(calls, dtype=object), np.asarray(reference, dtype=object)
    defective, called_good = truth != good, calls_a == good
    figures = {
        "effectiveness": rate(int(np.sum(calls_a == truth)), len(truth), confidence),
        "miss_rate": rate(int(np.sum(defective & called_good)), int(np.sum(defective)), confidence),
        "false_alarm_rate": rate(int(np.sum(~defective & ~called_good)), int(np.sum(~defective)), confidence),
    }
    for measure, figure in figures.items():
        figure["aiag"] = aiag_level(measure, figure["rate"])
    figures["aiag"] = aiag_verdict([figures[m]["aiag"] for m in AIAG_LEVELS])
    return figures


def within_appraiser(trials_by_part: dict[Any, Sequence[str]], confidence: float = 0.95) -> dict[str, Any]:
    """Repeatability: parts on which every trial of one appraiser gave the same call (parts with >= 2 trials)."""
    repeated = [calls for calls in trials_by_part.values() if len(calls) >= 2]
    return rate(sum(len(set(calls)) == 1 for calls in repeated), len(repeated), confidence)


def _agreement_table(a: Sequence[str], b: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    categories = sorted(set(a) | set(b))
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    return table, categories


def cohens_kappa(a: Sequence[str], b: Sequence[str], confidence: float = 0.95) -> dict[str, Any]:
    """Cohen's kappa of two aligned call sequences, its standard error and a normal interval.

    ``kappa = (p_o - p_e) / (1 - p_e)``; the variance is Fleiss, Cohen & Everitt's (1969) under
    the alternative; the interval is cut to [-1, 1]. None for kappa when the calls use one category only (p_e = 1: undefined).
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} calls against {len(b)}")
    n = len(a)
    if n == 0:
        return {"kappa": None, "se": None, "low": None, "high": None, "n": 0, "confidence": confidence}
    table, _ = _agreement_table(a, b)
    p = table / n
    rows, cols = p.sum(1), p.sum(0)
    observed, expected = float(np.trace(p)), float(rows @ cols)
    if expected >= 1.0:
        return {"kappa": None, "se": None, "low": None, "high": None, "n": n, "confidence": confidence}
    kappa = (observed - expected) / (1.0 - expected)
    term_a = float(np.sum(np.diag(p) * (1.0 - (rows + cols) * (1.0 - kappa)) ** 2))
    off = p * (cols[:, None] + rows[None, :]) ** 2
    np.fill_diagonal(off, 0.0)
    term_b = (1.0 - kappa) ** 2 * float(off.sum())
    term_c = (kappa - expected * (1.0 - kappa)) ** 2
    variance = max(0.0, (term_a + term_b - term_c) / (1.0 - expected) ** 2 / n)
    se = math.sqrt(variance)
    z = float(norm.ppf(0.5 + confidence / 2))
    # the normal interval can pass kappa's range (0.96 +- 0.05); a kappa above 1 does not exist, so it is cut there
    return {"kappa": kappa, "se": se, "low": max(-1.0, kappa - z * se), "high": min(1.0, kappa + z * se), "n": n,
            "confidence": confidence, "method": "Fleiss-Cohen-Everitt 1969 standard error"}


def _fleiss(counts: np.ndarray) -> tuple[float | None, float | None]:
    """Fleiss' kappa and its standard error under no agreement, from a parts x categories count table."""
    raters = counts.sum(1)
    if counts.shape[0] == 0 or raters.min() < 2 or np.any(raters != raters[0]):
        return None, None
    parts, m = counts.shape[0], float(raters[0])
    share = counts.sum(0) / (parts * m)
    agreement = float(np.mean((np.sum(counts ** 2, 1) - m) / (m * (m - 1))))
    chance = float(np.sum(share ** 2))
    if chance >= 1.0:
        return None, None
    kappa = (agreement - chance) / (1.0 - chance)
    pq = share * (1.0 - share)
    spread = float(pq.sum() ** 2 - np.sum(pq * (1.0 - 2.0 * share)))
    se = math.sqrt(2.0) / (pq.sum() * math.sqrt(parts * m * (m - 1))) * math.sqrt(max(spread, 0.0))
    return kappa, se


def fleiss_kappa(calls_by_part: Sequence[Sequence[str]], confidence: float = 0.95, *, resamples: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Fleiss' kappa for parts each rated the same number of times (by several appraisers or trials).

    ``se_null`` is the standard error under no agreement (the z test an MSA tool prints); ``low`` and
    ``high`` are a percentile bootstrap over parts (``resamples``, fixed ``seed``: the same figures twice).
    """
    categories = sorted({c for calls in calls_by_part for c in calls})
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(calls_by_part), max(len(categories), 1)))
    for row, calls in enumerate(calls_by_part):
        for c in calls:
            counts[row, index[c]] += 1
    kappa, se = _fleiss(counts)
    result = {"kappa": kappa, "se_null": se, "low": None, "high": None, "parts": len(calls_by_part),
              "confidence": confidence, "method": "Fleiss 1971; bootstrap over parts"}
    if kappa is None:
        return result
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        value, _ = _fleiss(counts[rng.integers(0, len(counts), len(counts))])
        if value is not None:
            draws.append(value)
    if draws:
        tail = (1.0 - confidence) / 2 * 100
        result["low"], result["high"] = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    result["z"] = kappa / se if se else None
    return result


def parts_needed(confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """Parts that must show no miss (defective) or no false alarm (good) to state each AIAG limit."""
    needed = {}
    for measure in ("miss_rate", "false_alarm_rate"):
        acceptable, marginal, _ = AIAG_LEVELS[measure]
        needed[measure] = {"acceptable": zero_failure_sample_size(acceptable, confidence),
                           "marginal": zero_failure_sample_size(marginal, confidence),
                           "parts": "defective" if measure == "miss_rate" else "good",
                           "confidence": confidence, "sided": "one-sided"}
    return needed


def category_counts(calls: Sequence[str]) -> dict[str, int]:
    """How often each call was made (for the study's table)."""
    return dict(sorted(Counter(calls).items()))
