"""Decoded, cached line images and the torch datasets that apply views to them.

Small line data sets are decoded and resized once (through ``deploy.preprocess``, the one
preprocessing implementation) and kept in memory as uint8; albumentations views then run on
those arrays in DataLoader workers, and ``deploy.preprocess.to_tensor`` normalises them.
Every random view draws from its own seed, derived from (run seed, epoch, sample, view), so a
run is reproducible whatever the number of workers and whenever it is resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from deploy.errors import ImageReadError
from deploy.preprocess import PreprocessSpec, prepare_image, read_image, to_tensor
from kit.data.index import LineIndex, Sample
from kit.rundir import CERTIFY_SPLIT
from kit.errors import DataError
from kit.recipe.schema import Recipe
from kit.seeds import view_seed
from kit.views.build import apply_view

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocess_spec(recipe: Recipe) -> PreprocessSpec:
    """The recipe's data settings as the manifest-ready spec every runtime follows."""
    d = recipe.data
    if d.normalize is not None:
        mean, std = tuple(d.normalize.mean), tuple(d.normalize.std)
    elif d.channels == "gray":
        mean, std = (round(sum(_IMAGENET_MEAN) / 3, 3),), (round(sum(_IMAGENET_STD) / 3, 3),)
    else:
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    return PreprocessSpec(
        image_size=tuple(d.image_size), channels=d.channels, roi=tuple(d.roi) if d.roi else None,
        interpolation=d.interpolation, mean=mean, std=std,
    )


def teacher_preprocess_spec(recipe: Recipe) -> PreprocessSpec:
    """The teacher's input: the student's preprocessing at ``teacher.image_size`` when that is set."""
    spec = preprocess_spec(recipe)
    size = recipe.teacher.image_size
    return spec if size is None or tuple(size) == spec.image_size else replace(spec, image_size=tuple(size))


def decode_teacher_splits(recipe: Recipe, spec: PreprocessSpec,
                          splits: dict[str, "DecodedSplit"]) -> tuple[PreprocessSpec, dict[str, "DecodedSplit"] | None]:
    """The teacher's spec and, when it reads another size than ``spec``, the same samples as ``splits`` (the
    readable ones) decoded at that size; None when the teacher reads the student's splits."""
    teacher_spec = teacher_preprocess_spec(recipe)
    if teacher_spec == spec:
        return spec, None
    return teacher_spec, {name: decode_split(split.samples, teacher_spec) for name, split in splits.items()}


@dataclass
class DecodedSplit:
    """One split's images, prepared (ROI + resize) and kept as uint8 NxHxWxC."""

    images: np.ndarray
    labels: np.ndarray
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self, spec: PreprocessSpec) -> torch.Tensor:
        """The clean evaluation input, normalised exactly as the edge runtime does."""
        return torch.from_numpy(to_tensor(self.images, spec))


def decode_split(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    on_unreadable: Callable[[ImageReadError], None] | None = None,
) -> DecodedSplit:
    images, labels, kept = [], [], []
    for sample in samples:
        try:
            images.append(prepare_image(read_image(sample.path, spec.channels), spec))
        except ImageReadError as exc:
            if on_unreadable is None:
                raise DataError(str(exc)) from None
            on_unreadable(exc)
            continue
        labels.append(sample.label)
        kept.append(sample)
    h, w = spec.image_size
    stacked = np.stack(images) if images else np.zeros((0, h, w, spec.num_channels), np.uint8)
    return DecodedSplit(images=stacked, labels=np.asarray(labels, dtype=np.int64), samples=kept)


def decode_line(index: LineIndex, recipe: Recipe, spec: PreprocessSpec) -> tuple[dict[str, DecodedSplit], list[str]]:
    """Decode every split; skip unreadable files up to ``data.max_unreadable_fraction``."""
    unreadable: list[str] = []
    names = ("train", "val", "test") + ((CERTIFY_SPLIT,) if index.split(CERTIFY_SPLIT) else ())
    splits = {
        name: decode_split(index.split(name), spec, on_unreadable=lambda e: unreadable.append(str(e)))
        for name in names
    }
    total = len(index.samples)
    if unreadable and len(unreadable) / total > recipe.data.max_unreadable_fraction:
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DataError(
            f"{unreadable[0]}{more}; {len(unreadable)} of {total} images unreadable, above "
            f"data.max_unreadable_fraction = {recipe.data.max_unreadable_fraction:g}: remove or fix them, or raise the limit"
        )
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"data: no readable images left in the {name} split")
    return splits, unreadable


TEACHER_VIEW_PREFIX = "teacher:"  # a paired dataset names the teacher's copy of view ``weak`` "teacher:weak"


class ViewDataset(Dataset):
    """Yields ``(view_1, ..., view_k, label)`` for one split, each view freshly augmented.

    ``views`` maps a name to a pipeline; the name ``"mix"`` draws the weak or the strong
    pipeline per sample (50/50), which is how a teacher learns strong-view outputs that
    CRLD can trust.
    """

    def __init__(
        self,
        split: DecodedSplit,
        spec: PreprocessSpec,
        pipelines: dict[str, A.Compose],
        view_names: Sequence[str],
        seed: int,
    ) -> None:
        self.split, self.spec, self.pipelines = split, spec, pipelines
        self.view_names = list(view_names)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    def _view(self, image: np.ndarray, name: str, index: int, slot: int, epoch: int) -> np.ndarray:
        seed = view_seed(self.seed, epoch, index, slot)
        if name == "mix":
            name = "weak" if seed % 2 == 0 else "strong"
        if name == "clean":
            return image
        return apply_view(self.pipelines[name], image, seed)

    def __getitem__(self, key: int | tuple[int, int]):
        """``(epoch, index)`` from the training sampler (a plain index means epoch 0): the epoch travels
        with the index, so persistent DataLoader workers never apply a stale epoch's views."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = self.split.images[index]
        views = [torch.from_numpy(to_tensor(self._view(image, n, index, slot, epoch), self.spec))
                 for slot, n in enumerate(self.view_names)]
        return (*views, int(self.split.labels[index]))


class PairedViewDataset(ViewDataset):
    """Views for a student whose teacher reads larger images (``teacher.image_size``).

    ``split`` holds the images at the teacher's size. Each view is drawn once, at that size, and the
    student's copy is the same view resized to ``student_spec`` by the one preprocessing
    implementation, so both models see one random transform (same crop, angle, flip, lighting).
    With ``with_teacher`` the teacher's copies follow the student's, named ``teacher:<view>``.
    Steps measured in pixels (blur radius, noise grain, JPEG blocks) act at the teacher's size, so the
    student's copy carries them shrunk by the size ratio; recipes set their severity for the teacher.
    """

    def __init__(self, split: DecodedSplit, teacher_spec: PreprocessSpec, student_spec: PreprocessSpec,
                 pipelines: dict[str, A.Compose], view_names: Sequence[str], seed: int, with_teacher: bool) -> None:
        super().__init__(split, student_spec, pipelines, view_names, seed)
        self.teacher_spec, self.with_teacher = teacher_spec, with_teacher
        self.student_views = list(view_names)
        self._resize = replace(student_spec, roi=None)  # the ROI was cut when the teacher-size image was prepared
        if with_teacher:
            self.view_names = self.student_views + [TEACHER_VIEW_PREFIX + n for n in self.student_views]

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = self.split.images[index]
        large = [self._view(image, n, index, slot, epoch) for slot, n in enumerate(self.student_views)]
        views = [torch.from_numpy(to_tensor(prepare_image(v, self._resize), self.spec)) for v in large]
        if self.with_teacher:
            views += [torch.from_numpy(to_tensor(v, self.teacher_spec)) for v in large]
        return (*views, int(self.split.labels[index]))
