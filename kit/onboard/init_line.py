"""``kit init-line``: a commented, valid recipe scaffolded from a folder of labelled images.

It looks at the data the way an engineer would before writing a recipe: which classes, how many
images each, how imbalanced, which one holds the good parts, exact duplicates, image sizes and
colour. The recipe it writes loads and runs as is; every choice it made is explained in a comment
next to the field, in plain numbers where it costs something (what the resize does to a small defect).
A line with too few images of a defect class for a classifier, or good parts alone, gets a
``task: anomaly`` recipe instead (``kit.onboard.anomaly_scaffold``: the rule and its measurements).
"""

from __future__ import annotations

import math

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.errors import ImageReadError
from deploy.preprocess import read_image
from kit.data.balance import IMBALANCE_RATIO
from kit.data.index import SPLITS, class_folders, file_hash, images_in
from kit.errors import ArgumentError, DataError
from kit.io import write_text_atomic
from kit.onboard.anomaly_scaffold import (AnomalyProposal, anomaly_header, anomaly_sections, anomaly_split_note,
                                          propose_anomaly)
from kit.onboard.roi import RoiFinder
from kit.onboard.targets import SCAFFOLD_VAL_FRACTION, next_target_line, strictest_certifiable
from kit.recipe import load_recipe
from kit.recipe.schema import VerifyConfig
from kit.sample_line import masks_dir
from kit.verify.stats import zero_failure_sample_size

SIZE_PROBES = 64  # images opened per class to learn sizes and colour
MIN_SIZE_PX, MAX_SIZE_PX = 32, 224  # the input sides the scaffold proposes (timm backbones stride 32)
# Without a GPU an epoch costs about images x side^2 pixels. 20 M px is ~1000 images at 128 px, which
# trains in minutes on a laptop CPU; a bigger input is worth it whenever the data is small enough to
# afford it, because a fixed 96 px cap erased defects a few px across on ~300 px images (issue 19).
CPU_PIXEL_BUDGET = 20_000_000  # px per epoch
CPU_SIZES_PX = (96, 128, 160, 192, 224)  # the CPU candidates; the first is the floor however large the data
SMALL_DEFECT_PX = 4  # the defect the image_size comment follows through the resize
MIN_VISIBLE_DEFECT_PX = 2  # a defect narrower than this at the model's input is averaged into the background
TEACHER_MAX_PX = 512  # the largest input the scaffold offers a (GPU) teacher
# The teacher reads the source's size when the student's input is at least this much smaller, and on a CPU while its
# epoch stays within the budget below. Measured on x-sdd (source ~128 px): with students at 64 px (2x, 3 seeds,
# benchmarks/RESULTS.md) a 128 px teacher scored 90.7 % against 82.4 % and lifted the CRLD student from 86.8 % to
# 88.9 % (held-out corruptions 71.0 -> 73.2 %) for about 4x the teacher's training time; with students at 96 px
# (1.33x, the recipe's budget, one seed) the teacher stayed at 95.6 % and CRLD went from 97.1 % to 96.1 %.
MIN_TEACHER_SHRINK = 2.0
TEACHER_CPU_PIXEL_BUDGET = 2 * CPU_PIXEL_BUDGET
SMALL_DATA = 1000  # images: below this a smaller teacher with AdamW trains more reliably from scratch
# Mostly good parts and few examples of each defect: timm backbones trained from scratch memorise the defect images
# and stay near chance on new ones; the small-receptive-field family (kit.models.local_cnn) generalises. Measured on the
# sparse line (90 % good, 33 images per defect class, defects 1-4 px; benchmarks/RESULTS.md, test split): resnet18
# macro-F1 0.07-0.08 at 256 px (0.19-0.24 as the kit's teacher at 64 px), local_cnn_m 0.64-0.85 over seeds and sizes;
# on the sample line (24 % good, 100 per class) resnet10t learns as it is. Between 33 and 100 images per class, and
# for large defects (the flattening keeps structure narrower than about 8 px at the model's input and only the edges of
# anything larger; the receptive field is about 20 px), the rule is not measured.
MOSTLY_GOOD_SHARE = 0.7
FEW_DEFECT_IMAGES = 100  # images in the rarest defect class
# Folder names of the good-part class, compared lower-case with - and spaces as _; a folder named exactly
# one of these or starting with one and "_" ("ok_parts", "good_2024") is it. "nok" is not.
OK_CLASS_NAMES = ("ok", "okay", "good", "normal", "pass", "free", "no_defect", "defect_free")


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
    ok_class: str | None = None  # the good-part class, when a folder name says which
    roi: tuple[int, int, int, int] | None = None  # the box holding the part on a plain background (kit.onboard.roi)
    roi_images: int = 0  # sampled images the ROI was found on
    val_images_in_folder: int | None = None  # the val/ folder's images, when the line comes split into folders
    good_val_images_in_folder: int | None = None  # of them, the good-part class's
    masks: Path | None = None  # the images' defect masks, when they lie next to them in <folder>_masks

    @property
    def good_val_images(self) -> int:
        """The good-part class's validation images: its val/ folder's, else its share of the scaffold's split."""
        if self.good_val_images_in_folder is not None:
            return self.good_val_images_in_folder
        return max(1, int(round(self.counts.get(self.ok_class, 0) * SCAFFOLD_VAL_FRACTION))) if self.ok_class else 0

    @property
    def val_images(self) -> int:
        """The validation split's size: the val/ folder's, else the scaffold's stratified 15 % (about)."""
        if self.val_images_in_folder is not None:
            return self.val_images_in_folder
        return sum(int(round(n * SCAFFOLD_VAL_FRACTION)) for n in self.counts.values())

    @property
    def input_hw(self) -> tuple[int, int]:
        """What the model's input is cut from: the proposed ROI, else the median source image."""
        return (self.roi[3], self.roi[2]) if self.roi else self.median_hw

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def imbalanced(self) -> bool:
        return max(self.counts.values()) > IMBALANCE_RATIO * min(self.counts.values())


def _is_ok_name(folder: str) -> bool:
    name = folder.lower().replace("-", "_").replace(" ", "_")
    return any(name == ok or name.startswith(ok + "_") for ok in OK_CLASS_NAMES)


def detect_ok_class(classes: list[str]) -> str | None:
    """The good-part class, recognised by its folder name (see ``OK_CLASS_NAMES``); ``None`` when no
    folder or more than one looks like it, because guessing wrong would invert every later judgement."""
    matches = [c for c in classes if _is_ok_name(c)]
    return matches[0] if len(matches) == 1 else None


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

    sizes, colour, unreadable = [], [], []
    roi_finder = RoiFinder()
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
            roi_finder.add(img)
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

    # One folder is the good parts whatever its name (a line of good parts alone: task: anomaly).
    ok_class = classes[0] if len(classes) == 1 else detect_ok_class(classes)
    val_counts = {c: len(images_in(root / "val" / c)) if (root / "val" / c).is_dir() else 0 for c in classes}
    survey = LineSurvey(root, classes, dict(counts), split_folders, median_hw,  # type: ignore[arg-type]
                        "rgb" if np.mean(colour) > 0.5 else "gray", duplicates, ok_class=ok_class,
                        roi=roi_finder.proposal(), roi_images=roi_finder.images,
                        val_images_in_folder=sum(val_counts.values()) if split_folders else None,
                        good_val_images_in_folder=val_counts.get(ok_class, 0) if split_folders and ok_class else None,
                        masks=masks_dir(root) if masks_dir(root).is_dir() else None)
    low, high = min(counts.values()), max(counts.values())
    if survey.imbalanced:
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


def propose_image_size(median_hw: tuple[int, int], gpu: bool, total_images: int) -> int:
    """The model's input side in px.

    The median source short side rounded down to a multiple of 16 and kept within 32..224 px: more
    than the source adds cost and no detail. A GPU affords that. On a CPU an epoch costs about
    ``total_images x side^2`` pixels, so the side is the largest of ``CPU_SIZES_PX`` (never above the
    source) whose epoch fits ``CPU_PIXEL_BUDGET``; data too large for even the smallest gets the
    smallest, and a source smaller than that keeps its own size.
    """
    source_side = max(MIN_SIZE_PX, min(MAX_SIZE_PX, (min(median_hw) // 16) * 16))
    if gpu:
        return source_side
    affordable = [s for s in CPU_SIZES_PX if s <= source_side and total_images * s**2 <= CPU_PIXEL_BUDGET]
    return max(affordable, default=min(source_side, CPU_SIZES_PX[0]))


@dataclass(frozen=True)
class SizeProposal:
    """The proposed ``data.image_size`` and what the resize costs: the comment and warning say it in
    pixels of defect, the unit an inspection engineer judges a camera by."""

    size_px: int
    source_hw: tuple[int, int]
    reason: str
    source_name: str = "median source"  # or "ROI": what is resized

    @property
    def shrink(self) -> float:
        """Source px per input px along the longer side, where a defect loses most."""
        return max(self.source_hw) / self.size_px

    def cost(self) -> str:
        source = f"{self.source_name} {self.source_hw[0]}x{self.source_hw[1]} px"
        if self.shrink <= 1.0:
            return f"{source}: no detail lost in the resize"
        return (f"{source} -> {self.shrink:.1f}x smaller: a {SMALL_DEFECT_PX} px defect becomes "
                f"{SMALL_DEFECT_PX / self.shrink:.1f} px")

    def warning(self) -> str | None:
        """Past 2x, a defect must be at least ``MIN_VISIBLE_DEFECT_PX x shrink`` source px to survive."""
        if self.shrink <= 2.0:
            return None
        what, remedy = (("the ROI is", "") if self.source_name == "ROI" else ("images are", "data.roi (crop to the part), "))
        return (f"{what} shrunk {self.shrink:.1f}x ({self.source_hw[0]}x{self.source_hw[1]} px -> {self.size_px} px): "
                f"defects smaller than about {MIN_VISIBLE_DEFECT_PX * self.shrink:.0f} px will be lost; consider {remedy}"
                "a larger data.image_size on a GPU")


def plan_image_size(survey: LineSurvey, gpu: bool) -> SizeProposal:
    """``propose_image_size`` for the surveyed line, with the reason in words."""
    size = propose_image_size(survey.input_hw, gpu, survey.total)
    gpu_size = propose_image_size(survey.input_hw, True, survey.total)
    epoch_mpx = survey.total * size**2 / 1e6
    budget_mpx = CPU_PIXEL_BUDGET / 1e6
    on_gpu = f"; a GPU affords {gpu_size}" if gpu_size > size else ""
    if gpu:
        reason = f"a GPU affords the source's size (at most {MAX_SIZE_PX} px)"
    elif epoch_mpx > budget_mpx:
        reason = f"{survey.total} images are over the CPU budget ({budget_mpx:g} M px per epoch) even at {size} px{on_gpu}"
    elif size == gpu_size:
        reason = f"the source's size: {survey.total} images x {size}^2 px = {epoch_mpx:.0f} M px per epoch fit the CPU budget ({budget_mpx:g} M)"
    else:
        reason = (f"the largest size whose {survey.total} images x {size}^2 px = {epoch_mpx:.0f} M px per epoch fit the "
                  f"CPU budget ({budget_mpx:g} M){on_gpu}")
    return SizeProposal(size, survey.input_hw, reason, "ROI" if survey.roi else "median source")


def teacher_size_line(survey: LineSurvey, size: SizeProposal, gpu: bool) -> str:
    """``teacher.image_size`` when the student's input shrinks the source: the teacher then reads the source's
    detail at up to ``TEACHER_MAX_PX``. Set when the student's input is at least ``MIN_TEACHER_SHRINK`` smaller, on
    a GPU, and on a CPU while the teacher's epoch stays within ``TEACHER_CPU_PIXEL_BUDGET`` (it trains once, and a
    weak teacher pulls every student down); else a commented hint; nothing when no detail is lost."""
    side = max(MIN_SIZE_PX, min(TEACHER_MAX_PX, (min(survey.input_hw) // 16) * 16))
    if side <= size.size_px:
        return ""
    why = f"the teacher reads {side} px (small defects intact), the student {size.size_px}; both see the same views"
    if side < MIN_TEACHER_SHRINK * size.size_px:
        return (f"  # image_size: {side:<16}# {why}; measured worth it from a {MIN_TEACHER_SHRINK:g}x shrink, "
                f"this one is {side / size.size_px:.2f}x\n")
    if gpu:
        return f"  image_size: {side:<18}# {why}\n"
    epoch_mpx = survey.total * side**2 / 1e6
    if epoch_mpx <= TEACHER_CPU_PIXEL_BUDGET / 1e6:
        return (f"  image_size: {side:<18}# {why}; {epoch_mpx:.0f} M px per teacher epoch fit the CPU's teacher budget "
                f"({TEACHER_CPU_PIXEL_BUDGET / 1e6:g} M)\n")
    return f"  # image_size: {side:<16}# on a GPU: {why}\n"


def pretrained_line(arch: str, cached: bool) -> str:
    """``teacher.pretrained``: set when timm's published weights for ``arch`` are in this PC's cache, a hint when not.
    From scratch, a timm teacher starves on few or small defects (the sparse line: no timm configuration tried learned
    them; lines like it get the local_cnn family instead, which has no published weights)."""
    if cached:
        return f"  pretrained: true              # timm's published {arch} weights, found in this PC's cache: few, small defects need them\n"
    return ("  # pretrained: true            # published weights: the usual remedy when few or small defects starve a teacher "
            "trained from scratch; pre-fetch them for an offline PC (docs/recipe.md)\n")


def roi_line(survey: LineSurvey, size: SizeProposal) -> str:
    """``data.roi``: the box found around the part on a plain background; otherwise a commented hint when the
    resize costs detail (cropping to the part is the cheapest way to keep it)."""
    if survey.roi is not None:
        x, y, w, h = survey.roi
        return (f"  roi: [{x}, {y}, {w}, {h}]{' ' * max(1, 25 - len(f'[{x}, {y}, {w}, {h}]'))}# x, y, width, height: the part lies "
                f"inside this box in all {survey.roi_images} sampled images, plain background outside; widen it if parts "
                "can lie elsewhere\n")
    if size.shrink <= 1.0:
        return ""
    return ("  # roi: [x, y, width, height]  # crop to the part before the resize: every pixel of background cut is detail "
            "kept for the defects\n")


def wants_local_cnn(survey: LineSurvey) -> bool:
    """Mostly good parts (``MOSTLY_GOOD_SHARE``) and a defect class rarer than ``FEW_DEFECT_IMAGES``: the line the
    small-receptive-field family is for (its constants say what was measured)."""
    if survey.ok_class is None:
        return False
    defects = [n for c, n in survey.counts.items() if c != survey.ok_class]
    share = survey.counts[survey.ok_class] / max(1, survey.total)
    return bool(defects) and share >= MOSTLY_GOOD_SHARE and min(defects) < FEW_DEFECT_IMAGES


def _local_note(survey: LineSurvey) -> str:
    defects = {c: n for c, n in survey.counts.items() if c != survey.ok_class}
    rarest = min(defects, key=lambda c: defects[c])
    share = survey.counts[survey.ok_class] / survey.total
    return (f"{share:.0%} good parts, {defects[rarest]} images of {rarest!r}: from scratch a large backbone memorises "
            "so few defects,\n                                # a ~20 px receptive field with the background flattened "
            "finds them wherever they are; for defects wider\n                                # than about 8 px at "
            "the model's input (stains, missing parts) try resnet18 instead")


def _q(text: str) -> str:
    """A YAML double-quoted scalar (class names and paths may contain anything)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok_class_line(survey: LineSurvey) -> str:
    if survey.ok_class is None:
        return "  # ok_class: good            # the good-part class (none recognised from the folder names)\n"
    return f"  ok_class: {_q(survey.ok_class)}              # the good-part class: a defect accepted as it is an escape\n"


# The operating target the scaffold writes: the strictest of these that the validation split can certify (95 %
# confidence, one-sided Clopper-Pearson) with no error among the parts accepted, while still accepting
# CERTIFY_ACCEPT_SHARE of the validation images (headroom: a model sends its least confident parts to a person).
ACCEPTED_ACCURACY_LADDER = (0.995, 0.99, 0.98, 0.97, 0.95, 0.90, 0.80)
CERTIFY_ACCEPT_SHARE = 0.9


CERTIFY_SHARE = VerifyConfig().certify_share  # of validation, held out of every choice to certify on (kit verify)


def certify_images(val_images: int) -> int:
    """About how many of ``val_images`` certify: ``verify.certify_share`` of them (half up; per class in the run)."""
    return int(val_images * CERTIFY_SHARE + 0.5)


def certifiable_target(val_images: int) -> tuple[float | None, float | None]:
    """(the strictest ladder target the certification share of ``val_images`` can certify with the headroom above,
    the next stricter one)."""
    trials = int(certify_images(val_images) * CERTIFY_ACCEPT_SHARE)
    return strictest_certifiable(ACCEPTED_ACCURACY_LADDER, trials, lambda a: 1 - a)


def _val_needed(accuracy: float) -> int:
    """Validation images whose certification share certifies ``accuracy`` with the headroom above."""
    return math.ceil(zero_failure_sample_size(1 - accuracy) / CERTIFY_ACCEPT_SHARE / CERTIFY_SHARE)


def _threshold_lines(survey: LineSurvey) -> str:
    """``verify.threshold``: a target this line's validation split can certify, and what the stricter one costs."""
    n_val = survey.val_images
    n_cert = certify_images(n_val)
    chosen, stricter = certifiable_target(n_val)
    split = "its val/ folder" if survey.split_folders else f"a {SCAFFOLD_VAL_FRACTION * 100:g} % split"
    head = (f"verify:\n  threshold:                    # the operating target: the decisions taken without a person are at\n"
            f"                                # least this accurate, certified at 95 % confidence on {n_cert} of the {n_val}\n"
            f"                                # validation images ({split}; the share held out of every choice,\n"
            f"                                # verify.certify_share; kit verify)\n")
    if chosen is None:
        return (head + f"    accepted_accuracy: {ACCEPTED_ACCURACY_LADDER[-1]:g}     # {n_val} validation images certify no "
                f"target; {ACCEPTED_ACCURACY_LADDER[-1]:.0%} needs about\n"
                f"                                # {_val_needed(ACCEPTED_ACCURACY_LADDER[-1])} (add images): until then every "
                "part goes to a person\n")
    line = f"    accepted_accuracy: {chosen:<10g}# certifiable with {n_val} validation images, with no error among the {CERTIFY_ACCEPT_SHARE * 100:g} % accepted\n"
    if stricter is not None:
        needed = _val_needed(stricter)
        fraction = SCAFFOLD_VAL_FRACTION if not survey.split_folders else n_val / max(1, survey.total)
        line += next_target_line(stricter, needed, fraction, survey.total)
    return head + line


def _escape_target_line(survey: LineSurvey) -> str:
    if survey.ok_class is None:
        return "  # max_class_escape_rate: 0.05 # needs line.ok_class\n"
    return ("  max_class_escape_rate: 0.05   # worst defect class: at most 5 % of its parts accepted as good\n"
            "  max_false_reject_rate: 0.05   # good parts rejected as a defect\n")


def _defect_rate_line(survey: LineSurvey) -> str:
    share = survey.counts.get(survey.ok_class, 0) / max(1, sum(survey.counts.values())) if survey.ok_class else None
    seen = f"; {1 - share:.0%} of these images are defective, production is usually far less" if share is not None else ""
    if len(survey.classes) == 1:
        seen = "; these images hold no defective part, so escapes wait for some"
    return (f"  # defect_rate: 0.02           # share of defective parts in production: the report re-weights automation,\n"
            f"                                # escapes and false rejects to it (unset: figures use the test mix{seen})\n")


def _ok_class_note(survey: LineSurvey) -> str:
    if survey.ok_class is not None and len(survey.classes) == 1 and not _is_ok_name(survey.ok_class):
        return f"{survey.ok_class} (the only folder: a line of good parts alone)"
    if survey.ok_class is not None:
        return f"{survey.ok_class} (recognised by its folder name)"
    return f"none recognised among the folder names (looked for {', '.join(OK_CLASS_NAMES)})"


def _balance_note(survey: LineSurvey) -> str:
    if survey.imbalanced:
        largest = max(survey.counts, key=lambda c: survey.counts[c])
        smallest = min(survey.counts, key=lambda c: survey.counts[c])
        return (f"imbalanced here ({largest} {survey.counts[largest]} vs {smallest} {survey.counts[smallest]}): "
                "auto uses class-balanced sampling")
    return f"class-balanced sampling only if the training split is imbalanced (largest class > {IMBALANCE_RATIO:g}x smallest)"


def _head(survey: LineSurvey, recipe_path: str, task_note: str = "") -> str:
    """The header (what was found, why the task, the survey's warnings, what to run next) and the schema version."""
    counts = ", ".join(f"{c} {survey.counts[c]}" for c in survey.classes)
    n_classes = f"{len(survey.classes)} class{'es' if len(survey.classes) != 1 else ''}"
    warnings = "".join(f"#   ! {w}\n" for w in survey.warnings) or "#   no warnings\n"
    return f"""# Recipe scaffolded by `kit init-line` from {survey.root}
# {n_classes}, {survey.total} images: {counts}
# good-part class: {_ok_class_note(survey)}
{task_note}# Survey warnings:
{warnings}#
# Next: `kit views {recipe_path}` to look at the views, `kit calibrate {survey.root}` to fit them to
# this camera, then `kit run {recipe_path}`.
schema_version: 1
"""


def _masks_line(survey: LineSurvey, recipe_dir: Path) -> str:
    """``data.masks`` when the images' defect masks lie next to them in ``<folder>_masks`` (as ``kit sample-data``
    writes them)."""
    if survey.masks is None:
        return ""
    rel = Path(os.path.relpath(survey.masks, recipe_dir.resolve()))
    return f"  masks: {_q(str(rel))}   # defect masks found next to the images: kit verify scores the heatmaps on them\n"


def _line_and_data(survey: LineSurvey, size: SizeProposal, name: str, recipe_dir: Path, split_note: str) -> str:
    """``line:`` and ``data:``, the same for both tasks but for the split's comment."""
    rel_root = Path(os.path.relpath(survey.root, recipe_dir.resolve()))
    data_split = (
        "  split_folders: {train: train, val: val, test: test}   # the folder already has train/val/test\n"
        if survey.split_folders else
        f"  split: {{train: 0.7, val: {SCAFFOLD_VAL_FRACTION:g}, test: 0.15, seed: 0}}   # {split_note}\n"
    )
    return f"""
line:
  name: {name}
  description: {_q(f"Scaffolded from {survey.root.name}")}
  # parts_per_minute: 120       # the line's speed: sets the time-per-part target that verify gates on
{_ok_class_line(survey)}{_defect_rate_line(survey)}
data:
  root: {_q(str(rel_root))}        # relative to this recipe's folder
  layout: imagefolder           # one folder per class
  classes: [{", ".join(_q(c) for c in survey.classes)}]   # fixed order: it becomes the model's output order
  image_size: {size.size_px:<18}# {size.cost()}
                                # {size.reason}
{roi_line(survey, size)}  channels: {survey.channels}                # {"colour differs between R, G and B" if survey.channels == "rgb" else "the camera is monochrome (or R = G = B)"}
{data_split}{_masks_line(survey, recipe_dir)}  dedupe: true                  # drop exact duplicate files before splitting (they leak train -> test)
  max_unreadable_fraction: 0.0  # stop on an unreadable file; raise to skip a few and log them
"""


def _views(strong_note: str) -> str:
    return f"""
views:                          # albumentations on the resized uint8 image; presets take severity 1..5
  weak:                         # what the student always sees: mild, label-preserving
    - HorizontalFlip: {{p: 0.5}}
    - VerticalFlip: {{p: 0.5}}
    - angle: {{severity: 1, p: 0.5}}
  strong:                       # {strong_note}
    - HorizontalFlip: {{p: 0.5}}
    - VerticalFlip: {{p: 0.5}}
    - lighting: {{severity: 2, p: 0.8}}
    - angle: {{severity: 2, p: 0.7}}
    - blur: {{severity: 2, p: 0.5}}
    - noise: {{severity: 2, p: 0.5}}
"""


ECONOMICS_AND_RUN = """
# economics:                    # what manual inspection costs: the report turns automation into hours and money
#   parts_per_day: 20000
#   manual_seconds_per_part: 2
#   labour_cost_per_hour: 35
#   currency: EUR
#   escape_cost: 50             # a defective part shipped (net savings subtract escapes and false rejects)
#   false_reject_cost: 2        # a good part scrapped or re-worked

seed: 0
device: auto
"""


def render_recipe(survey: LineSurvey, size: SizeProposal, name: str, recipe_dir: Path, recipe_path: str = "",
                  gpu: bool = False, weights_cached: bool | None = None,
                  anomaly: AnomalyProposal | None = None) -> str:
    """``weights_cached``: whether the teacher's published weights are in the local cache (None: look).
    ``anomaly``: write a ``task: anomaly`` recipe (``kit.onboard.anomaly_scaffold``) instead of a classifier's."""
    recipe_path = recipe_path or f"recipes/{name}.yaml"
    if anomaly is not None:
        return (_head(survey, recipe_path, anomaly_header(anomaly)) + "task: anomaly                   # the good part "
                "learnt from good parts alone (see the header)\n"
                + _line_and_data(survey, size, name, recipe_dir, anomaly_split_note(anomaly))
                + _views("the line conditions the student learns to ignore (anomaly.cross_view)")
                + anomaly_sections(anomaly, size.size_px, CPU_PIXEL_BUDGET) + ECONOMICS_AND_RUN)
    small = survey.total < SMALL_DATA
    local = wants_local_cnn(survey)
    teacher, opt, lr, wd, bs = (("resnet10t", "adamw", 0.003, 0.05, 16) if small and not local else ("resnet18", "sgd", 0.05, 0.0005, 32))
    if local:
        teacher, teacher_note = "local_cnn_m", f"0.12 M parameters; {_local_note(survey)}"
        student, student_note = "local_cnn_s", "0.03 M parameters: the teacher's family, narrower"
        pretrained = ("  # pretrained: true            # no published weights exist for local_cnn; with timm's resnet18 "
                      "weights on this PC, arch: resnet18 + pretrained: true is the alternative\n")
    else:
        teacher_note = "small data: a 4.9 M-parameter ResNet trains reliably from scratch" if small else "ResNet-18, 11 M parameters"
        student, student_note = "ese_vovnet19b_slim_dw", "1.4 M parameters, depthwise; quantizes to INT8 without losing decisions"
        if weights_cached is None:
            from kit.models import published_weights_cached

            weights_cached = published_weights_cached(teacher)
        pretrained = pretrained_line(teacher, weights_cached)
    balance = _balance_note(survey)
    select_by = "the epoch with the best validation macro-F1 is kept: calling every part good cannot win it"
    return (_head(survey, recipe_path) + _line_and_data(survey, size, name, recipe_dir, "stratified random split, fixed seed")
            + _views("the line conditions CRLD makes the student robust to") + f"""
teacher:
  arch: {teacher:<24}# {teacher_note}
  epochs: 30
  batch_size: {bs}
  optimizer: {opt}
  lr: {lr}
  weight_decay: {wd}
  balance: auto                 # {balance}
  select_by: macro_f1           # {select_by}
  train_views: mix              # weak or strong per sample: CRLD needs trustworthy strong-view outputs
{pretrained}{teacher_size_line(survey, size, gpu)}
student:
  arch: {student:<24}# {student_note}
  epochs: 40
  batch_size: {bs}
  optimizer: {opt}
  lr: {lr}
  weight_decay: {wd}
  balance: auto                 # {balance}
  select_by: macro_f1           # {select_by}

distill:
  method: crld                  # cross-view consistency distillation (defaults as published)

compare: []                     # add [kd, none] to train comparison students (doubles training time)

{_threshold_lines(survey)}
kpi:                            # release targets: `kit verify` and the report's GO / NO-GO gate on them
  min_macro_f1: 0.85            # every defect class counts: a model that calls every part good scores low
{_escape_target_line(survey)}  # max_accuracy_gap: 0.03       # uncomment the ones management signs off on
  # min_agreement: 0.90
  # min_heldout_relative_robustness: 0.70
  # min_automation_rate: 0.70
  # gate_on: bound              # gate each rate on the pessimistic end of its 95 % interval, not its value
""" + ECONOMICS_AND_RUN)


def init_line(images_dir: str | Path, name: str, out: str | Path | None = None, *, overwrite: bool = False,
              gpu: bool | None = None, weights_cached: bool | None = None) -> tuple[Path, LineSurvey]:
    """Survey ``images_dir`` and write ``recipes/<name>.yaml`` (or ``out``); the recipe is loaded
    back before this returns, so what it writes is known to be valid. ``gpu`` and ``weights_cached``
    (the teacher's published weights in the local cache): None looks at this machine."""
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
    gpu = torch.cuda.is_available() if gpu is None else gpu
    size = plan_image_size(survey, gpu)
    resize_warning = size.warning()
    if resize_warning:
        survey.warnings.append(resize_warning)
    text = render_recipe(survey, size, name, path.parent, str(path), gpu=gpu, weights_cached=weights_cached,
                         anomaly=propose_anomaly(survey))
    tmp = path.parent / f".{path.name}.check.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(tmp, text)
    try:
        load_recipe(tmp)  # names, paths and views must resolve before the file takes its real name
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, survey
