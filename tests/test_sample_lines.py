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
                             generate_line, render_sample_image, render_sample_part, render_sparse_image)

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


def test_the_committed_sample_line_is_reproduced_byte_for_byte(tmp_path):
    generate_line("sample", tmp_path / "sample")
    assert _files(tmp_path / "sample") == _files(REPO / "sample_data" / "sample_line")
    assert _files(tmp_path / "sample_masks") == _files(REPO / "sample_data" / "sample_line_masks")


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
