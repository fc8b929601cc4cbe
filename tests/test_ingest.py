"""kit ingest: reviewed queue rows become the line's data; bad rows are refused one line each."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.feedback.ingest import ingest_queue
from tests.conftest import tiny_recipe_dict, write_recipe


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((20, 20), value, np.uint8)
    img[3, 3] = 255 - value
    cv2.imwrite(str(path), img)
    return path


def reviewed_line(tmp_path: Path, reviewed: list[tuple[str, int, str]]) -> tuple[Path, Path, Path, list[dict]]:
    """An image-folder line (dent, ok, scratch: 3 images each), its recipe, and a queue folder holding one image per
    ``(name, grey value, label)`` with its queue row: (data, recipe, queue folder, rows)."""
    data = tmp_path / "data"
    for i, cls in enumerate(["dent", "ok", "scratch"]):
        for j in range(3):
            _png(data / cls / f"{cls}{j}.png", 10 + 30 * i + j)
    recipe = write_recipe(tmp_path / "line.yaml", tiny_recipe_dict(data))
    queue = tmp_path / "queue"
    rows = []
    for name, value, label in reviewed:
        _png(queue / "images" / f"{name}.png", value)
        rows.append({"path": f"images/{name}.png", "label": label})
    return data, recipe, queue, rows


def write_queue_csv(queue: Path, rows: list[dict]) -> Path:
    with (queue / "queue.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "sha256", "part_id", "model_label", "reason", "label"], restval="")
        w.writeheader()
        w.writerows(rows)
    return queue / "queue.csv"


@pytest.fixture
def line(tmp_path):
    """An image-folder line (dent, ok, scratch) and a reviewed queue: 3 good rows, an unknown label, a label that
    contradicts the data, a row already in the data, an unreviewed row."""
    data, recipe, queue, rows = reviewed_line(
        tmp_path, [("a", 200, "dent"), ("b", 201, "ok"), ("c", 202, "scratch"), ("d", 203, "smudge"), ("e", 204, "")])
    shutil.copy(data / "ok" / "ok0.png", queue / "images" / "f.png")
    rows.append({"path": "images/f.png", "label": "scratch"})  # the data says ok
    shutil.copy(data / "dent" / "dent1.png", queue / "images" / "g.png")
    rows.append({"path": "images/g.png", "label": "dent"})  # already in the data, same label
    return data, recipe, write_queue_csv(queue, rows)


def test_good_rows_land_bad_rows_refused_one_line_each(line):
    data, recipe, queue = line
    result = CliRunner().invoke(app, ["ingest", str(queue), "--recipe", str(recipe)])
    assert result.exit_code == 1
    refused = [l for l in result.output.splitlines() if l.startswith("refused:")]
    assert refused == [
        f"refused: {queue}:5: label 'smudge' is not a class of the line (classes: dent, ok, scratch)",
        f"refused: {queue}:7: label 'scratch' contradicts the line's label 'ok' of the same image ({data / 'ok' / 'ok0.png'})",
    ]
    assert "added 3 images (dent 1, ok 1, scratch 1); already in the data 1; not reviewed yet 1; refused 2" in result.output
    landed = sorted(p.relative_to(data).parts[:2] for p in data.rglob("reviewed-*/*.png"))
    assert [parts[0] for parts in landed] == ["dent", "ok", "scratch"]
    assert all(parts[1].startswith("reviewed-") for parts in landed)
    assert not list(data.glob(".ingest-*"))  # the staging folder is gone


def test_second_ingest_adds_nothing(line):
    data, recipe, queue = line
    first = ingest_queue(queue, recipe)
    before = sorted(data.rglob("*.png"))
    second = ingest_queue(queue, recipe)
    assert len(first.added) == 3 and len(second.added) == 0 and second.duplicates == 4
    assert sorted(data.rglob("*.png")) == before


def test_contradicting_rows_in_one_file_are_both_refused(line, tmp_path):
    data, recipe, queue = line
    shutil.copy(queue.parent / "images" / "a.png", queue.parent / "images" / "a2.png")
    with queue.open("a", newline="") as fh:
        csv.writer(fh).writerow(["images/a2.png", "", "", "", "", "ok"])
    result = ingest_queue(queue, recipe)
    assert sorted(a["label"] for a in result.added) == ["ok", "scratch"]
    assert any(line.endswith("labels the same image 'ok'") for line in result.refused)


def test_manifest_layout_appends_rows(tmp_path, line):
    data, _, queue = line
    manifest = data / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([(p.relative_to(data).as_posix(), p.parent.name) for p in sorted(data.rglob("*.png"))])
    recipe = write_recipe(tmp_path / "m.yaml", tiny_recipe_dict(data, **{"data.layout": "manifest", "data.manifest": str(manifest)}))
    result = ingest_queue(queue, recipe)
    rows = list(csv.DictReader(manifest.open()))
    assert len(result.added) == 3 and len(rows) == 9 + 3
    assert [r["label"] for r in rows[-3:]] == ["dent", "ok", "scratch"]
    assert all((data / r["path"]).is_file() and r["path"].startswith("reviewed-") for r in rows[-3:])
