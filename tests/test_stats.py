"""Intervals, paired bootstrap and the certified operating threshold (``kit/verify/stats.py``,
``kit/verify/threshold.py:certify_threshold``): golden values, closed forms, and an empirical
check that the certificate holds on new parts as often as it claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from kit.recipe.schema import ThresholdTarget
from kit.verify.stats import (
    clopper_pearson, clopper_pearson_upper, paired_bootstrap_diff, ppm, rate, wilson, zero_failure_sample_size,
)
from kit.verify.threshold import NO_AUTOMATION, certify_threshold, choose_threshold

# -- binomial intervals -------------------------------------------------------------------------


def test_clopper_pearson_zero_of_hundred_two_sided_and_one_sided():
    low, high = clopper_pearson(0, 100)
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 100), abs=1e-12)  # the "3.62 % upper at 95 %"
    assert round(high, 4) == 0.0362
    upper = clopper_pearson_upper(0, 100)
    assert upper == pytest.approx(1 - 0.05 ** (1 / 100), abs=1e-12)  # "at most ..." at 95 %: 2.95 %
    assert round(upper, 4) == 0.0295


# Newcombe (1998), Stat Med 17:857, Table II, method 5 (exact) and method 3 (score), 95 %.
NEWCOMBE = [  # k, n, Clopper-Pearson, Wilson
    (15, 148, (0.0578, 0.1617), (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1684), (0.0, 0.1611)),
    (1, 29, (0.0009, 0.1776), (0.0061, 0.1718)),
]


@pytest.mark.parametrize("k, n, exact, score", NEWCOMBE)
def test_intervals_match_published_values(k, n, exact, score):
    assert clopper_pearson(k, n) == pytest.approx(exact, abs=5e-5)
    assert wilson(k, n) == pytest.approx(score, abs=5e-5)


def test_wilson_matches_published_value_and_closed_form_at_zero():
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)  # Newcombe (1998) example (a)
    z2 = norm.ppf(0.975) ** 2
    assert wilson(0, 40)[1] == pytest.approx(z2 / (40 + z2), abs=1e-12)  # k = 0: upper end z^2 / (n + z^2)


@pytest.mark.parametrize("k, n", [(5, 50), (81, 263), (1, 29), (49, 50), (50, 50)])
def test_clopper_pearson_ends_are_the_binomial_tails(k, n):
    """By definition: P(Bin(n, high) <= k) = alpha/2 and P(Bin(n, low) >= k) = alpha/2 (two-sided);
    P(Bin(n, upper) <= k) = alpha (one-sided). Checked with the binomial CDF, not the beta quantile."""
    low, high = clopper_pearson(k, n, 0.95)
    upper = clopper_pearson_upper(k, n, 0.95)
    if k < n:
        assert binom.cdf(k, n, high) == pytest.approx(0.025, abs=1e-9)
        assert binom.cdf(k, n, upper) == pytest.approx(0.05, abs=1e-9)
    else:
        assert high == upper == 1.0
        assert low == pytest.approx(0.025 ** (1 / n), abs=1e-12)
    assert binom.sf(k - 1, n, low) == pytest.approx(0.025, abs=1e-9)
    assert low < k / n < high or k == n
    assert upper < high or k == n  # one-sided spends all of alpha on one side


def test_five_of_fifty():
    low, high = clopper_pearson(5, 50)
    assert (round(low, 4), round(high, 4)) == (0.0333, 0.2181)
    assert round(clopper_pearson_upper(5, 50), 4) == 0.1988


def test_empty_sample_and_rate_shape():
    assert clopper_pearson(0, 0) == (0.0, 1.0) and wilson(0, 0) == (0.0, 1.0)
    assert clopper_pearson_upper(0, 0) == 1.0
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "low": 0.0, "high": 1.0, "confidence": 0.95,
                          "method": "clopper-pearson"}
    r = rate(3, 1000, confidence=0.9)
    assert r["rate"] == 0.003 and (r["low"], r["high"]) == clopper_pearson(3, 1000, 0.9)
    assert ppm(r["rate"]) == pytest.approx(3000.0) and ppm(None) is None


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"^need 0 <= k <= n \(got k=5, n=3\)$"):
        rate(5, 3)
    with pytest.raises(ValueError, match=r"^confidence must lie strictly between 0 and 1 \(got 1.0\)$"):
        clopper_pearson_upper(0, 10, confidence=1.0)
    with pytest.raises(ValueError, match=r"^paired samples need equal lengths \(got 3 and 2\)$"):
        paired_bootstrap_diff(np.ones(3), np.ones(2))


@pytest.mark.parametrize("limit, expected", [(0.005, 598), (0.01, 299), (0.001, 2995), (0.05, 59)])
def test_zero_failure_sample_size_is_the_closed_form(limit, expected):
    """n = ceil(ln(alpha) / ln(1 - limit)): 0/n errors then bound the rate by 1 - alpha^(1/n) <= limit."""
    assert zero_failure_sample_size(limit, 0.95) == expected == math.ceil(math.log(0.05) / math.log(1 - limit))
    assert clopper_pearson_upper(0, expected) <= limit < clopper_pearson_upper(0, expected - 1)
    assert zero_failure_sample_size(0.0) is None


# -- paired bootstrap ---------------------------------------------------------------------------


def _paired_models(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two models on the same images, correct with probability 0.92 and 0.88, strongly correlated."""
    u = np.random.default_rng(seed).random(n)  # one difficulty per image, shared by both models
    return u < 0.92, u < 0.88


def test_paired_bootstrap_is_deterministic_and_covers_the_true_difference():
    a, b = _paired_models(1500, seed=3)
    first = paired_bootstrap_diff(a, b, n_boot=2000, seed=7)
    assert first == paired_bootstrap_diff(a, b, n_boot=2000, seed=7)
    assert first != paired_bootstrap_diff(a, b, n_boot=2000, seed=8)
    assert first["n"] == 1500 and first["n_boot"] == 2000
    assert first["diff"] == pytest.approx(a.mean() - b.mean())
    assert first["low"] < 0.04 < first["high"]  # the true difference, 0.92 - 0.88
    # Percentile interval ~ diff +- z * sd(a - b) / sqrt(n) for a sample this size.
    half = norm.ppf(0.975) * np.std(a.astype(float) - b) / math.sqrt(len(a))
    assert first["high"] - first["low"] == pytest.approx(2 * half, rel=0.1)


def test_paired_bootstrap_is_narrower_than_treating_the_models_as_independent():
    a, b = _paired_models(1500, seed=4)
    paired = paired_bootstrap_diff(a, b, seed=0)
    unpaired_half = norm.ppf(0.975) * math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert paired["high"] - paired["low"] < unpaired_half  # under half the unpaired width
    assert paired_bootstrap_diff(np.array([]), np.array([]))["diff"] is None


# -- certified operating threshold --------------------------------------------------------------


def _probabilities(conf: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows whose top class is ``pred`` with probability ``conf``, the rest shared evenly."""
    p = np.repeat(((1 - conf) / (n_classes - 1))[:, None], n_classes, axis=1)
    p[np.arange(len(conf)), pred] = conf
    return p


def test_certifies_below_the_clean_region_and_stops_at_the_first_failure():
    """2,000 parts, confidences descending; the top 1,500 (above s0) all right, the 10 errors (0.5 %)
    directly below s0, the rest right. Target 99 %: the bound stays <= 1 % for 8 errors among 1,508
    accepted and exceeds it for 9 among 1,509, so the walk stops there although 10 in 2,000 would pass."""
    conf = np.linspace(0.999, 0.6, 2000)
    labels = np.zeros(2000, int)
    labels[1500:1510] = 1
    probs, classes = _probabilities(conf, np.zeros(2000, int), 2), ["ok", "scratch"]
    s0 = conf[1499]
    assert binom.cdf(8, 1508, 0.01) <= 0.05 < binom.cdf(9, 1509, 0.01)

    result = certify_threshold(probs, labels, ThresholdTarget(accepted_accuracy=0.99), classes)
    # halfway between the lowest accepted confidence and the next one: float noise never flips a part
    assert result["certified"] and conf[1508] < result["threshold"] < conf[1507] < s0
    assert result["threshold"] == pytest.approx((conf[1507] + conf[1508]) / 2)
    noisy = probs + np.random.default_rng(0).uniform(-1e-7, 1e-7, probs.shape)
    assert ((noisy.max(1) >= result["threshold"]) == (probs.max(1) >= result["threshold"])).all()
    assert result["val"]["risk_upper"] <= 0.01 and result["val"]["accepted_accuracy"] == pytest.approx(1500 / 1508)
    assert result["stopped_at"]["threshold"] == conf[1508] and result["stopped_at"]["k"] == 9
    assert result["tested"] == 1509 - 299 + 1 and result["needed_images"] == 299
    # The point estimate takes every part (10 errors in 2,000 is 99.5 %): no margin at all.
    assert choose_threshold(probs, labels, ThresholdTarget(accepted_accuracy=0.99), classes)["threshold"] < conf[-1]


def test_too_few_images_cannot_certify_and_say_how_many_are_needed():
    conf = np.linspace(0.999, 0.9, 100)
    probs = _probabilities(conf, np.zeros(100, int), 2)
    result = certify_threshold(probs, np.zeros(100, int), ThresholdTarget(accepted_accuracy=0.995), ["ok", "scratch"])
    assert not result["certified"] and result["threshold"] == NO_AUTOMATION and result["val"]["automation_rate"] == 0.0
    assert result["needed_images"] == 598 == math.ceil(math.log(0.05) / math.log(0.995))
    assert result["tested"] == 0 and result["stopped_at"] is None and result["val"]["risk_upper"] is None
    assert result["message"] == ("not certifiable with 100 validation images: 99.5 % accepted accuracy at 95 % "
                                 "confidence needs about 598 accepted validation images with no error")


def test_errors_among_the_most_confident_parts_stop_the_walk_at_once():
    conf = np.linspace(0.999, 0.6, 2000)
    labels = np.zeros(2000, int)
    labels[[0, 1, 2]] = 1  # three confident errors
    result = certify_threshold(_probabilities(conf, np.zeros(2000, int), 2), labels,
                               ThresholdTarget(accepted_accuracy=0.995), ["ok", "scratch"])
    assert not result["certified"] and result["tested"] == 1
    assert result["stopped_at"]["k"] == 3 and result["stopped_at"]["n"] == 598
    assert result["stopped_at"]["threshold"] == conf[597]  # the 598 most confident parts
    assert result["message"] == (
        f"not certified with 2000 validation images: at the most conservative testable threshold {conf[597]:.6g}, "
        "3 errors among 598 accepted parts give an upper bound of 1.291 % at 95 % confidence, above the 0.5 % limit; "
        "every part goes to a person")


def test_zero_error_target_is_refused_with_the_fix():
    result = certify_threshold(_probabilities(np.full(50, 0.9), np.zeros(50, int), 2), np.zeros(50, int),
                               ThresholdTarget(accepted_accuracy=1.0), ["ok", "scratch"])
    assert not result["certified"] and result["needed_images"] is None
    assert result["message"] == ("not certifiable: 100 % accepted accuracy means zero errors, which no finite "
                                 "validation set can certify; set accepted_accuracy below 1")


def _escape_line(n_parts: int, escape_rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Alternating ok and defective parts (scratch, dent), confidences descending; the defective
    parts at ``escape_rows`` are predicted ok, every other part is predicted right."""
    labels = np.where(np.arange(n_parts) % 2 == 0, 0, 1 + (np.arange(n_parts) // 2) % 2)
    pred = labels.copy()
    pred[escape_rows] = 0
    return _probabilities(np.linspace(0.999, 0.4, n_parts), pred, 3), labels


def test_escape_rate_target_counts_escapes_over_all_defective_parts():
    """1,000 defective parts, 20 escapes spread below the middle. At 95 % the bound on k escapes in
    1,000 stays <= 1 % up to k = 4, so the threshold sits just above the fifth escape."""
    rows = list(range(1001, 1201, 10))
    probs, labels = _escape_line(2000, rows)
    conf = probs.max(1)
    target = ThresholdTarget(max_escape_rate=0.01, ok_class="ok")
    assert binom.cdf(4, 1000, 0.01) <= 0.05 < binom.cdf(5, 1000, 0.01)

    result = certify_threshold(probs, labels, target, ["ok", "scratch", "dent"])
    assert result["certified"] and result["risk"] == "escape_rate" and conf[rows[4]] < result["threshold"] < conf[rows[4] - 1]
    assert result["val"]["escapes"] == 4 and result["val"]["escape_rate"] == 0.004
    assert result["val"]["defective_parts"] == 1000 and result["val"]["risk_upper"] <= 0.01
    assert result["stopped_at"]["k"] == 5 and result["stopped_at"]["n"] == 1000
    point = choose_threshold(probs, labels, target, ["ok", "scratch", "dent"])
    assert point["val"]["escapes"] == 10 and point["threshold"] < result["threshold"]


def test_escape_rate_with_too_few_defective_parts():
    probs, labels = _escape_line(200, [])
    result = certify_threshold(probs, labels, ThresholdTarget(max_escape_rate=0.01, ok_class="ok"), ["ok", "scratch", "dent"])
    assert not result["certified"] and result["needed_images"] == 299
    assert result["message"] == ("not certifiable with 100 defective validation images: an escape rate of at most 1 % "
                                 "at 95 % confidence needs about 299 defective validation images with no escape")


def _reference_walk(conf: np.ndarray, event: np.ndarray, pool: np.ndarray | None, limit: float) -> float:
    """The procedure written out plainly, one threshold at a time, with the Clopper-Pearson bound:
    ``event`` counted among accepted parts (``pool`` None) or over every part in ``pool``."""
    last = NO_AUTOMATION  # nothing certified: above every confidence
    for t in sorted(set(conf.tolist()), reverse=True):
        accepted = conf >= t
        n = int(accepted.sum()) if pool is None else int(pool.sum())
        if clopper_pearson_upper(0, n) > limit:
            continue  # too few parts to certify even with no error: not tested
        if clopper_pearson_upper(int((event & accepted).sum()), n) > limit:
            break
        last = t
    return last


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certify_matches_a_plain_reference_walk_with_tied_confidences(seed):
    rng = np.random.default_rng(seed)
    conf = np.round(rng.uniform(0.4, 1.0, 1500), 2)  # ties on purpose
    labels = rng.integers(0, 3, 1500)
    wrong = rng.random(1500) < 0.15 * (1 - conf) / 0.6
    pred = np.where(wrong, (labels + 1) % 3, labels)
    probs, classes = _probabilities(conf, pred, 3), ["ok", "scratch", "dent"]
    top = probs.max(1)

    def same_decisions(threshold: float, reference: float) -> bool:  # the kit places it between two confidences
        return bool(((top >= threshold) == (top >= reference)).all())

    got = certify_threshold(probs, labels, ThresholdTarget(accepted_accuracy=0.97), classes)
    assert same_decisions(got["threshold"], _reference_walk(top, pred != labels, None, 0.03))
    defective = labels != 0
    got = certify_threshold(probs, labels, ThresholdTarget(max_escape_rate=0.04, ok_class="ok"), classes)
    assert same_decisions(got["threshold"], _reference_walk(top, defective & (pred == 0), defective, 0.04))


# -- does the certificate hold on new parts? ----------------------------------------------------


def _draw(rng: np.random.Generator, n: int, error_at) -> tuple[np.ndarray, np.ndarray]:
    """Confidences uniform on [0.5, 1) and, for each part, whether the model is wrong on it."""
    conf = rng.uniform(0.5, 1.0, n)
    return conf, rng.random(n) < error_at(conf)


def _violation_rate(error_at, true_risk, draws: int = 300, n_val: int = 1000, seed: int = 0) -> tuple[float, int]:
    """Share of validation draws whose certified threshold has a true accepted error rate above the limit."""
    rng = np.random.default_rng(seed)
    target, violations, certified = ThresholdTarget(accepted_accuracy=0.97), 0, 0
    for _ in range(draws):
        conf, wrong = _draw(rng, n_val, error_at)
        result = certify_threshold(_probabilities(conf, np.zeros(n_val, int), 2), wrong.astype(int), target, ["ok", "scratch"])
        if result["certified"]:
            certified += 1
            violations += true_risk(result["threshold"]) > 0.03
    return violations / draws, certified


def test_certificate_holds_on_new_parts_for_a_graded_model():
    """P(wrong | confidence c) = 0.2 (1 - c): the error rate among accepted parts is 0.1 (1 - t), at
    the 3 % limit for t = 0.7. The true rate at each certified threshold is read off two million parts
    drawn from the same model; at 95 % it may exceed the limit in at most ~5 % of validation draws."""
    error_at = lambda c: 0.2 * (1 - c)  # noqa: E731
    conf, wrong = _draw(np.random.default_rng(99), 2_000_000, error_at)
    order = np.argsort(-conf)
    top, errors = conf[order], np.cumsum(wrong[order])

    def true_risk(t: float) -> float:
        accepted = int(np.searchsorted(-top, -t, side="right"))
        return errors[accepted - 1] / accepted

    assert true_risk(0.7) == pytest.approx(0.03, abs=5e-4)  # the population agrees with the closed form
    observed, certified = _violation_rate(error_at, true_risk)
    assert certified > 100, f"only {certified} of 300 draws certified: the check would say nothing"
    assert observed <= 0.08, f"certified threshold above the limit in {observed:.1%} of draws (expected <= ~5 %)"


def test_certificate_holds_when_every_threshold_is_just_out_of_reach():
    """The hardest case: 3.1 % errors at every confidence, so every threshold misses the 3 % limit and
    any certificate is wrong. Only the first tested threshold can let one through, with probability
    0.969^99 = 4.4 %: the observed rate must sit near 5 %, not above it and not at zero."""
    observed, _ = _violation_rate(lambda c: np.full_like(c, 0.031), lambda t: 0.031)
    assert 0.005 < observed <= 0.08, f"certified a threshold above the limit in {observed:.1%} of draws (expected ~4.4 %)"
