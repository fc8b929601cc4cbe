"""The decision rule written once (deploy.decision): per-class thresholds, actions, the manifest round
trip, the Predictor honouring it on every runtime, and kit verify certifying the rule as deployed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deploy import Predictor
from deploy.decision import ACCEPT, REJECT, REVIEW, DecisionRule, effective_confidence
from deploy.errors import DeployError
from deploy.manifest import BundleError, read_manifest
from kit.recipe.schema import ThresholdTarget
from kit.verify.threshold import accepted_mask, certify_threshold, operating_point

CLASSES = ["crack", "ok", "scratch"]


def test_class_thresholds_only_raise_the_bar():
    p = np.array([[0.70, 0.20, 0.10],   # crack at 0.70
                  [0.05, 0.85, 0.10],   # ok at 0.85
                  [0.05, 0.95, 0.00],   # ok at 0.95
                  [0.10, 0.30, 0.60]])  # scratch at 0.60
    rule = DecisionRule(threshold=0.65, ok_class="ok", class_thresholds={"ok": 0.9, "scratch": 0.5})
    assert rule.accepted(p, CLASSES).tolist() == [True, False, True, False]  # scratch 0.60 < global 0.65
    assert [rule.action(CLASSES[i], not a) for i, a in zip(p.argmax(1), rule.accepted(p, CLASSES))] == [REJECT, REVIEW, ACCEPT, REVIEW]
    floors = rule.class_floors(CLASSES)
    assert floors.tolist() == [0.0, 0.9, 0.5]
    assert accepted_mask(p, 0.65, floors).tolist() == rule.accepted(p, CLASSES).tolist()
    assert effective_confidence(p, floors).tolist() == pytest.approx([0.70, 0.0, 0.95, 0.60])


def test_a_line_without_a_good_part_class_accepts_every_confident_decision():
    rule = DecisionRule(threshold=0.5)
    assert rule.action("crack", abstain=False) == ACCEPT and rule.action("crack", abstain=True) == REVIEW


def test_the_rule_is_refused_when_it_names_an_unknown_class():
    with pytest.raises(DeployError, match="'good' is not one of the classes"):
        DecisionRule.from_dict({"ok_class": "good"}, CLASSES)
    with pytest.raises(DeployError, match="class_thresholds: 'dent' not among the classes"):
        DecisionRule.from_dict({"class_thresholds": {"dent": 0.9}}, CLASSES)


def test_certification_applies_the_class_thresholds_it_will_be_deployed_with():
    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.integers(0, 3, n)
    conf = rng.uniform(0.5, 1.0, n)
    pred = np.where(rng.uniform(size=n) < 0.97, labels, (labels + 1) % 3)
    p = np.full((n, 3), 0.0)
    p[np.arange(n), pred] = conf
    p[np.arange(n), (pred + 1) % 3] = 1 - conf
    target = ThresholdTarget(accepted_accuracy=0.9)  # 97 % right at every confidence: certified low
    floors = DecisionRule(class_thresholds={"ok": 0.9}).class_floors(CLASSES)
    out = certify_threshold(p, labels, target, CLASSES, floors=floors)
    assert out["certified"]
    point = operating_point(p, labels, out["threshold"], 1, floors)
    assert out["val"]["accepted"] == point["accepted"]
    ok_accepted = (pred == 1) & accepted_mask(p, out["threshold"], floors)
    assert ok_accepted.sum() > 0 and conf[ok_accepted].min() >= 0.9  # no ok decision below its own floor
    plain = certify_threshold(p, labels, target, CLASSES)
    assert point["accepted"] < operating_point(p, labels, plain["threshold"], 1)["accepted"]


def test_the_predictor_honours_the_manifest_rule_on_every_runtime(finished_run, tiny_line, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(finished_run / "bundle", bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["operating_threshold"] = 0.0
    manifest["decision"] = {"threshold": 0.0, "ok_class": "ok", "class_thresholds": {"ok": 0.999999}}
    (bundle / "model.json").write_text(json.dumps(manifest))
    assert read_manifest(bundle).decision_rule.class_thresholds == {"ok": 0.999999}
    paths = sorted(tiny_line.rglob("*.png"))[:12]
    for runtime in ("onnx", "onnx-int8"):
        predictor = Predictor.from_bundle(bundle, runtime)
        decisions = predictor.predict(paths)
        for d in decisions:
            expected = REVIEW if d.label == "ok" and d.confidence < 0.999999 else (ACCEPT if d.label == "ok" else REJECT)
            assert d.action == expected and d.abstain == (expected == REVIEW)
            assert sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_manifest_with_a_broken_rule_is_one_line(finished_run, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(finished_run / "bundle", bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["decision"] = {"ok_class": "no-such-class"}
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="decision.ok_class: 'no-such-class'"):
        read_manifest(bundle)


def _escape_scores(n_per_class: int, seed: int = 0):
    """ok + two defect classes; crack parts called ok only at low confidence, scratch parts never."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n_per_class)
    pred = labels.copy()
    crack_escape = rng.uniform(size=n_per_class) < 0.3
    pred[:n_per_class][crack_escape] = 1
    conf = rng.uniform(0.55, 1.0, len(labels))
    conf[:n_per_class][crack_escape] = rng.uniform(0.55, 0.7, crack_escape.sum())  # escapes are unsure
    p = np.zeros((len(labels), 3))
    p[np.arange(len(labels)), pred] = conf
    p[np.arange(len(labels)), (pred + 1) % 3] = 1 - conf
    return p, labels


def test_per_class_escape_limits_are_certified_with_the_main_target():
    p, labels = _escape_scores(400)
    plain = ThresholdTarget(accepted_accuracy=0.8)
    limited = ThresholdTarget(accepted_accuracy=0.8, class_escape_limits={"crack": 0.02})
    a = certify_threshold(p, labels, plain, CLASSES, line_ok_class="ok")
    b = certify_threshold(p, labels, limited, CLASSES, line_ok_class="ok")
    assert a["certified"] and b["certified"] and b["threshold"] > a["threshold"]
    crack = b["class_escapes"]["crack"]
    assert crack["upper"] <= 0.02 and crack["n"] == 400 and not crack["blocked"]
    escaped = (labels == 0) & (p.argmax(1) == 1) & (p.max(1) >= b["threshold"])
    assert crack["k"] == int(escaped.sum())


def test_a_class_too_rare_to_certify_its_escape_limit_is_named():
    p, labels = _escape_scores(60)
    out = certify_threshold(p, labels, ThresholdTarget(accepted_accuracy=0.8, class_escape_limits={"crack": 0.01}),
                            CLASSES, line_ok_class="ok")
    assert not out["certified"] and out["threshold"] > 1.0
    assert out["message"] == ("not certifiable: the escape limit of 1 % for crack needs about 299 defective crack "
                              "validation images with no escape (have 60)")


def test_no_automation_accepts_nothing_even_at_a_float32_confidence_of_one():
    """numpy 2 compares a float32 array with a Python float in float32, where NO_AUTOMATION (just above 1.0)
    rounds to 1.0: parts with a confidence of exactly 1.0 were accepted although every part should go to a person."""
    from kit.verify.threshold import NO_AUTOMATION

    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.7, 0.1]], dtype=np.float32)
    labels = np.array([0, 1])
    assert not accepted_mask(p, NO_AUTOMATION).any()
    assert operating_point(p, labels, NO_AUTOMATION, 1)["accepted"] == 0
    assert not DecisionRule(threshold=NO_AUTOMATION).accepted(p, CLASSES).any()
    adjacent = np.array([[np.float32(0.9), 0.05, 0.05], [np.nextafter(np.float32(0.9), np.float32(0)), 0.05, 0.05]],
                        dtype=np.float32)
    from kit.verify.threshold import _between

    t = _between(np.unique(adjacent.max(1))[::-1], 0)  # between two adjacent float32 values
    assert accepted_mask(adjacent, t).tolist() == [True, False]
