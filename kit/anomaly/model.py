"""The networks of anomaly mode: a teacher's feature trunk, a student that regresses it, and the exported
``AnomalyModel`` (score, anomaly map and, for the hybrid, the distances to each named defect kind).

Student-teacher feature regression (STPM, Wang et al. 2021; EfficientAD, Batzner et al. 2024): a student
trained on good parts only reproduces the teacher's features where the part looks like the good parts it saw,
and fails where it does not. The anomaly map is that failure, location by location.
"""

from __future__ import annotations

from typing import Any

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from kit.models.factory import check_arch

MAX_REDUCTION = 8  # the deepest feature level used: a defect of a few pixels still covers one cell
CONTRAST_SIGMA_PX = 8.0  # the neighbourhood local contrast is measured over: wider than a defect, narrower than light
CONTRAST_FLOOR = 0.05  # in normalised input units: a flat region's noise is not blown up


def _gaussian(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class LocalContrastNorm(nn.Module):
    """``(x - local mean) / (local std + floor)`` per channel, Gaussian neighbourhoods: a fixed (not learned) input
    stage that removes the light's gain and offset, locally. A part seen darker, brighter or under uneven light
    gives (nearly) the same input; a scratch stays a local departure from its neighbourhood."""

    def __init__(self, channels: int, sigma_px: float = CONTRAST_SIGMA_PX, floor: float = CONTRAST_FLOOR) -> None:
        super().__init__()
        k = _gaussian(sigma_px)
        self.channels, self.radius, self.floor = channels, len(k) // 2, floor
        self.register_buffer("kernel_h", k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("kernel_v", k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), self.kernel_h, groups=self.channels)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), self.kernel_v, groups=self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._blur(x)
        return centred / (self._blur(centred * centred).clamp_min(0).sqrt() + self.floor)


class FeatureTrunk(nn.Module):
    """A timm backbone cut at its deepest level with a reduction of at most ``MAX_REDUCTION``: local features
    that a small defect still changes."""

    def __init__(self, arch: str, in_chans: int, pretrained: bool = False, pretrained_file: str | None = None,
                 contrast_norm: bool = True) -> None:
        super().__init__()
        check_arch(arch)
        self.contrast = LocalContrastNorm(in_chans) if contrast_norm else nn.Identity()
        weights = {"pretrained": pretrained or bool(pretrained_file)}
        if pretrained_file:
            weights["pretrained_cfg_overlay"] = {"file": pretrained_file}
        whole = timm.create_model(arch, in_chans=in_chans, num_classes=0, **weights)
        info = whole.feature_info
        levels = [i for i, level in enumerate(info) if level["reduction"] <= MAX_REDUCTION]
        if not levels:
            raise ValueError(f"{arch}: no feature level with a reduction of {MAX_REDUCTION} or less")
        self.level = levels[-1]
        self.reduction, self.channels = int(info[self.level]["reduction"]), int(info[self.level]["num_chs"])
        # A network whose last level is fine enough (local_cnn) is used whole; a deeper one is cut at that level.
        self.whole = self.level == len(info) - 1
        self.net = whole if self.whole else timm.create_model(arch, in_chans=in_chans, features_only=True,
                                                              out_indices=(self.level,), **weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.contrast(x)
        return self.net.forward_features(x) if self.whole else self.net(x)[0]


class AnomalyTeacher(nn.Module):
    """The trunk and a 1x1 head that calls each location good or (synthetic) defect: the head only trains the
    trunk's features on the line's own good parts when no published weights exist."""

    def __init__(self, trunk: FeatureTrunk) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Conv2d(trunk.channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return features, self.head(features)


class AnomalyStudent(nn.Module):
    """The student's trunk and a 1x1 projection to the teacher's channels, resized to the teacher's grid."""

    def __init__(self, trunk: FeatureTrunk, teacher_channels: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.project = nn.Sequential(nn.Conv2d(trunk.channels, trunk.channels, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(trunk.channels, teacher_channels, 1))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.project(self.trunk(x))
        return out if tuple(out.shape[-2:]) == tuple(size) else F.interpolate(out, size=size, mode="bilinear",
                                                                               align_corners=False)


def discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per location, the mean squared difference over channels: N x 1 x h x w."""
    return (student - teacher).pow(2).mean(dim=1, keepdim=True)


def image_score(cells: torch.Tensor, mode: str, topk_fraction: float) -> torch.Tensor:
    """N x 1 x h x w map -> N scores: the map's max, or the mean of its top share of cells."""
    flat = cells.flatten(1)
    if mode == "max":
        return flat.max(dim=1).values
    k = max(1, int(round(int(flat.shape[1]) * topk_fraction)))  # a constant: the input size is fixed
    return flat.topk(k, dim=1).values.mean(dim=1)


class AnomalyModel(nn.Module):
    """What the bundle runs: images -> (score, anomaly_map[, kind_distance]).

    ``mean``/``std``: the teacher's per-channel feature statistics on good training parts (the student regresses
    normalised features, so no channel dominates). ``scale``: the score that becomes 1.0 (the 99th percentile of
    good validation parts), applied to the map too. ``centres``: the hybrid's named defect kinds, as centres of
    the anomaly-weighted pooled teacher features."""

    def __init__(self, teacher: FeatureTrunk, student: AnomalyStudent, score_mode: str = "topk_mean",
                 topk_fraction: float = 0.02) -> None:
        super().__init__()
        self.teacher, self.student = teacher, student
        self.score_mode, self.topk_fraction = score_mode, topk_fraction
        self.register_buffer("mean", torch.zeros(1, teacher.channels, 1, 1))
        self.register_buffer("std", torch.ones(1, teacher.channels, 1, 1))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("centres", torch.zeros(0, teacher.channels))
        # Where cell (0, 0) of the teacher's grid looks, in input px (x, y): set by ``cell_origin`` after training.
        self.register_buffer("origin", torch.full((2,), (teacher.reduction - 1) / 2))

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.teacher(x) - self.mean) / self.std

    def cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(discrepancy map on the feature grid, unscaled; normalised teacher features)."""
        t = self.teacher_features(x)
        return discrepancy(self.student(x, tuple(t.shape[-2:])), t), t

    def raw_scores(self, x: torch.Tensor) -> torch.Tensor:
        return image_score(self.cells(x)[0], self.score_mode, self.topk_fraction)

    def descriptor(self, cells: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The part's teacher features pooled where the map says the part differs: what the defect looks like."""
        weight = cells / cells.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        return (t * weight).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor):
        cells, t = self.cells(x)
        score = image_score(cells, self.score_mode, self.topk_fraction) / self.scale
        amap = self.to_pixels(cells, tuple(x.shape[-2:])) / self.scale
        if self.centres.shape[0] == 0:
            return score, amap
        desc = self.descriptor(cells, t)
        return score, amap, (desc[:, None, :] - self.centres[None]).pow(2).sum(dim=-1)

    def to_pixels(self, cells: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The cell map resampled to the input's pixels, each cell placed where it looks (``origin``): plain
        bilinear upsampling assumes the middle of the cell's pixels, 1.5 px off for stride-2 3x3 convolutions."""
        h, w = size
        rows, cols = cells.shape[-2:]
        stride = self.teacher.reduction
        ys = ((torch.arange(h, dtype=cells.dtype, device=cells.device) - self.origin[1]) / stride) / max(rows - 1, 1) * 2 - 1
        xs = ((torch.arange(w, dtype=cells.dtype, device=cells.device) - self.origin[0]) / stride) / max(cols - 1, 1) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0).expand(cells.shape[0], h, w, 2)
        return F.grid_sample(cells, grid, mode="bilinear", padding_mode="border", align_corners=True)

    @property
    def named_kinds(self) -> int:
        return int(self.centres.shape[0])


def cell_origin(trunk: FeatureTrunk, inputs: torch.Tensor) -> tuple[float, float]:
    """Where a cell of the trunk looks, as (x, y) input px of cell (0, 0)'s centre: the centre of mass of
    |d cell / d input| for a central cell, minus its index times the stride (as ``kit.export.heatmap_head`` does
    for classifiers' maps)."""
    x = inputs.clone().requires_grad_(True)
    features = trunk(x)
    rows, cols = features.shape[2:]
    i, j = rows // 2, cols // 2
    (grad,) = torch.autograd.grad(features[:, :, i, j].abs().sum(), x)
    weight = grad.abs().sum(dim=(0, 1)).double()
    height, width = weight.shape
    centre_y = float((weight.sum(1) * torch.arange(height, dtype=torch.float64)).sum() / weight.sum())
    centre_x = float((weight.sum(0) * torch.arange(width, dtype=torch.float64)).sum() / weight.sum())
    return centre_x - trunk.reduction * j, centre_y - trunk.reduction * i


def build_anomaly_model(args: dict[str, Any]) -> AnomalyModel:
    """The model a checkpoint's ``model_args`` describe (random weights; the state dict fills them)."""
    norm = bool(args.get("contrast_norm", True))
    teacher = FeatureTrunk(args["teacher_arch"], args["in_chans"], contrast_norm=norm)
    student = AnomalyStudent(FeatureTrunk(args["student_arch"], args["in_chans"], contrast_norm=norm), teacher.channels)
    model = AnomalyModel(teacher, student, args["score"], args["topk_fraction"])
    kinds = len(args.get("kinds") or [])
    model.centres = torch.zeros(kinds, teacher.channels)
    return model


def load_anomaly_model(path: Any) -> tuple[AnomalyModel, dict[str, Any]]:
    """An anomaly ``student.pt`` (weights only, as every kit checkpoint), rebuilt and in eval mode."""
    from kit.errors import CheckpointError
    from kit.models.factory import load_checkpoint_file

    body = load_checkpoint_file(path)
    args = body["model_args"]
    if args.get("kind") != "anomaly":
        raise CheckpointError(f"{path}: not an anomaly-mode model (a {args.get('arch', 'classifier')}); "
                              "this run's recipe has task: anomaly")
    model = build_anomaly_model(args)
    try:
        model.load_state_dict(body["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the anomaly model: {str(exc).splitlines()[0]}") from None
    return model.eval(), body
