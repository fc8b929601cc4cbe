"""The ``defects`` view family: a real defect where its mask says, reproducible, never a training view."""

import numpy as np
import pytest

from kit.errors import RecipeError
from kit.views import build_view, photometric_only
from kit.views.defects import KINDS, synthesize_defect


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (120 + rng.integers(0, 12, (64, 64, 1))).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_part_where_its_mask_is(kind):
    image = _texture()
    out, mask = synthesize_defect(image, np.random.default_rng(3), severity=1, kind=kind)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = np.abs(out.astype(int) - image.astype(int))[..., 0]
    assert mask.max() > 0.5
    assert changed[mask > 0.5].mean() > 5 * max(changed[mask == 0].mean(), 0.1)


def test_the_same_seed_gives_the_same_defect():
    a = synthesize_defect(_texture(), np.random.default_rng(7), 3)
    b = synthesize_defect(_texture(), np.random.default_rng(7), 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_defects_are_refused_as_a_training_view():
    with pytest.raises(RecipeError, match="anomaly.synthetic_defects"):
        build_view([{"defects": {"severity": 2}}], "views.strong", (32, 32), 1)


def test_the_cross_view_keeps_photometric_steps_only():
    pipeline = build_view([{"HorizontalFlip": {"p": 1.0}}, {"lighting": {"severity": 2, "p": 1.0}},
                           {"angle": {"severity": 2, "p": 1.0}}, {"blur": {"severity": 2, "p": 1.0}}], "v", (32, 32), 1)
    kept = [type(t).__name__ for t in photometric_only(pipeline).transforms]
    assert kept == ["RandomBrightnessContrast", "RandomGamma", "OneOf"]
