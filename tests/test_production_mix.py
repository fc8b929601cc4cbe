"""Figures in the line's own mix, net economics and the page-one recommendation, on counts where the
answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from kit.recipe.schema import EconomicsConfig, KpiTargets
from kit.report.economics import net_savings
from kit.report.i18n import translator
from kit.report.recommendation import GO, NO_GO, SHADOW, recommend
from kit.verify.gate import evaluate_gate
from kit.verify.production import class_weights, production_figures
from kit.verify.stats import clopper_pearson, rate
from tests.kpi_records import kpi_record

CLASSES = ["crack", "ok", "scratch"]


def _probs(pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    p = np.zeros((len(pred), 3))
    p[np.arange(len(pred)), pred] = conf
    p[np.arange(len(pred)), (pred + 1) % 3] = 1 - conf
    return p


def test_one_defect_rate_is_spread_over_the_defect_classes_in_their_test_proportions():
    w = class_weights(CLASSES, {"crack": 30, "ok": 50, "scratch": 10}, "ok", 0.02)
    assert w == pytest.approx({"crack": 0.015, "ok": 0.98, "scratch": 0.005})
    w = class_weights(CLASSES, {"crack": 30, "ok": 50, "scratch": 10}, "ok", {"crack": 0.001, "scratch": 0.004})
    assert w == pytest.approx({"crack": 0.001, "ok": 0.995, "scratch": 0.004})


def test_production_figures_reweight_per_class_rates():
    # crack: 40 parts, 4 accepted as ok (escapes), 36 rejected; ok: 100 parts, 90 accepted ok, 2 rejected as crack,
    # 8 below the threshold (review); scratch: 20 parts, all rejected.
    labels = np.array([0] * 40 + [1] * 100 + [2] * 20)
    pred = np.array([1] * 4 + [0] * 36 + [1] * 90 + [0] * 2 + [1] * 8 + [2] * 20)
    conf = np.array([0.9] * 40 + [0.9] * 92 + [0.5] * 8 + [0.9] * 20)
    out = production_figures(_probs(pred, conf), labels, CLASSES, 1, 0.8, None, 0.01)
    w = out["weights"]
    assert w == pytest.approx({"crack": 0.01 * 40 / 60, "ok": 0.99, "scratch": 0.01 * 20 / 60})
    assert out["automation_rate"]["rate"] == pytest.approx(w["crack"] * 1 + w["ok"] * 0.92 + w["scratch"] * 1)
    assert out["escapes_per_part"]["rate"] == pytest.approx(w["crack"] * 4 / 40)
    assert out["escapes_per_million"]["rate"] == pytest.approx(1e6 * w["crack"] * 0.1)
    assert out["false_rejects_per_part"]["rate"] == pytest.approx(0.99 * 2 / 100)
    low, high = clopper_pearson(4, 40)
    scratch_low, scratch_high = clopper_pearson(0, 20)
    assert out["escapes_per_part"]["high"] == pytest.approx(w["crack"] * high + w["scratch"] * scratch_high)
    assert out["escapes_per_part"]["low"] == pytest.approx(w["crack"] * low)
    assert production_figures(_probs(pred, conf), labels, CLASSES, 1, 0.8, None, None) is None


def test_net_savings_subtract_review_escapes_and_false_rejects():
    econ = EconomicsConfig(parts_per_day=1000, manual_seconds_per_part=3.6, labour_cost_per_hour=50,
                           working_days_per_month=20, escape_cost=100, false_reject_cost=2)
    figures = {"automation_rate": {"rate": 0.9, "low": 0.8, "high": 0.95},
               "escapes_per_part": {"rate": 0.001, "low": 0.0, "high": 0.002},
               "false_rejects_per_part": {"rate": 0.01, "low": 0.005, "high": 0.02}}
    out = net_savings(figures, econ, "production")
    # 20,000 parts a month at 0.05 per part by hand = 1,000; review 10 % = 100; 20 escapes x 100; 200 rejects x 2
    assert out["point"]["labour_today"] == pytest.approx(1000) and out["point"]["review_labour"] == pytest.approx(100)
    assert out["point"]["net"] == pytest.approx(1000 - 100 - 2000 - 400)
    assert out["low"]["net"] == pytest.approx(1000 - 200 - 4000 - 800)
    assert out["high"]["net"] == pytest.approx(1000 - 50 - 0 - 200)
    assert out["unpriced"] == []
    assert net_savings(figures, EconomicsConfig(), "test") is None


def _kpi(checks, **operating):
    return kpi_record({"gate": {"checks": checks}, "deployed_runtime": "onnx", "val_images": 132,
            "measured": {"worst_escape_class": "crack"},
            "operating": {"ok_class": "ok", "certificate": {"needed_images": 299},
                          "escapes_test": {"classes": {"crack": {}, "dent": {}, "ok": {}}}, **operating},
            "robustness": {"summary": {"onnx": {"per_family": {"shadow": 0.3, "jpeg": 0.9}}},
                           "families": {"shadow": {"coverage": "held-out"}, "jpeg": {"coverage": "held-out"}}}})


def test_the_recommendation_goes_from_no_go_to_shadow_to_go():
    t = translator("en")
    escape = rate(0, 20)  # 0 of 20: point 0, upper bound 16.8 %
    measured = {"max_class_escape_rate": 0.0, "heldout_relative_robustness": 0.5}
    targets = KpiTargets(max_class_escape_rate=0.05, min_heldout_relative_robustness=0.7)
    failed = evaluate_gate(measured, targets, None, {"max_class_escape_rate": escape})
    rec = recommend(_kpi(failed["checks"]), t)
    assert rec["kind"] == NO_GO and rec["reasons"] == ["kpi.min_heldout_relative_robustness"]
    assert "shadow" in rec["actions"][0] and "strong view" in rec["actions"][0]

    measured["heldout_relative_robustness"] = 0.8
    thin = evaluate_gate(measured, targets, None, {"max_class_escape_rate": escape})
    assert thin["passed"]
    rec = recommend(_kpi(thin["checks"]), t)
    assert rec["kind"] == SHADOW and rec["reasons"] == ["kpi.max_class_escape_rate"]
    # one limit for every defect class: each class must show it; 0 of n bounds the rate below 5 % at the upper end of a
    # two-sided 95 % interval (the gate's bound) from n = ln(0.025) / ln(0.95) = 71.9
    assert "at least 72 defective parts of every defect class (crack, dent)" in rec["actions"][0]

    strict = evaluate_gate(measured, KpiTargets(max_class_escape_rate=0.05, gate_on="bound"), None,
                           {"max_class_escape_rate": escape})
    assert not strict["passed"] and strict["checks"][-1]["gated_on"] in ("bound", "point")
    wide_ok = evaluate_gate(measured, KpiTargets(max_class_escape_rate=0.2), None, {"max_class_escape_rate": escape})
    assert recommend(_kpi(wide_ok["checks"]), t)["kind"] == GO


def test_shadow_size_in_parts_produced_uses_the_line_defect_rate():
    t = translator("en")
    checks = evaluate_gate({"max_class_escape_rate": 0.0}, KpiTargets(max_class_escape_rate=0.05), None,
                           {"max_class_escape_rate": rate(0, 20)})["checks"]
    kpi = _kpi(checks, production={"weights": {"crack": 0.01, "dent": 0.005, "ok": 0.985}})
    assert "about 14,400 parts produced" in recommend(kpi, t)["actions"][0]  # the rarest class: 72 / 0.005
    per_class = evaluate_gate({"escape_rate[crack]": 0.0}, KpiTargets(max_class_escape_rate={"crack": 0.05}), None,
                              {"escape_rate[crack]": rate(0, 20)})["checks"]
    assert "at least 72 defective crack parts with no escape, about 7,200 parts produced" in \
        recommend(_kpi(per_class, production={"weights": {"crack": 0.01, "dent": 0.005, "ok": 0.985}}), t)["actions"][0]


def test_gate_on_bound_uses_the_pessimistic_end_and_per_class_limits():
    measured = {"accuracy": 0.95, "escape_rate[crack]": 0.0, "escape_rate[scratch]": 0.1, "max_class_escape_rate": 0.1}
    bounds = {"accuracy": rate(95, 100), "escape_rate[crack]": rate(0, 20), "escape_rate[scratch]": rate(2, 20)}
    point = evaluate_gate(measured, KpiTargets(min_accuracy=0.9, max_class_escape_rate={"crack": 0.2, "scratch": 0.15}), None, bounds)
    assert point["passed"] and point["gate_on"] == "point"
    assert [c["target"] for c in point["checks"] if c["gated"]] == ["kpi.min_accuracy", "kpi.max_class_escape_rate[crack]",
                                                                   "kpi.max_class_escape_rate[scratch]"]
    bound = evaluate_gate(measured, KpiTargets(min_accuracy=0.9, max_class_escape_rate={"crack": 0.2, "scratch": 0.15},
                                               gate_on="bound"), None, bounds)
    by = {c["target"]: c for c in bound["checks"]}
    # 95 of 100 correct: point 95 % passes a 90 % floor, the lower bound 88.7 % does not
    assert by["kpi.min_accuracy"]["value"] == pytest.approx(bounds["accuracy"]["low"]) and not by["kpi.min_accuracy"]["passed"]
    assert by["kpi.min_accuracy"]["point"] == 0.95 and by["kpi.min_accuracy"]["gated_on"] == "bound"
    assert by["kpi.max_class_escape_rate[crack]"]["passed"]  # upper bound 16.8 % <= 20 %
    assert not by["kpi.max_class_escape_rate[scratch]"]["passed"]  # upper bound 31.7 % > 15 %
    assert bound["failed"] == ["kpi.min_accuracy", "kpi.max_class_escape_rate[scratch]"]


def test_a_corruption_that_lets_defects_through_is_named_next_to_the_recommendation():
    t = translator("en")
    checks = evaluate_gate({"max_class_escape_rate": 0.0}, KpiTargets(max_class_escape_rate=0.2), None,
                           {"max_class_escape_rate": rate(0, 20)})["checks"]
    kpi = _kpi(checks)
    kpi.operating.test = {"accepted": 130}
    cells = [{"family": "shadow", "severity": s, "value": v, "escape_rate": rate(k, 100), "false_reject_rate": rate(0, 32)}
             for s, v, k in ((1, 0.15, 3), (5, 0.75, 49))]
    kpi.robustness["decisions"] = {"cells": cells, "worst": {"family": "shadow", "severity": 5, "escape_rate": rate(49, 100)}}
    rec = recommend(kpi, t)
    # issue 28: the family is named, its level in physical units and the advice are in page one's table
    assert rec["kind"] == GO and rec["warnings"] == [
        "Line conditions that break the model: shadow (see the table on this page)."]
    cells[1]["escape_rate"] = rate(19, 100)  # within the 20 % limit: nothing to say
    assert recommend(kpi, t)["warnings"] == []


def _nothing_decided_operating() -> dict:
    """What verify records when the operating threshold sends every test part to a person (sparse line: 150 images)."""
    escapes = {"ok_class": "ok", "threshold": 1.0, "worst": "scratch", "worst_rate": 0.0,
               "classes": {"crack": {"kind": "escape", **rate(0, 5)}, "ok": {"kind": "false_reject", **rate(0, 135)},
                           "scratch": {"kind": "escape", **rate(0, 5)}}}
    return {"test": {"automation_rate": 0.0, "accepted_accuracy": None, "accepted": 0, "images": 150, "false_reject_rate": 0.0},
            "val": {}, "certified": False, "escapes_test": escapes, "ok_class": "ok"}


@pytest.mark.parametrize("gate_on", ["point", "bound"])
def test_escapes_of_a_model_that_decided_nothing_are_unmeasured_not_a_pass(gate_on):
    from kit.verify.kpi import gate_bounds, operating_measures

    operating = _nothing_decided_operating()
    measured = operating_measures(operating)
    assert measured["max_class_escape_rate"] is None and measured["false_reject_rate"] is None
    assert measured["escape_rate[crack]"] is None and measured["escape_rate[scratch]"] is None
    targets = KpiTargets(max_class_escape_rate=0.05, max_false_reject_rate=0.05, gate_on=gate_on)
    gate = evaluate_gate(measured, targets, None, gate_bounds({}, operating))
    by = {c["target"]: c for c in gate["checks"]}
    for target in ("kpi.max_class_escape_rate", "kpi.max_false_reject_rate"):
        assert by[target]["value"] is None and by[target]["passed"] is False  # zero escapes of nothing decided
    decided = dict(operating, test=dict(operating["test"], accepted=3, automation_rate=0.02))
    assert operating_measures(decided)["max_class_escape_rate"] == 0.0  # once parts are decided, zero is a measurement


def test_the_report_says_unmeasured_where_nothing_was_decided():
    from kit.report.build import _escapes

    t = translator("en")
    section = _escapes(kpi_record({"operating": _nothing_decided_operating(), "intervals": {}}), t)
    assert section["rows"] == [] and section["worst"] is None
    assert section["sentences"] == [t("escapes_unmeasured", n=150)]
    assert "not measured" in section["sentences"][0] and "No test defect was accepted" not in section["sentences"][0]


def test_the_accuracy_card_names_the_all_good_baseline_on_a_mostly_good_mix():
    from kit.report.build import _baseline_sentence

    t = translator("en")
    cm = [[4, 1, 0], [0, 135, 0], [1, 2, 2]]  # crack, ok, scratch: 135 of 145 test parts are good
    parts = {"deployed_runtime": "onnx", "classes": ["crack", "ok", "scratch"],
             "models": {"onnx": {"confusion_matrix": cm, "macro_f1": 0.7512, "balanced_accuracy": 0.7333}}}
    kpi = kpi_record(parts)
    assert _baseline_sentence(kpi, t) == ("Calling every part ok would already score 93.1 % on this test mix; counting "
                                          "every class equally, the small model scores 0.75 (macro-F1, see the glossary) "
                                          "and 73.3 % of each class right on average.")
    balanced = kpi_record(dict(parts, models={"onnx": dict(parts["models"]["onnx"], confusion_matrix=[[5, 0, 0], [0, 4, 1], [0, 0, 5]])}))
    assert _baseline_sentence(balanced, t) is None  # no class holds half the test parts
