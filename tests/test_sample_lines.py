"""The synthetic lines: deterministic, the counts and sizes asked for, and (sparse) defects that are
small but visible, with a mask that says where they are."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.errors import ArgumentError
from kit.sample_line import (_DEFECTS, CLASS_COUNTS, SAMPLE_LINES, SPARSE_CLASS_COUNTS, _apply_pose, _blank_part, _pose,
                             SAMPLE_MASK_LEVEL, generate_line, generate_sparse_line, masks_dir, render_sample_image,
                             render_sample_layer, render_sample_part, render_sparse_image)

REPO = Path(__file__).resolve().parents[1]
SPARSE_DEFECTS = [c for c in SPARSE_CLASS_COUNTS if c != "ok"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize("line", sorted(SAMPLE_LINES))
def test_every_line_is_deterministic_at_its_own_size(tmp_path, line):
    spec = SAMPLE_LINES[line]
    few = {label: 2 for label in spec.class_counts}
    assert generate_line(line, tmp_path / "a", counts=few, seed=3) == few
    generate_line(line, tmp_path / "b", counts=few, seed=3)
    generate_line(line, tmp_path / "c", counts=few, seed=4)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert len(a) == 2 * len(few) and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    img = cv2.imread(str(tmp_path / "a" / "ok" / "ok_0001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (spec.size_px, spec.size_px) and img.dtype == np.uint8


# How far a regenerated line may stray from the committed one, and why. The generator is float32 OpenCV and
# numpy: the same versions on another CPU take other SIMD paths (AVX2, AVX-512, NEON), whose last bits differ.
# An image is rounded to uint8 at the end, so a last-bit difference moves a pixel by one grey level at most,
# and only where the float value sat on a .5 boundary: a handful of pixels per million. A mask is the posed
# defect layer thresholded at SAMPLE_MASK_LEVEL, so a mask pixel may flip only where that layer lies on the
# threshold to within float32 interpolation error. Anything else (a changed draw, a moved defect) fails.
MAX_GREY_LEVEL_DIFF = 1
MAX_DIFFERING_PIXEL_SHARE = 1e-4
LAYER_ON_THRESHOLD = 1e-4


def _pixels(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(root.rglob("*.png"))}


def test_the_committed_sample_line_is_reproduced(tmp_path):
    """Every committed image and mask is what the generator draws, up to the last-bit tolerance above."""
    generate_line("sample", tmp_path / "sample")
    fresh, committed = _pixels(tmp_path / "sample"), _pixels(REPO / "sample_data" / "sample_line")
    assert fresh.keys() == committed.keys() and len(fresh) == sum(CLASS_COUNTS.values())
    differing = total = 0
    for name, image in fresh.items():
        assert image.shape == committed[name].shape and image.dtype == committed[name].dtype == np.uint8, name
        diff = np.abs(image.astype(np.int16) - committed[name])
        assert diff.max() <= MAX_GREY_LEVEL_DIFF, f"{name}: differs by {diff.max()} grey levels"
        differing, total = differing + int((diff > 0).sum()), total + diff.size
    assert differing <= MAX_DIFFERING_PIXEL_SHARE * total, f"{differing} of {total} pixels differ"

    fresh_masks, committed_masks = _pixels(tmp_path / "sample_masks"), _pixels(REPO / "sample_data" / "sample_line_masks")
    assert fresh_masks.keys() == committed_masks.keys()
    assert len(fresh_masks) == sum(n for c, n in CLASS_COUNTS.items() if c != "ok")
    for name, mask in fresh_masks.items():
        assert set(np.unique(mask)) <= {0, 255}, name
        flipped = mask != committed_masks[name]
        if flipped.any():
            label, stem = name.split("/")[0], Path(name).stem
            _, layer = render_sample_layer(label, int(stem.rsplit("_", 1)[1]))
            off_threshold = np.abs(layer[flipped] - SAMPLE_MASK_LEVEL)
            assert off_threshold.max() < LAYER_ON_THRESHOLD, f"{name}: a mask pixel flipped away from the threshold"


def test_the_mask_tolerance_catches_a_real_difference():
    """The tolerance is no blanket: a mask pixel well inside the defect sits far from the threshold."""
    image, layer = render_sample_layer("scratch", 95)
    mask = layer >= SAMPLE_MASK_LEVEL
    assert mask.sum() > 10 and (image == render_sample_image("scratch", 95)).all()
    inside = np.argwhere(layer >= SAMPLE_MASK_LEVEL + 0.2)
    assert len(inside) > 0 and abs(layer[tuple(inside[0])] - SAMPLE_MASK_LEVEL) >= LAYER_ON_THRESHOLD


@pytest.mark.parametrize("label", [c for c in CLASS_COUNTS if c != "ok"])
def test_sample_masks_cover_the_rendered_defect(label):
    """The mask is where the defect changed the image: the defect's own change to the work image,
    taken through the same pose, lies (almost) all within 3 px of the mask and is far stronger
    inside it than away from it."""
    for index in range(5):
        rng, work, img = _blank_part(label, index, 0, 96, CLASS_COUNTS, "sample")
        before = img.copy()
        _DEFECTS[label](img, rng)
        change = _apply_pose(np.abs(img - before), _pose(rng, work), 96, border=cv2.BORDER_CONSTANT)
        image, mask = render_sample_part(label, index)
        assert (image == render_sample_image(label, index)).all() and mask.dtype == bool
        near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert 0 < mask.mean() < 0.5
        assert change[near].sum() >= 0.8 * change.sum()
        assert change[mask].mean() >= 5 * change[~near].mean()
    assert not render_sample_part("ok", 0)[1].any()


def test_sparse_line_is_mostly_good_parts():
    assert SPARSE_CLASS_COUNTS == {"ok": 900, "scratch": 34, "pit": 33, "crack": 33}
    assert SAMPLE_LINES["sparse"].size_px == 256 and SAMPLE_LINES["sparse"].committed_dir is None


@pytest.mark.parametrize("label", SPARSE_DEFECTS)
def test_sparse_defects_are_small_inside_the_image_and_visible(label):
    contrasts = []
    for index in range(SPARSE_CLASS_COUNTS[label]):
        img, mask = render_sparse_image(label, index)
        assert img.shape == mask.shape == (256, 256) and mask.dtype == bool
        ys, xs = np.nonzero(mask)
        assert 0 < mask.sum() < 0.01 * mask.size, "a few pixels across: well under 1 % of the image"
        assert max(np.ptp(ys), np.ptp(xs)) + 1 <= 24
        assert min(ys.min(), xs.min()) > 8 and max(ys.max(), xs.max()) < 256 - 8, "pose jitter keeps it in view"
        near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        ring = near & ~(cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
        contrasts.append(abs(float(img[mask].mean()) - float(np.median(img[ring]))))
    assert min(contrasts) > 8 and np.median(contrasts) > 20, contrasts


SPARSE_FEW = {"ok": 3, "scratch": 5, "pit": 5, "crack": 5}


@pytest.fixture(scope="module")
def sparse_few(tmp_path_factory) -> Path:
    """A few sparse parts per class as ``kit sample-data --line sparse`` writes them, masks included."""
    out = tmp_path_factory.mktemp("sparse_few") / "sparse"
    generate_sparse_line(out, counts=SPARSE_FEW)
    return out


def test_the_sparse_line_writes_a_mask_for_every_defect_image_like_the_sample_line(sparse_few):
    """``<out>_masks/<class>/<stem>.png`` for every defect image and none for ok, uint8 0/255 at the image's size,
    thresholded like the sample line's (the posed layer at least half on); the images are the ones rendered alone,
    pixel for pixel, so writing masks changed none of them."""
    images, masks = _pixels(sparse_few), _pixels(masks_dir(sparse_few))
    assert masks_dir(sparse_few) == sparse_few.with_name("sparse_masks")
    assert sorted(masks) == sorted(name for name in images if not name.startswith("ok/"))
    assert len(masks) == sum(n for c, n in SPARSE_FEW.items() if c != "ok")
    for name, image in images.items():
        label, index = name.split("/")[0], int(Path(name).stem.rsplit("_", 1)[1])
        rendered, mask = render_sparse_image(label, index)
        assert (image == rendered).all(), name
        if label != "ok":
            assert masks[name].shape == image.shape and masks[name].dtype == np.uint8, name
            assert set(np.unique(masks[name])) == {0, 255} and ((masks[name] == 255) == mask).all(), name


def test_a_sparse_mask_lies_on_the_defect(sparse_few):
    """Read back from the files: the image departs from its own good texture (a 9 px median, which a defect a few
    px across does not survive) far more on the mask's pixels than away from them."""
    ratios = []
    for path in sorted(masks_dir(sparse_few).rglob("*.png")):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) > 0
        image = cv2.imread(str(sparse_few / path.relative_to(masks_dir(sparse_few))), cv2.IMREAD_UNCHANGED)
        departure = np.abs(image.astype(np.float32) - cv2.medianBlur(image, 9))
        near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ratios.append(departure[mask].mean() / departure[~near].mean())
    assert min(ratios) > 1.5 and np.median(ratios) > 3, ratios


def test_sparse_ok_images_have_an_empty_mask():
    for index in range(5):
        img, mask = render_sparse_image("ok", index)
        assert img.shape == (256, 256) and not mask.any()


def test_sparse_mask_follows_the_size():
    img, mask = render_sparse_image("crack", 0, size_px=128)
    assert img.shape == mask.shape == (128, 128) and mask.any()


def test_unknown_sparse_class_is_refused():
    with pytest.raises(ValueError, match=r"unknown sparse class 'dent'; choose from \['crack', 'ok', 'pit', 'scratch'\]"):
        render_sparse_image("dent", 0)


def test_unknown_line_lists_the_choices(tmp_path):
    with pytest.raises(ArgumentError) as info:
        generate_line("dense", tmp_path)
    assert str(info.value) == "line: unknown line 'dense'; choose from sample, sparse"
    result = CliRunner().invoke(app, ["sample-data", "--line", "dense", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --line: unknown line 'dense'; choose from sample, sparse"
    assert not (tmp_path / "x").exists()


def test_a_line_that_is_never_committed_needs_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sample-data", "--line", "sparse"])
    assert result.exit_code == 1
    assert result.output.strip() == ("error: --line: the 'sparse' line is made on the fly and never committed; "
                                     "name the folder to write it into")
    assert not any(tmp_path.iterdir())


def test_cli_writes_the_default_sparse_line_at_a_chosen_size(tmp_path):
    out = tmp_path / "sparse"
    result = CliRunner().invoke(app, ["sample-data", "--line", "sparse", str(out), "--size", "128"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"1000 images in {out}: {SPARSE_CLASS_COUNTS}"
    assert {d.name: len(list(d.glob("*.png"))) for d in out.iterdir()} == SPARSE_CLASS_COUNTS
    assert cv2.imread(str(out / "pit" / "pit_0000.png"), cv2.IMREAD_UNCHANGED).shape == (128, 128)
    masks = sorted(masks_dir(out).rglob("*.png"))
    assert len(masks) == 100 and cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (128, 128)
