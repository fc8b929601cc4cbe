"""Anomaly mode's statistics against hand-computed values: AUROC, AUPR, the false-reject threshold, the
certified operating point and the escape certificates, the pointing game and AUPRO."""

import numpy as np
import pytest

from kit.anomaly.metrics import aupr, auroc, peak_hits, pro_auc, threshold_at_false_reject
from kit.anomaly.verify import actions, certify, escape_certificates, operating_figures


def test_auroc_counts_pairs_and_ties_half():
    # good 0.1 0.4 0.35; defective 0.8 0.4: pairs (d > g): 0.8 beats 3, 0.4 beats 0.1 and 0.35, ties 0.4 -> 5.5 / 6
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    defective = np.array([0, 0, 0, 1, 1], bool)
    assert auroc(scores, defective) == pytest.approx(5.5 / 6)
    assert auroc(scores, np.zeros(5, bool)) is None


def test_aupr_is_average_precision():
    # ranked: 0.9 (d), 0.8 (g), 0.7 (d), 0.1 (g): precision at the two hits 1 and 2/3 -> (1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    defective = np.array([1, 0, 1, 0], bool)
    assert aupr(scores, defective) == pytest.approx((1 + 2 / 3) / 2)


def test_threshold_at_false_reject_rejects_at_most_that_share():
    good = np.arange(100, dtype=float)  # 0 .. 99
    t = threshold_at_false_reject(good, 0.05)
    assert (good >= t).sum() == 5 and t > 94
    assert (good >= threshold_at_false_reject(good, 0.0)).sum() == 0


def test_certify_allows_the_false_rejects_the_bound_holds():
    good = np.linspace(0, 1, 135)
    cert = certify(good, target=0.05, review_fraction=0.0, confidence=0.95)
    # Clopper-Pearson one-sided 95 %: 2 of 135 -> 4.59 % <= 5 %; 3 of 135 -> 5.8 % > 5 %
    assert cert["certified"] and cert["false_rejects_val"] == 2
    assert cert["false_reject_upper"] == pytest.approx(0.0459, abs=5e-4)
    assert (good >= cert["reject_at"]).sum() == 2
    assert cert["accept_below"] == cert["reject_at"]


def test_certify_review_band_holds_its_share_of_good_parts():
    good = np.linspace(0, 1, 200)
    cert = certify(good, target=0.05, review_fraction=0.05, confidence=0.95)
    band = (good >= cert["accept_below"]) & (good < cert["reject_at"])
    assert band.sum() == 10 == cert["review_good_val"]


def test_too_few_good_images_certify_nothing_and_every_part_goes_to_a_person():
    cert = certify(np.linspace(0, 1, 30), target=0.05, review_fraction=0.02, confidence=0.95)
    assert not cert["certified"] and cert["needed_good_images"] == 59 and cert["reject_at"] is None
    assert set(actions(np.array([0.0, 0.5, 9.0]), cert["accept_below"], cert["reject_at"])) == {"review"}


def test_escape_certificates_say_unmeasured_and_the_parts_needed():
    labels = np.array([1, 1, 1, 0, 0])  # classes: scratch (0), ok (1), pit (2): pit has no image
    scores = np.array([0.1, 0.2, 0.3, 2.0, 0.5])
    out = escape_certificates(scores, labels, ["scratch", "ok", "pit"], ok=1, accept_below=1.0,
                              limits={"scratch": 0.05, "pit": 0.05}, confidence=0.95)
    assert out["pit"] == {"status": "unmeasured", "limit": 0.05, "needed_defective_parts": 59}
    assert out["scratch"]["k"] == 1 and out["scratch"]["n"] == 2 and out["scratch"]["status"] == "not certified"
    assert out["scratch"]["needed_defective_parts"] == 93  # one escape seen: 93 parts bound it at 5 % (not 59)


def test_operating_figures_count_each_action():
    labels = np.array([1, 1, 1, 1, 0, 0, 2])
    scores = np.array([0.1, 0.95, 1.5, 0.2, 2.0, 0.3, 0.97])
    op = operating_figures(scores, labels, ["scratch", "ok", "pit"], ok=1, accept_below=0.9, reject_at=1.0)
    assert (op["false_reject_rate"]["k"], op["false_reject_rate"]["n"]) == (1, 4)
    assert op["good_review_rate"]["k"] == 1
    assert op["per_class"]["scratch"]["escape"]["k"] == 1 and op["per_class"]["pit"]["caught"]["k"] == 1
    assert op["automation_rate"]["k"] == 5


def test_pointing_game_and_aupro():
    mask = np.zeros((16, 16), bool)
    mask[4:6, 4:6] = True
    hit_map = np.zeros((16, 16))
    hit_map[5, 7] = 1.0  # 2 px right of the mask
    miss_map = np.zeros((16, 16))
    miss_map[12, 12] = 1.0
    assert peak_hits(np.stack([hit_map, miss_map]), [mask, mask], tolerance_px=3) == (1, 2)
    perfect = mask.astype(float)
    good = np.zeros((3, 16, 16))
    assert pro_auc(np.stack([perfect]), [mask], good) == pytest.approx(1.0)
