"""``kit init-line``: a commented, valid recipe scaffolded from a folder of labelled images.

It looks at the data the way an engineer would before writing a recipe: which classes, how many
images each, how imbalanced, exact duplicates, image sizes and colour. The recipe it writes loads
and runs as is; every choice it made is explained in a comment next to the field.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.errors import ImageReadError
from deploy.preprocess import read_image
from kit.data.index import SPLITS, class_folders, file_hash, images_in
from kit.errors import ArgumentError, DataError
from kit.io import write_text_atomic
from kit.recipe import load_recipe

SIZE_PROBES = 64  # images opened per class to learn sizes and colour
CPU_SIZE_CAP = 96  # px: keeps the default run within minutes on a laptop CPU
SMALL_DATA = 1000  # images: below this a smaller teacher with AdamW trains more reliably from scratch


@dataclass
class LineSurvey:
    root: Path
    classes: list[str]
    counts: dict[str, int]
    split_folders: bool
    median_hw: tuple[int, int]
    channels: str
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _is_colour(img: np.ndarray) -> bool:
    if img.shape[2] == 1:
        return False
    spread = np.abs(img.astype(np.int16) - img.mean(axis=2, keepdims=True)).mean()
    return bool(spread > 2.0)  # R, G and B differ: a real colour camera, not grey stored as RGB


def survey_line(root: str | Path) -> LineSurvey:
    root = Path(root).resolve()
    split_folders = root.is_dir() and all((root / s).is_dir() for s in SPLITS)
    bases = [root / s for s in SPLITS] if split_folders else [root]
    classes = class_folders(bases[0], None, "IMAGES_DIR")
    counts: Counter[str] = Counter()
    paths_by_class: dict[str, list[Path]] = {}
    for base in bases:
        for name in class_folders(base, classes if base != bases[0] else None, "IMAGES_DIR"):
            paths = images_in(base / name)
            counts[name] += len(paths)
            paths_by_class.setdefault(name, []).extend(paths)
    empty = [c for c in classes if counts[c] == 0]
    if empty:
        raise DataError(f"IMAGES_DIR: class folder {empty[0]!r} has no images: {root / empty[0]}")
    if len(classes) < 2:
        raise DataError(f"IMAGES_DIR: found only one class ({classes[0]!r}) in {root}; a classifier needs two or more")

    sizes, colour, unreadable = [], [], []
    rng = np.random.default_rng(0)
    for name in classes:
        paths = paths_by_class[name]
        for i in rng.permutation(len(paths))[:SIZE_PROBES]:
            try:
                img = read_image(paths[i], "rgb")
            except ImageReadError as exc:
                unreadable.append(str(exc))
                continue
            sizes.append(img.shape[:2])
            colour.append(_is_colour(img))
    if not sizes:
        raise DataError(f"IMAGES_DIR: none of the sampled images could be read ({unreadable[0]})")
    median_hw = tuple(int(v) for v in np.median(np.array(sizes), axis=0))

    seen: dict[str, Path] = {}
    duplicates = []
    for name in classes:
        for path in paths_by_class[name]:
            digest = file_hash(path)
            if digest in seen:
                duplicates.append((path, seen[digest]))
            else:
                seen[digest] = path

    survey = LineSurvey(root, classes, dict(counts), split_folders, median_hw,  # type: ignore[arg-type]
                        "rgb" if np.mean(colour) > 0.5 else "gray", duplicates)
    low, high = min(counts.values()), max(counts.values())
    if high > 5 * low:
        survey.warnings.append(f"imbalanced: {high} images of {counts.most_common(1)[0][0]!r} but only {low} of "
                               f"{min(counts, key=counts.get)!r}; read macro-F1 and per-class recall, not only accuracy")
    tiny = [c for c in classes if counts[c] < 20]
    if tiny:
        survey.warnings.append(f"few images in {', '.join(repr(c) for c in tiny)} (< 20): the test split will hold only a "
                               "handful of them; collect more before trusting per-class figures")
    if duplicates:
        survey.warnings.append(f"{len(duplicates)} exact duplicate file(s), e.g. {duplicates[0][0]} = {duplicates[0][1]}; "
                               "data.dedupe drops them before splitting")
    if unreadable:
        survey.warnings.append(f"{len(unreadable)} sampled file(s) unreadable, e.g. {unreadable[0]}")
    if len({tuple(s) for s in sizes}) > 1:
        survey.warnings.append("images come in several sizes; all are resized to data.image_size")
    return survey


def propose_image_size(median_hw: tuple[int, int], gpu: bool) -> int:
    """The median short side rounded down to a multiple of 16, 32..224 px (96 without a GPU)."""
    side = max(32, min(224, (min(median_hw) // 16) * 16))
    return min(side, CPU_SIZE_CAP) if not gpu else side


def _q(text: str) -> str:
    """A YAML double-quoted scalar (class names and paths may contain anything)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_recipe(survey: LineSurvey, name: str, recipe_dir: Path, gpu: bool, recipe_path: str = "") -> str:
    recipe_path = recipe_path or f"recipes/{name}.yaml"
    size = propose_image_size(survey.median_hw, gpu)
    rel_root = Path(os.path.relpath(survey.root, recipe_dir.resolve()))
    small = survey.total < SMALL_DATA
    teacher, opt, lr, wd, bs = (("resnet10t", "adamw", 0.003, 0.05, 16) if small else ("resnet18", "sgd", 0.05, 0.0005, 32))
    counts = ", ".join(f"{c} {survey.counts[c]}" for c in survey.classes)
    data_split = (
        "  split_folders: {train: train, val: val, test: test}   # the folder already has train/val/test\n"
        if survey.split_folders else
        "  split: {train: 0.7, val: 0.15, test: 0.15, seed: 0}   # stratified random split, fixed seed\n"
    )
    warnings = "".join(f"#   ! {w}\n" for w in survey.warnings) or "#   no warnings\n"
    return f"""# Recipe scaffolded by `kit init-line` from {survey.root}
# {len(survey.classes)} classes, {survey.total} images: {counts}
# Survey warnings:
{warnings}#
# Next: `kit views {recipe_path}` to look at the views, `kit calibrate {survey.root}` to fit them to
# this camera, then `kit run {recipe_path}`.
schema_version: 1

line:
  name: {name}
  description: {_q(f"Scaffolded from {survey.root.name}")}
  # parts_per_minute: 120       # the line's speed: sets the time-per-part target that verify gates on

data:
  root: {_q(str(rel_root))}        # relative to this recipe's folder
  layout: imagefolder           # one folder per class
  classes: [{", ".join(_q(c) for c in survey.classes)}]   # fixed order: it becomes the model's output order
  image_size: {size}               # median source image {survey.median_hw[0]}x{survey.median_hw[1]} px{"" if gpu else f"; capped at {CPU_SIZE_CAP} px without a GPU (raise it on one)"}
  channels: {survey.channels}                # {"colour differs between R, G and B" if survey.channels == "rgb" else "the camera is monochrome (or R = G = B)"}
{data_split}  dedupe: true                  # drop exact duplicate files before splitting (they leak train -> test)
  max_unreadable_fraction: 0.0  # stop on an unreadable file; raise to skip a few and log them

views:                          # albumentations on the resized uint8 image; presets take severity 1..5
  weak:                         # what the student always sees: mild, label-preserving
    - HorizontalFlip: {{p: 0.5}}
    - VerticalFlip: {{p: 0.5}}
    - angle: {{severity: 1, p: 0.5}}
  strong:                       # the line conditions CRLD makes the student robust to
    - HorizontalFlip: {{p: 0.5}}
    - VerticalFlip: {{p: 0.5}}
    - lighting: {{severity: 2, p: 0.8}}
    - angle: {{severity: 2, p: 0.7}}
    - blur: {{severity: 2, p: 0.5}}
    - noise: {{severity: 2, p: 0.5}}

teacher:
  arch: {teacher}               # {"small data: a 4.9 M-parameter ResNet trains reliably from scratch" if small else "ResNet-18, 11 M parameters"}
  epochs: 30
  batch_size: {bs}
  optimizer: {opt}
  lr: {lr}
  weight_decay: {wd}
  train_views: mix              # weak or strong per sample: CRLD needs trustworthy strong-view outputs

student:
  arch: ese_vovnet19b_slim_dw   # 1.4 M parameters, depthwise; quantizes to INT8 without losing decisions
  epochs: 40
  batch_size: {bs}
  optimizer: {opt}
  lr: {lr}
  weight_decay: {wd}

distill:
  method: crld                  # cross-view consistency distillation (defaults as published)

compare: []                     # add [kd, none] to train comparison students (doubles training time)

# kpi:                          # release targets; uncomment to gate `kit verify` and the report's GO / NO-GO
#   max_accuracy_gap: 0.03
#   min_agreement: 0.90
#   min_heldout_relative_robustness: 0.70
#   min_automation_rate: 0.70

seed: 0
device: auto
"""


def init_line(images_dir: str | Path, name: str, out: str | Path | None = None, *, overwrite: bool = False,
              gpu: bool | None = None) -> tuple[Path, LineSurvey]:
    """Survey ``images_dir`` and write ``recipes/<name>.yaml`` (or ``out``); the recipe is loaded
    back before this returns, so what it writes is known to be valid."""
    import torch
    from pydantic import ValidationError

    from kit.recipe.schema import LineConfig

    try:
        LineConfig(name=name)
    except ValidationError:
        raise ArgumentError("name", f"{name!r} is not a valid line name (letters, digits, _ . - ; starting with a letter or digit)") from None
    path = Path(out) if out is not None else Path("recipes") / f"{name}.yaml"
    if path.exists() and not overwrite:
        raise ArgumentError("overwrite", f"{path}: already exists; pass {{overwrite}} to replace it", prefix=False)
    survey = survey_line(images_dir)
    text = render_recipe(survey, name, path.parent, torch.cuda.is_available() if gpu is None else gpu, str(path))
    tmp = path.parent / f".{path.name}.check.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(tmp, text)
    try:
        load_recipe(tmp)  # names, paths and views must resolve before the file takes its real name
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, survey
