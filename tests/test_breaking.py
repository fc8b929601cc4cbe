"""Conditions that break the model (issue 28, part B): every corruption family in physical units, the breaking
level per family from the robustness decisions, the advice that fits, and held-out robustness gated per family."""

from __future__ import annotations

import numpy as np
import pytest

from kit.recipe.schema import KpiTargets
from kit.report.breaking import breaking_conditions, breaking_summary
from kit.report.i18n import STRINGS, translator
from kit.verify.gate import evaluate_gate
from kit.verify.record import Measured
from kit.verify.stats import rate
from kit.views.corruptions import corrupt_images, get_corruption, list_corruptions
from kit.physical import TEMPLATES_EN, covering_severity, physical_families, physical_level, preset_reach
from tests.kpi_records import kpi_record


@pytest.mark.parametrize("family", list_corruptions())
def test_every_family_reads_in_physical_units_that_grow_with_severity(family):
    table = get_corruption(family).severities
    levels = [physical_level(family, v, (64, 64)) for v in table]
    amounts = [lv.amount for lv in levels]
    assert amounts == sorted(amounts) and amounts[0] < amounts[-1], amounts
    for lang in ("en", "ja"):  # both report languages have the wording, with the same placeholders
        text = STRINGS[lang]["phys_" + family].format(**levels[2].values)
        assert "{" not in text and text
    assert levels[2].text == TEMPLATES_EN[family].format(**levels[2].values)
    assert set(physical_families()) >= set(list_corruptions())


def test_physical_values_come_from_the_transforms_at_the_line_image_size():
    # brightness: RandomBrightnessContrast(+0.3) lifts mid-grey 128 by 0.3 x 255 = 76.5 -> 204 (what the pipeline does)
    flat = np.full((1, 64, 64, 1), 128, np.uint8)
    assert corrupt_images(flat, "brighter", 0.3, 0)[0].mean() == 204
    assert physical_level("brighter", 0.3, (64, 64)).values == {"delta": 76, "grey": 204}
    assert physical_level("shadow", 0.6, (64, 64)).values == {"depth_pct": 60, "grey": 51}  # 128 x 0.4 = 51.2
    assert physical_level("gaussian_noise", 0.06, (64, 64)).values == {"sigma": "15.3"}  # std 0.06 of 255
    assert physical_level("shift", 0.06, (64, 64)).values == {"px": "3.8", "side": 64}
    assert physical_level("shift", 0.06, (128, 128)).values == {"px": "7.7", "side": 128}  # pixels follow the image size
    assert physical_level("motion_blur", 4, (64, 64)).values["px"] == 5  # the kernel the pipeline uses is odd
    assert physical_level("gamma", 1.5, (64, 64)).values == {"gamma": "1.5", "grey": 90}  # 255 x (128/255)^1.5
    with pytest.raises(KeyError, match="has no physical reading"):
        physical_level("fog", 0.1, (64, 64))


def test_the_preset_severity_that_trains_a_level_is_read_from_the_preset():
    assert preset_reach("brighter", 2) == pytest.approx(0.14)  # lighting severity 2: brightness_limit 0.07 x 2
    assert covering_severity("brighter", 0.3) == 5 and covering_severity("brighter", 0.5) is None
    assert covering_severity("gaussian_noise", 0.06) == 3
    assert covering_severity("jpeg", 25) == 4  # lower quality is harsher: quality_range low end 95 - 18 x 4 = 23
    assert preset_reach("uneven_illumination", 2) is None and covering_severity("uneven_illumination", 0.04) == 3
    assert preset_reach("shadow", 5) is None and covering_severity("shadow", 0.15) is None


def _cells() -> list[dict]:
    """The sample line's shape: brightness lets defects through from +0.3, any shadow rejects good parts."""
    def cell(family, severity, value, esc, fr):
        return {"family": family, "severity": severity, "value": value, "automation_rate": rate(130, 132),
                "escape_rate": rate(esc, 100), "false_reject_rate": rate(fr, 32)}
    cells = [cell("brighter", s, v, e, 0) for s, v, e in ((1, 0.1, 0), (2, 0.2, 2), (3, 0.3, 13), (4, 0.4, 32), (5, 0.5, 51))]
    cells += [cell("shadow", s, v, 0, f) for s, v, f in ((1, 0.15, 25), (2, 0.3, 32), (3, 0.45, 32), (4, 0.6, 32), (5, 0.75, 32))]
    cells += [cell("rotation", s, v, 0, 0) for s, v in ((1, 3), (2, 6), (3, 10), (4, 15), (5, 20))]
    return cells


def _record(escape_limit=0.05, false_reject_limit=0.05):
    checks = []
    if escape_limit is not None:
        checks.append({"target": "kpi.max_class_escape_rate", "measure": "max_class_escape_rate", "description": "",
                       "value": 0.0, "op": "<=", "limit": escape_limit, "gated": True, "passed": True})
    if false_reject_limit is not None:
        checks.append({"target": "kpi.max_false_reject_rate", "measure": "false_reject_rate", "description": "",
                       "value": 0.0, "op": "<=", "limit": false_reject_limit, "gated": True, "passed": True})
    return kpi_record({
        "operating": {"ok_class": "ok", "test": {"accepted": 130}},
        "robustness": {"images": 132, "decisions": {"model": "onnx", "cells": _cells()},
                       "families": {"brighter": {"coverage": "in-recipe"}, "shadow": {"coverage": "held-out"},
                                    "rotation": {"coverage": "in-recipe"}}},
        "gate": {"passed": True, "checks": checks, "failed": []},
    })


class _Recipe:  # the strong view of the sample line: lighting at severity 2
    class views:  # noqa: N801
        strong = [{"HorizontalFlip": {"p": 0.5}}, {"lighting": {"severity": 2, "p": 0.8}}]


def test_the_mildest_breaking_level_per_family_with_the_advice_that_fits():
    t = translator("en")
    out = breaking_conditions(_record(), _Recipe, (64, 64), t)
    rows = {r["family"]: r for r in out["rows"]}
    assert [r["family"] for r in out["rows"]] == ["shadow", "brighter"]  # mildest first
    shadow, bright = rows["shadow"], rows["brighter"]
    assert shadow["severity"] == 1 and shadow["held_to"] is None
    assert shadow["level"] == "a shadow taking 16 % of the light (mid-grey 128 → 108)"
    assert shadow["effects"] == ["78.1 % of good parts rejected (25 of 32; limit 5 %)"]
    assert "add RandomShadow to the training views" in shadow["advice"] and "keep shadows off the part" in shadow["advice"]
    assert bright["severity"] == 3 and bright["level"] == "+76 grey levels (mid-grey 128 → 204)"
    assert bright["held_to"] == "+51 grey levels (mid-grey 128 → 179)"
    assert bright["effects"] == ["13.0 % of defective parts accepted (13 of 100; limit 5 %)"]
    assert "views.strong lighting severity 2 → 5" in bright["advice"]
    assert out["holding"] == ["rotation (up to 20° rotation)"]
    assert out["unset"] is None
    assert breaking_summary(_record(), t) == [
        "Line conditions that break the model: brighter; shadow (see the table on this page)."]


def test_a_limit_the_recipe_leaves_out_is_replaced_and_said():
    out = breaking_conditions(_record(escape_limit=0.2, false_reject_limit=None), _Recipe, (64, 64), translator("en"))
    assert [r["family"] for r in out["rows"]] == ["shadow", "brighter"]
    assert out["rows"][1]["severity"] == 4  # 32 % > 20 %; 13 % is within
    assert "5 % is used" in out["unset"]
    ja = breaking_conditions(_record(), _Recipe, (64, 64), translator("ja"))
    assert ja["rows"][0]["name"] == "影" and "階調" in ja["rows"][1]["level"]


def test_no_table_without_a_good_part_class_or_decisions():
    record = _record()
    record.operating.ok_class = None
    assert breaking_conditions(record, _Recipe, (64, 64), translator("en")) is None
    assert breaking_summary(record, translator("en")) == []


def test_held_out_robustness_is_gated_per_family_not_on_the_mean():
    measured = {"heldout_relative_robustness": 0.75, "heldout_relative_robustness[shadow]": 0.27,
                "heldout_relative_robustness[jpeg]": 0.98, "heldout_relative_robustness[perspective]": 1.0}
    verdict = evaluate_gate(measured, KpiTargets(min_heldout_relative_robustness=0.7), None)
    checks = {c["target"]: c for c in verdict["checks"]}
    assert checks["kpi.min_heldout_relative_robustness[shadow]"]["passed"] is False
    assert checks["kpi.min_heldout_relative_robustness[jpeg]"]["passed"] is True
    assert checks["kpi.min_heldout_relative_robustness"]["gated"] is False  # the mean: information only
    assert verdict["passed"] is False and verdict["failed"] == ["kpi.min_heldout_relative_robustness[shadow]"]
    # a record from before the per-family figures keeps its mean gated
    old = evaluate_gate({"heldout_relative_robustness": 0.75}, KpiTargets(min_heldout_relative_robustness=0.7), None)
    assert old["passed"] is True and [c["target"] for c in old["checks"] if c["gated"]] == ["kpi.min_heldout_relative_robustness"]


def test_per_family_figures_round_trip_through_the_record():
    flat = {k: None for k in Measured.model_fields if k not in ("escape_rates", "heldout_family_robustness")}
    flat.update({"escape_rate[crack]": 0.1, "heldout_relative_robustness[shadow]": 0.27})
    m = Measured.model_validate(flat)
    assert m.heldout_family_robustness == {"shadow": 0.27} and m.escape_rates == {"crack": 0.1}
    assert m.to_dict()["heldout_relative_robustness[shadow]"] == 0.27 and "heldout_family_robustness" not in m.to_dict()
