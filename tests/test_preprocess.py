"""One preprocessing implementation: the training data path equals the edge runtime's."""

from __future__ import annotations

import numpy as np

from deploy.preprocess import PreprocessSpec, load_and_preprocess, prepare_image, preprocess
from kit.data import decode_line, index_line, preprocess_spec
from kit.recipe import load_recipe
from tests.conftest import tiny_recipe_dict, write_recipe


def test_training_eval_tensors_equal_runtime_preprocessing(tmp_path, tiny_line):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_line, **{"data.roi": [4, 2, 40, 44]})))
    spec = preprocess_spec(recipe)
    splits, _ = decode_line(index_line(recipe), recipe, spec)
    test = splits["test"]
    training_side = test.tensors(spec).numpy()
    edge_side = np.stack([load_and_preprocess(s.path, spec) for s in test.samples])
    assert training_side.dtype == edge_side.dtype == np.float32
    np.testing.assert_array_equal(training_side, edge_side)


def test_spec_round_trips_through_the_manifest_dict():
    spec = PreprocessSpec(image_size=(48, 64), channels="rgb", roi=(1, 2, 30, 40), interpolation="linear",
                          mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_normalisation_values():
    spec = PreprocessSpec(image_size=(2, 2), channels="gray", mean=(0.5,), std=(0.25,))
    img = np.array([[[0], [255]], [[128], [64]]], dtype=np.uint8)
    out = preprocess(img, spec)
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out[0], (img[:, :, 0] / 255.0 - 0.5) / 0.25, rtol=1e-6)


def test_roi_outside_the_image_is_an_error():
    import pytest

    from deploy.errors import ImageReadError

    spec = PreprocessSpec(image_size=(8, 8), roi=(10, 0, 20, 20))
    with pytest.raises(ImageReadError, match=r"ROI \(x=10, y=0, w=20, h=20\) lies outside the 16x16 image"):
        prepare_image(np.zeros((16, 16, 1), np.uint8), spec)
