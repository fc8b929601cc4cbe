"""The operating target's pre-flight: a validation split too small to certify the target even with no error is said
at the start of ``kit run`` (issue 31: three real lines ran to the end before learning that every part goes to a
person), with the images needed and the strictest target the split can certify."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.recipe.schema import ThresholdTarget
from kit.verify.stats import clopper_pearson_upper
from kit.verify.threshold import certifiability_problems, strictest_certifiable_limit
from tests.conftest import tiny_recipe_dict, write_recipe

CLASSES = ["crack", "ok", "scratch"]


def _labels(ok: int, crack: int, scratch: int) -> np.ndarray:
    return np.array([1] * ok + [0] * crack + [2] * scratch)


def test_99_percent_needs_299_images_and_201_can_certify_98_5():
    labels = _labels(150, 26, 25)  # x-sdd's validation size
    (problem,) = certifiability_problems(ThresholdTarget(accepted_accuracy=0.99), labels, CLASSES)
    assert problem.startswith("verify.threshold.accepted_accuracy: 99 % at 95 % confidence needs at least 299 ")
    assert "this split has 201" in problem and "accepted_accuracy 0.985 is the strictest" in problem
    assert "add 98 images" in problem
    assert 1 - clopper_pearson_upper(0, 201) == pytest.approx(0.98520, abs=1e-5)  # 0.985 holds, 0.986 would not
    assert certifiability_problems(ThresholdTarget(accepted_accuracy=0.985), labels, CLASSES) == []


def test_escape_targets_count_defective_images_only():
    labels = _labels(150, 26, 25)
    (problem,) = certifiability_problems(ThresholdTarget(max_escape_rate=0.01, ok_class="ok"), labels, CLASSES)
    assert "needs at least 299 defective validation images" in problem and "this split has 51" in problem
    assert certifiability_problems(ThresholdTarget(max_escape_rate=0.06, ok_class="ok"), labels, CLASSES) == []
    target = ThresholdTarget(max_escape_rate=0.06, ok_class="ok", class_escape_limits={"crack": 0.05})
    (per_class,) = certifiability_problems(target, labels, CLASSES)
    assert per_class.startswith("verify.threshold.class_escape_limits.crack: 5 % at 95 % confidence needs at least 59 ")


def test_no_target_and_no_images():
    assert certifiability_problems(None, _labels(3, 1, 1), CLASSES) == []
    assert strictest_certifiable_limit(0) is None and strictest_certifiable_limit(299) <= 0.01


@pytest.mark.slow
def test_kit_run_says_it_before_training(tmp_path, tiny_line):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_line, **{"verify.threshold": {"accepted_accuracy": 0.9}}))
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "runs"), "--stop-after", "train"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    # counted on the 3 validation images held out to certify (issue 28), not the 6 of the whole validation split
    warning = output.index("warning: verify.threshold.accepted_accuracy: 90 % at 95 % confidence needs at least 29 "
                           "validation images with no error, this split has 3: accepted_accuracy 0.368 is the strictest")
    assert "(counted on the 3 validation images held out of every choice to certify on" in output
    assert warning < output.index("teacher")
