"""View presets and pipelines: every preset builds at every severity, is seeded, and acts."""

from __future__ import annotations

import numpy as np
import pytest

from kit.sample_line import render_sample_image
from kit.views import apply_view, build_view, get_preset, list_presets
from kit.views.presets import MAX_SEVERITY

IMAGE = render_sample_image("scratch", 0, size_px=64)[:, :, None]


def test_registry_lists_the_documented_presets():
    assert list_presets() == ["angle", "blur", "compression", "lighting", "noise"]
    with pytest.raises(KeyError, match="unknown view preset 'fog'; choose from angle, blur"):
        get_preset("fog")


@pytest.mark.parametrize("name", list_presets())
@pytest.mark.parametrize("severity", range(1, MAX_SEVERITY + 1))
def test_every_preset_builds_keeps_shape_and_changes_the_image(name, severity):
    view = build_view([{name: {"severity": severity, "p": 1.0}}], "views.strong", (64, 64), 1)
    changed = 0
    for seed in range(8):
        out = apply_view(view, IMAGE, seed)
        assert out.shape == IMAGE.shape and out.dtype == np.uint8
        changed += int(not np.array_equal(out, IMAGE))
    assert changed >= 6  # p=1: (almost) every draw alters the image


@pytest.mark.parametrize("name", list_presets())
def test_higher_severity_changes_the_image_more(name):
    def mean_change(severity: int) -> float:
        view = build_view([{name: {"severity": severity, "p": 1.0}}], "v", (64, 64), 1)
        return float(np.mean([np.abs(apply_view(view, IMAGE, s).astype(float) - IMAGE).mean() for s in range(24)]))

    assert mean_change(5) > mean_change(1)


def test_same_seed_same_view_different_seed_different_view():
    view = build_view([{"lighting": {"severity": 3, "p": 1.0}}, {"angle": {"severity": 3, "p": 1.0}},
                       {"noise": {"severity": 2, "p": 1.0}}], "views.strong", (64, 64), 1)
    a, b, c = apply_view(view, IMAGE, 7), apply_view(view, IMAGE, 7), apply_view(view, IMAGE, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_nested_one_of_and_rgb():
    rgb = np.repeat(IMAGE, 3, axis=2)
    view = build_view([{"OneOf": {"transforms": [{"HorizontalFlip": {}}, {"blur": {"severity": 1}}], "p": 1.0}}],
                      "views.weak", (64, 64), 3)
    assert apply_view(view, rgb, 0).shape == (64, 64, 3)


def test_empty_view_is_identity():
    view = build_view([], "views.weak", (64, 64), 1)
    np.testing.assert_array_equal(apply_view(view, IMAGE, 0), IMAGE)
