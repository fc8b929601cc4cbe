"""``Predictor.predict``: one call for a path, a list of paths, a decoded image or a list of images,
on a real tiny bundle; it must decide exactly as ``predict_paths`` does on the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy import DeployError, Predictor, read_image

TOLERANCE = 1e-6  # same preprocessing and the same runtime: only batch arithmetic may differ


@pytest.fixture(scope="module")
def predictor(finished_run) -> Predictor:
    return Predictor.from_bundle(finished_run / "bundle", "onnx")


@pytest.fixture(scope="module")
def paths(tiny_line) -> list[Path]:
    """Five images from different classes, larger than the model input so resizing is exercised."""
    return sorted(tiny_line.rglob("*.png"))[::4][:5]


@pytest.fixture(scope="module")
def expected(predictor, paths):
    return predictor.predict_paths(paths)


def assert_same_decisions(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.label, g.abstain, g.runtime) == (w.label, w.abstain, w.runtime)
        assert abs(g.confidence - w.confidence) <= TOLERANCE


def test_the_tiny_bundle_is_gray(predictor):
    """The array cases below assume a 1-channel bundle (the conftest recipe's channels: gray)."""
    assert predictor.manifest.preprocess.channels == "gray"


@pytest.mark.parametrize("as_type", [str, Path])
def test_one_path_gives_a_list_of_one(predictor, paths, expected, as_type):
    got = predictor.predict(as_type(paths[0]))
    assert isinstance(got, list)
    assert_same_decisions(got, expected[:1])
    assert got[0].path == str(paths[0])


@pytest.mark.parametrize("container", [list, tuple])
def test_a_list_of_paths_keeps_the_order(predictor, paths, expected, container):
    got = predictor.predict(container(str(p) for p in paths))
    assert_same_decisions(got, expected)
    assert [d.path for d in got] == [str(p) for p in paths]


def test_a_list_of_paths_in_small_batches(predictor, paths, expected):
    assert_same_decisions(predictor.predict(paths, batch_size=2), expected)


@pytest.mark.parametrize("layout", ["HxW", "HxWx1"])
def test_one_image_gives_a_list_of_one(predictor, paths, expected, layout):
    image = read_image(paths[0], "gray")
    if layout == "HxW":
        image = image[:, :, 0]
    got = predictor.predict(image)
    assert isinstance(got, list)
    assert_same_decisions(got, expected[:1])
    assert got[0].path is None


@pytest.mark.parametrize("batch_size", [32, 2])
def test_a_list_of_images_matches_the_files(predictor, paths, expected, batch_size):
    images = [read_image(p, "gray") for p in paths]
    images[1] = images[1][:, :, 0]  # layouts may differ within one list
    assert_same_decisions(predictor.predict(images, batch_size=batch_size), expected)


def test_an_empty_list_gives_no_decisions(predictor):
    assert predictor.predict([]) == []


def test_a_list_mixing_paths_and_images_is_refused(predictor, paths):
    image = np.zeros((48, 48), np.uint8)
    with pytest.raises(DeployError) as info:
        predictor.predict([str(paths[0]), image])
    assert str(info.value) == (
        f"predict: the list mixes paths and images (item 0: the path {str(paths[0])!r}, "
        "item 1: a uint8 array of shape (48, 48)); pass one kind per call"
    )


@pytest.mark.parametrize("source, given", [
    (42, "got int 42"),
    ([b"part.png"], "item 0 of the list is bytes b'part.png'"),
])
def test_an_unsupported_input_is_named(predictor, source, given):
    with pytest.raises(DeployError) as info:
        predictor.predict(source)
    assert str(info.value) == (
        f"predict: unsupported input ({given}); pass a path (str or Path), "
        "a decoded uint8 image (numpy HxW or HxWxC) or a list of either"
    )


def test_an_image_with_the_wrong_channels_is_refused_not_converted(predictor):
    with pytest.raises(DeployError) as info:
        predictor.predict(np.zeros((48, 48, 3), np.uint8))
    assert str(info.value) == (
        "image 0: a uint8 array of shape (48, 48, 3) has 3 channel(s), the bundle expects gray (1); "
        "convert it first, e.g. deploy.read_image(path, 'gray')"
    )


def test_a_float_image_is_refused(predictor):
    with pytest.raises(DeployError, match=r"^image 1: a float32 array of shape \(48, 48\); expected uint8 pixels"):
        predictor.predict([np.zeros((48, 48), np.uint8), np.zeros((48, 48), np.float32)])
