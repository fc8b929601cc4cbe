"""Find the line's labelled images and split them: image folders or a CSV manifest.

Exact duplicate files are dropped before splitting (by content hash), because a copy in
train and another in test inflates every accuracy the kit reports.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.preprocess import IMAGE_SUFFIXES
from kit.errors import DataError, RecipeError
from kit.rundir import CERTIFY_SPLIT
from kit.recipe.schema import DataConfig, Recipe

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    split: str


@dataclass
class LineIndex:
    classes: list[str]
    samples: list[Sample]
    duplicates_dropped: list[tuple[Path, Path]] = field(default_factory=list)  # (dropped, kept)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} (the certification split too, when the run has one)"""
        out = {}
        for split in SPLITS + ((CERTIFY_SPLIT,) if self.split(CERTIFY_SPLIT) else ()):
            c = Counter(self.classes[s.label] for s in self.split(split))
            out[split] = {name: c.get(name, 0) for name in self.classes}
        return out


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def class_folders(root: Path, classes: list[str] | None, where: str) -> list[str]:
    if not root.is_dir():
        raise DataError(f"{where}: folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        loose = [p for p in root.iterdir() if _is_image(p)]
        hint = " (images must sit in one subfolder per class)" if loose else ""
        raise DataError(f"{where}: no class folders in {root}{hint}")
    if classes is None:
        return found
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"data.classes: no folder for class {missing[0]!r} in {root} (folders: {', '.join(found)})")
    return list(classes)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _index_imagefolder(root: Path, classes: list[str], where: str) -> list[tuple[Path, int]]:
    items = []
    for label, name in enumerate(classes):
        paths = images_in(root / name)
        if not paths:
            raise DataError(
                f"{where}: class folder {name!r} has no images ({', '.join(IMAGE_SUFFIXES)}): {root / name}"
            )
        items += [(p, label) for p in paths]
    return items


def _index_manifest(root: Path, manifest: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int, str | None]]]:
    if not manifest.is_file():
        raise DataError(f"data.manifest: file not found: {manifest}")
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root}")
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        for required in ("path", "label"):
            if required not in columns:
                raise DataError(f"{manifest}: missing column {required!r} (columns: {', '.join(columns) or 'none'}); expected path,label[,split]")
        rows = list(reader)
    if not rows:
        raise DataError(f"{manifest}: no rows")
    labels = classes if classes is not None else sorted({r["label"].strip() for r in rows})
    lookup = {name: i for i, name in enumerate(labels)}
    root_resolved = root.resolve()
    items = []
    for line_no, row in enumerate(rows, start=2):
        rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        where = f"{manifest}:{line_no}"
        path = (root / rel).resolve()
        if not rel or not path.is_relative_to(root_resolved):
            raise DataError(f"{where}: path {rel!r} is outside data.root ({root_resolved})")
        if label not in lookup:
            raise DataError(f"{where}: unknown label {label!r} (classes: {', '.join(labels)})")
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{where}: split must be one of {', '.join(SPLITS)} (got {split!r})")
        if not path.is_file():
            raise DataError(f"{where}: image not found: {path}")
        items.append((path, lookup[label], split))
    for i, name in enumerate(labels):
        if not any(it[1] == i for it in items):
            raise DataError(f"{manifest}: class {name!r} has no rows")
    return list(labels), items


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dedupe(items: list[tuple], classes: list[str]) -> tuple[list[tuple], list[tuple[Path, Path]]]:
    seen: dict[str, tuple] = {}
    kept, dropped = [], []
    for item in items:
        digest = file_hash(item[0])
        if digest in seen:
            first = seen[digest]
            if first[1] != item[1]:
                raise DataError(
                    f"{item[0]}: identical to {first[0]} but labelled {classes[item[1]]!r} vs {classes[first[1]]!r}; fix the label"
                )
            dropped.append((item[0], first[0]))
            continue
        seen[digest] = item
        kept.append(item)
    return kept, dropped


def stratified_split(labels: list[int], cfg_train: float, cfg_val: float, seed: int) -> list[str]:
    """Per class: shuffle with the seed, then cut train/val/test; each split gets at least one."""
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        rng.shuffle(idx)
        n = len(idx)
        n_val = max(1, int(round(n * cfg_val)))
        n_train = max(1, min(n - n_val - 1, int(round(n * cfg_train))))
        for rank, i in enumerate(idx):
            out[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def carve_certify(labels: list[int], splits: list[str], share: float, seed: int) -> list[str]:
    """Per class, ``share`` of its validation images (rounded half up, leaving at least one to choose with) become
    the certification split. The checkpoint, the temperature and the teacher check are chosen on the rest of
    validation, so the operating threshold is certified on images that chose nothing. Deterministic for the seed."""
    if share <= 0:
        return list(splits)
    rng = np.random.default_rng(seed + 2)
    out = list(splits)
    for label in sorted(set(labels)):
        idx = [i for i, (lab, split) in enumerate(zip(labels, splits)) if lab == label and split == "val"]
        rng.shuffle(idx)
        for i in idx[:min(int(len(idx) * share + 0.5), len(idx) - 1)]:
            out[i] = CERTIFY_SPLIT
    return out


def held_out_defects(labels: list[int], splits: list[str], ok_label: int, val: float, test: float, seed: int) -> list[str]:
    """Anomaly mode learns from good parts only: a defect image in train would be wasted. Each defect class is
    split between val and test instead, in the recipe's val : test proportion (a class of one image goes to test:
    the figures a person reads come from test). The hybrid's namer takes its class centres from the validation
    defects, so test still measures its naming on parts it never saw."""
    rng = np.random.default_rng(seed + 1)
    out = list(splits)
    for label in sorted(set(labels) - {ok_label}):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val / (val + test))) if len(idx) > 1 else 0
        for rank, i in enumerate(idx):
            out[i] = "val" if rank < n_val else "test"
    return out


def index_line(recipe: Recipe) -> LineIndex:
    """All labelled samples of the line with their split, validated."""
    data: DataConfig = recipe.data
    root = recipe.resolve_path(data.root)
    if data.split_folders is not None:
        classes = data.classes
        items3 = []
        for split in SPLITS:
            folder = root / getattr(data.split_folders, split)
            split_classes = class_folders(folder, classes, f"data.split_folders.{split}")
            classes = classes or split_classes
            items3 += [(p, lab, split) for p, lab in _index_imagefolder(folder, split_classes, f"data.split_folders.{split}")]
        assert classes is not None
    elif data.layout == "manifest":
        classes, items3 = _index_manifest(root, recipe.resolve_path(data.manifest or ""), data.classes)
    else:
        classes = class_folders(root, data.classes, "data.root")
        items3 = [(p, lab, None) for p, lab in _index_imagefolder(root, classes, "data.root")]
    anomaly = recipe.task == "anomaly"
    if len(classes) < 2 and not anomaly:
        raise DataError(f"data.root: found only one class ({classes[0]!r}); a classifier needs at least two class folders")
    problem = recipe.class_name_problem(list(classes))
    if problem:
        raise RecipeError(problem)
    dropped: list[tuple[Path, Path]] = []
    if data.dedupe:
        items3, dropped = _dedupe(items3, classes)
    counts = Counter(it[1] for it in items3)
    for label, name in enumerate(classes):
        if anomaly and name != recipe.line.ok_class:
            continue  # anomaly mode: any number of defect images, none included
        if counts.get(label, 0) < data.min_images_per_class:
            raise DataError(
                f"data: class {name!r} has {counts.get(label, 0)} image(s); at least data.min_images_per_class = {data.min_images_per_class} are needed"
            )
    preset_splits = [it[2] for it in items3]
    if all(s is None for s in preset_splits):
        splits = stratified_split([it[1] for it in items3], data.split.train, data.split.val, data.split.seed)
        if anomaly:
            ok = classes.index(recipe.line.ok_class)
            splits = held_out_defects([it[1] for it in items3], splits, ok, data.split.val, data.split.test, data.split.seed)
    elif any(s is None for s in preset_splits):
        raise DataError(f"{data.manifest}: the split column must be filled on every row or on none")
    else:
        splits = [s for s in preset_splits if s is not None]
    if not anomaly:  # anomaly mode certifies its false rejects on good validation parts alone (kit.anomaly.verify)
        splits = carve_certify([it[1] for it in items3], splits, recipe.verify.certify_share, data.split.seed)
    samples = [Sample(path=it[0], label=it[1], split=sp) for it, sp in zip(items3, splits)]
    for split in SPLITS:
        if not any(s.split == split for s in samples):
            raise DataError(f"data: the {split} split is empty; add images or change data.split")
    return LineIndex(classes=list(classes), samples=samples, duplicates_dropped=dropped)
