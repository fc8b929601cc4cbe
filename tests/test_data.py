"""Indexing, splitting, decoding: real files, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy.errors import ImageReadError
from deploy.preprocess import read_image
from kit.data import decode_line, index_line, preprocess_spec
from kit.errors import DataError
from kit.recipe import load_recipe
from tests.conftest import tiny_recipe_dict, write_recipe


def _copy_line(tiny_line: Path, tmp_path: Path) -> Path:
    root = tmp_path / "line"
    shutil.copytree(tiny_line, root)
    return root


def _recipe(tmp_path: Path, root: Path, **overrides):
    return load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(root, **overrides)))


def test_stratified_split_is_deterministic_and_complete(tmp_path, tiny_line):
    recipe = _recipe(tmp_path, tiny_line)
    a, b = index_line(recipe), index_line(recipe)
    assert [(s.path, s.split) for s in a.samples] == [(s.path, s.split) for s in b.samples]
    assert a.classes == ["dent", "ok", "scratch"]
    counts = a.counts()
    for name in a.classes:
        assert all(counts[split][name] >= 1 for split in ("train", "val", "test"))
    assert sum(sum(c.values()) for c in counts.values()) == 20


def test_duplicates_are_dropped_before_splitting(tmp_path, tiny_line):
    root = _copy_line(tiny_line, tmp_path)
    shutil.copy(root / "ok" / "ok_0000.png", root / "ok" / "copy of ok.png")
    index = index_line(_recipe(tmp_path, root))
    assert len(index.samples) == 20
    assert [d.name for d, _ in index.duplicates_dropped] == ["ok_0000.png"] or [d.name for d, _ in index.duplicates_dropped] == ["copy of ok.png"]


def test_duplicate_with_conflicting_label_is_an_error(tmp_path, tiny_line):
    root = _copy_line(tiny_line, tmp_path)
    shutil.copy(root / "ok" / "ok_0000.png", root / "dent" / "zz.png")
    with pytest.raises(DataError, match=r"identical to .* but labelled 'ok' vs 'dent'"):
        index_line(_recipe(tmp_path, root))


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"^data.root: folder not found: .*nowhere$"):
        index_line(_recipe(tmp_path, tmp_path / "nowhere"))


def test_empty_class_folder(tmp_path, tiny_line):
    root = _copy_line(tiny_line, tmp_path)
    (root / "stain").mkdir()
    with pytest.raises(DataError, match=r"^data.root: class folder 'stain' has no images \(.png"):
        index_line(_recipe(tmp_path, root))


def test_single_class(tmp_path, tiny_line):
    root = tmp_path / "one"
    shutil.copytree(tiny_line / "ok", root / "ok")
    with pytest.raises(DataError, match=r"found only one class \('ok'\)"):
        index_line(_recipe(tmp_path, root))


def test_corrupt_image_names_the_file(tmp_path, tiny_line):
    root = _copy_line(tiny_line, tmp_path)
    bad = root / "dent" / "dent_0001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    recipe = _recipe(tmp_path, root)
    with pytest.raises(DataError, match=rf"^{bad}: not a decodable image .*1 of 20 images unreadable"):
        decode_line(index_line(recipe), recipe, preprocess_spec(recipe))


def test_unreadable_images_are_skipped_below_the_limit(tmp_path, tiny_line):
    root = _copy_line(tiny_line, tmp_path)
    (root / "ok" / "ok_0003.png").write_bytes(b"")
    recipe = _recipe(tmp_path, root, **{"data.max_unreadable_fraction": 0.1})
    splits, unreadable = decode_line(index_line(recipe), recipe, preprocess_spec(recipe))
    assert len(unreadable) == 1 and "file is empty (0 bytes)" in unreadable[0]
    assert sum(len(s) for s in splits.values()) == 19


def test_manifest_rejects_paths_outside_the_root(tmp_path, tiny_line):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nok/ok_0000.png,ok\n../../etc/passwd,ok\n", encoding="utf-8")
    recipe = _recipe(tmp_path, tiny_line, **{"data.layout": "manifest", "data.manifest": str(manifest)})
    with pytest.raises(DataError, match=r"m.csv:3: path '../../etc/passwd' is outside data.root"):
        index_line(recipe)


def test_manifest_missing_column(tmp_path, tiny_line):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\nok/ok_0000.png,ok\n", encoding="utf-8")
    recipe = _recipe(tmp_path, tiny_line, **{"data.layout": "manifest", "data.manifest": str(manifest)})
    with pytest.raises(DataError, match=r"m.csv: missing column 'path' \(columns: file, label\)"):
        index_line(recipe)


def test_manifest_with_explicit_splits(tmp_path, tiny_line):
    rows = ["path,label,split"]
    for cls in ("ok", "dent"):
        for i, split in enumerate(["train", "train", "train", "val", "test"]):
            rows.append(f"{cls}/{cls}_{i:04d}.png,{cls},{split}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = _recipe(tmp_path, tiny_line, **{"data.layout": "manifest", "data.manifest": str(manifest)})
    index = index_line(recipe)
    assert index.classes == ["dent", "ok"]
    assert index.counts()["train"] == {"dent": 3, "ok": 3} and index.counts()["test"] == {"dent": 1, "ok": 1}


def test_read_image_converts_16bit_rgba_and_colour(tmp_path):
    gray16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    out = read_image(tmp_path / "g16.png", "gray")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 1)
    assert out[-1, -1, 0] == round(int(gray16[-1, -1]) / 257)
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's BGR(A) order
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgb = read_image(tmp_path / "rgba.png", "rgb")
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == (200, 0, 0)
    gray = read_image(tmp_path / "rgba.png", "gray")
    assert gray.shape == (8, 8, 1) and gray[0, 0, 0] == round(0.299 * 200)


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text.png: not a decodable image"):
        read_image(tmp_path / "text.png", "gray")
    with pytest.raises(ImageReadError, match=r"missing.png: cannot read file"):
        read_image(tmp_path / "missing.png", "gray")


def test_unicode_and_spaces_in_names(tmp_path, tiny_line):
    root = tmp_path / "lïne data"
    shutil.copytree(tiny_line / "ok", root / "gut $ok")
    shutil.copytree(tiny_line / "dent", root / "Delle (ß)")
    index = index_line(_recipe(tmp_path, root))
    assert index.classes == ["Delle (ß)", "gut $ok"]
    recipe = _recipe(tmp_path, root)
    splits, _ = decode_line(index, recipe, preprocess_spec(recipe))
    assert splits["train"].images.shape[1:] == (32, 32, 1)


def test_split_csv_lists_only_the_images_the_run_used(tmp_path, tiny_line):
    import csv

    from kit.rundir import write_split

    root = _copy_line(tiny_line, tmp_path)
    (root / "ok" / "ok_0003.png").write_bytes(b"")
    recipe = _recipe(tmp_path, root, **{"data.max_unreadable_fraction": 0.1})
    index = index_line(recipe)
    splits, _ = decode_line(index, recipe, preprocess_spec(recipe))
    write_split(tmp_path, index.classes, splits)
    with (tmp_path / "split.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 19 and not any(r["path"].endswith("ok_0003.png") for r in rows)
