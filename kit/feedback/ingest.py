"""``kit ingest QUEUE_DIR/queue.csv --recipe R``: reviewed parts become training data of the line.

Takes the rows of a review queue (``deploy review-queue``) whose ``label`` a person filled in, and
adds their images to the recipe's data: image folders get ``<root>/<label>/reviewed-<day>/``; a
manifest layout gets ``<root>/reviewed-<day>/<label>/`` and new manifest rows (split ``train``
when the manifest has a split column); explicit split folders get the new images in the training
folder. The next ``kit run`` picks them up.

Refused, one line each (the other rows still land): a label that is not a class of the recipe, an
image missing or changed since it was queued, and a label that contradicts the label of the same
image (same sha256) already in the data or earlier in the CSV. Exact duplicates of images already
in the data are dropped, so a second ingest of the same CSV adds nothing.

Nothing half-copied: every image is first copied into a hidden staging folder under the data root
and checked; only then are the files renamed into place (same file system: each rename is atomic)
and the manifest replaced atomically.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kit.data.index import class_folders, images_in
from kit.errors import DataError, KitError
from kit.io import write_text_atomic
from kit.recipe import load_recipe
from kit.recipe.schema import Recipe


class IngestError(KitError):
    """The review queue cannot be ingested as given."""


@dataclass
class IngestResult:
    added: list[dict[str, str]]  # path (in the data), label, sha256
    refused: list[str]  # one line per refused row
    duplicates: int  # rows whose image is already in the data with that label
    unreviewed: int  # rows with no label yet
    destination: Path | None = None
    manifest: Path | None = None
    by_label: dict[str, int] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _line_data(recipe: Recipe) -> tuple[list[str], dict[str, tuple[str, str]], Path, Path | None]:
    """(classes, {sha256: (label, path)} of every image in the data, the folder class subfolders go in, manifest)."""
    data = recipe.data
    root = recipe.resolve_path(data.root)
    existing: dict[str, tuple[str, str]] = {}
    if data.split_folders is not None:
        classes = list(data.classes or class_folders(root / data.split_folders.train, None, "data.split_folders.train"))
        for split in ("train", "val", "test"):
            folder = root / getattr(data.split_folders, split)
            for c in classes:
                for p in images_in(folder / c) if (folder / c).is_dir() else []:
                    existing.setdefault(_sha256(p), (c, str(p)))
        return classes, existing, root / data.split_folders.train, None
    if data.layout == "manifest":
        manifest = recipe.resolve_path(data.manifest or "")
        if not manifest.is_file():
            raise DataError(f"data.manifest: file not found: {manifest}")
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
        classes = list(data.classes or sorted({(r.get("label") or "").strip() for r in rows} - {""}))
        for r in rows:
            p = root / (r.get("path") or "").strip()
            if p.is_file():
                existing.setdefault(_sha256(p), ((r.get("label") or "").strip(), str(p)))
        return classes, existing, root, manifest
    classes = list(data.classes or class_folders(root, None, "data.root"))
    for c in classes:
        for p in images_in(root / c) if (root / c).is_dir() else []:
            existing.setdefault(_sha256(p), (c, str(p)))
    return classes, existing, root, None


def ingest_queue(queue_csv: str | Path, recipe_path: str | Path, day: str | None = None) -> IngestResult:
    """Add the reviewed rows of ``queue_csv`` to the line's data (see the module docstring)."""
    queue_csv = Path(queue_csv)
    if not queue_csv.is_file():
        raise IngestError(f"{queue_csv}: review queue not found; make one with `deploy review-queue`")
    # Only the recipe's data section is read: the library look-ups (timm architectures, published weights,
    # albumentations views) are left to `kit run`, so ingesting runs where torch is not installed.
    recipe = load_recipe(recipe_path, check=False)
    classes, existing, class_root, manifest = _line_data(recipe)
    day = day or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    with queue_csv.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        for needed in ("path", "label"):
            if needed not in columns:
                raise IngestError(f"{queue_csv}: missing column {needed!r} (columns: {', '.join(columns) or 'none'}); "
                                  "expected the queue.csv that `deploy review-queue` writes")
        rows = list(reader)

    refused: list[str] = []
    accepted: list[tuple[Path, str, str]] = []  # (source, label, sha256)
    in_batch: dict[str, tuple[str, int]] = {}
    duplicates = unreviewed = 0
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip()
        where = f"{queue_csv}:{line}"
        if not label:
            unreviewed += 1
            continue
        if label not in classes:
            refused.append(f"{where}: label {label!r} is not a class of the line (classes: {', '.join(classes)})")
            continue
        source = Path((row.get("path") or "").strip())
        source = source if source.is_absolute() else queue_csv.parent / source
        if not source.is_file():
            refused.append(f"{where}: image not found: {source}")
            continue
        sha = _sha256(source)
        if row.get("sha256") and row["sha256"].strip().lower() != sha:
            refused.append(f"{where}: {source} changed since it was queued (sha256 {sha[:12]}..., queued as {row['sha256'][:12]}...)")
            continue
        if sha in existing:
            known_label, known_path = existing[sha]
            if known_label != label:
                refused.append(f"{where}: label {label!r} contradicts the line's label {known_label!r} of the same image ({known_path})")
            else:
                duplicates += 1
            continue
        if sha in in_batch:
            first_label, first_line = in_batch[sha]
            if first_label != label:
                refused.append(f"{where}: label {label!r} contradicts line {first_line} of this file ({first_label!r}) for the same image")
                accepted = [a for a in accepted if a[2] != sha]  # neither label lands: a person must decide
                refused.append(f"{queue_csv}:{first_line}: withdrawn: line {line} labels the same image {label!r}")
                in_batch[sha] = ("", line)
            else:
                duplicates += 1
            continue
        in_batch[sha] = (label, line)
        accepted.append((source, label, sha))

    result = IngestResult([], refused, duplicates, unreviewed)
    if not accepted:
        return result
    folder = f"reviewed-{day}"
    root = recipe.resolve_path(recipe.data.root)
    staging = root / f".ingest-{day}-{datetime.now(timezone.utc):%H%M%S%f}.partial"
    placed: list[tuple[Path, Path, str, str]] = []  # (staged, final, label, sha)
    try:
        for source, label, sha in accepted:
            rel = (Path(folder) / label if manifest is not None else Path(label) / folder) / f"{sha[:16]}{source.suffix.lower()}"
            staged = staging / rel
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staged)
            if _sha256(staged) != sha:
                raise IngestError(f"{source}: the copy in {staged} differs from the original; nothing was added")
            placed.append((staged, class_root / rel, label, sha))
        for staged, final, _, _ in placed:
            final.parent.mkdir(parents=True, exist_ok=True)
            staged.replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if manifest is not None:
        _append_manifest(manifest, root, [(final, label) for _, final, label, _ in placed])
    result.added = [{"path": str(final), "label": label, "sha256": sha} for _, final, label, sha in placed]
    result.destination = class_root
    result.manifest = manifest
    result.by_label = {c: sum(1 for a in result.added if a["label"] == c) for c in classes if any(a["label"] == c for a in result.added)}
    return result


def _append_manifest(manifest: Path, root: Path, new: list[tuple[Path, str]]) -> None:
    """The manifest with the new rows appended (split ``train`` where the manifest has a split column), atomically."""
    text = manifest.read_text(encoding="utf-8-sig")
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        columns = list(csv.DictReader(fh).fieldnames or [])
    lines = []
    for path, label in new:
        row: dict[str, Any] = {"path": path.relative_to(root).as_posix(), "label": label, "split": "train"}
        lines.append(",".join(_csv_cell(str(row.get(c, ""))) for c in columns))
    if text and not text.endswith("\n"):
        text += "\n"
    write_text_atomic(manifest, text + "\n".join(lines) + "\n")


def _csv_cell(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(ch in value for ch in ',"\n') else value
