"""Attribute agreement figures equal an independent computation (statsmodels) and AIAG's published levels."""

import numpy as np
import pytest
from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa as statsmodels_cohen, fleiss_kappa as statsmodels_fleiss

from kit.verify.attribute_agreement import (aiag_level, aiag_verdict, cohens_kappa, fleiss_kappa, parts_needed,
                                            versus_reference, within_appraiser)


def test_cohens_kappa_and_its_standard_error_equal_statsmodels():
    rng = np.random.default_rng(1)
    a = rng.choice(["good", "crack", "pit"], 200, p=[0.6, 0.2, 0.2])
    b = np.where(rng.random(200) < 0.8, a, rng.choice(["good", "crack", "pit"], 200))
    ours = cohens_kappa(list(a), list(b))
    categories = sorted(set(a) | set(b))
    table = np.zeros((3, 3))
    for x, y in zip(a, b):
        table[categories.index(x), categories.index(y)] += 1
    theirs = statsmodels_cohen(table)
    assert ours["kappa"] == pytest.approx(theirs.kappa, abs=1e-12)
    assert ours["se"] == pytest.approx(theirs.std_kappa, abs=1e-12)
    assert (ours["low"], ours["high"]) == pytest.approx((theirs.kappa_low, theirs.kappa_upp), abs=1e-12)


def test_fleiss_kappa_equals_statsmodels_and_its_interval_covers_it():
    rng = np.random.default_rng(2)
    truth = rng.choice(["good", "bad"], 60)
    calls = [[t if rng.random() < 0.85 else ("bad" if t == "good" else "good") for _ in range(6)] for t in truth]
    ours = fleiss_kappa(calls)
    counts, _ = aggregate_raters(np.array(calls))
    assert ours["kappa"] == pytest.approx(statsmodels_fleiss(counts), abs=1e-12)
    assert ours["low"] < ours["kappa"] < ours["high"]
    assert fleiss_kappa(calls) == ours  # seeded bootstrap: the same figures twice


def test_rates_per_decision_with_aiag_levels():
    calls = ["good"] * 95 + ["bad"] * 5 + ["bad"] * 48 + ["good"] * 2
    truth = ["good"] * 100 + ["bad"] * 50
    figures = versus_reference(calls, truth, good="good")
    assert (figures["miss_rate"]["k"], figures["miss_rate"]["n"]) == (2, 50)
    assert (figures["false_alarm_rate"]["k"], figures["false_alarm_rate"]["n"]) == (5, 100)
    assert figures["effectiveness"]["rate"] == pytest.approx(143 / 150)
    assert figures["miss_rate"]["aiag"] == "marginal"  # 4 %: above 2 %, within 5 %
    assert figures["false_alarm_rate"]["aiag"] == "acceptable"  # exactly 5 %
    assert figures["aiag"] == "marginal"


def test_a_wrong_defect_class_is_not_effective_but_is_no_miss():
    figures = versus_reference(["scratch"], ["crack"], good="good")
    assert figures["effectiveness"]["k"] == 0 and figures["miss_rate"]["k"] == 0


def test_levels_verdicts_repeatability_and_the_parts_a_limit_needs():
    assert [aiag_level("effectiveness", v) for v in (0.9, 0.85, 0.79)] == ["acceptable", "marginal", "unacceptable"]
    assert aiag_level("miss_rate", None) is None
    assert aiag_verdict(["acceptable", None, "unacceptable", "marginal"]) == "unacceptable"
    assert within_appraiser({"a": ["good", "good"], "b": ["good", "bad"], "c": ["bad"]})["k"] == 1
    assert parts_needed()["miss_rate"]["acceptable"] == 149


def test_a_kappa_interval_never_passes_one():
    calls = ["good"] * 58 + ["bad"] * 2
    result = cohens_kappa(calls, calls[:-1] + ["good"])
    assert result["high"] == 1.0 and result["low"] < result["kappa"] < 1.0
