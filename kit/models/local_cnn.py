"""Small-receptive-field classifiers for defects a few pixels across on a textured surface.

Why (``benchmarks/sparse_probe.py``, the sparse line, tables in benchmarks/RESULTS.md): with about
25 training images per defect class, timm's ImageNet-shaped backbones trained from scratch memorise
the whole image (training accuracy 0.95) and stay near chance on new parts, with or without published
input tricks. What generalised was a network that can only look at small neighbourhoods and must
find the defect wherever it is:

- a fixed background flattening in the graph (the image minus its Gaussian blur, sigma 4 input px):
  lighting gradients and the part's slow shading are removed before any learned layer sees them,
  and the runtimes compute it like any other convolution (nothing changes in ``deploy``);
- five 3x3 convolutions, two of them stride 2: a receptive field of about 20 px, so no unit sees
  enough of the image to memorise it;
- a global max over positions: one defective neighbourhood decides, wherever it lies.

Registered with timm (``timm.create_model("local_cnn_s")``) so recipes, checkpoints, export and
``kit.feedback.audit`` treat them like any timm model. No published weights exist for them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__: list[str] = []

FLATTEN_SIGMA_PX = 4.0  # the background scale removed: larger than the defects, smaller than lighting and shading


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class FlattenBackground(nn.Module):
    """``x - gaussian_blur(x, sigma)`` per channel: a fixed (not learned) high-pass, computed as two
    separable depthwise convolutions with reflected borders."""

    def __init__(self, channels: int, sigma_px: float = FLATTEN_SIGMA_PX) -> None:
        super().__init__()
        k = _gaussian_kernel(sigma_px)
        self.channels, self.radius = channels, len(k) // 2
        self.register_buffer("kernel_h", k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("kernel_v", k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        if min(x.shape[-2:]) <= r:
            raise ValueError(f"local_cnn needs inputs larger than {r} px a side (got {tuple(x.shape[-2:])})")
        # In float32 even under autocast: a defect is a small difference of two large values, which bf16's
        # 8-bit mantissa would round away.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()
            blurred = F.conv2d(F.pad(x32, (r, r, 0, 0), mode="reflect"), self.kernel_h.float(), groups=self.channels)
            blurred = F.conv2d(F.pad(blurred, (0, 0, r, r), mode="reflect"), self.kernel_v.float(), groups=self.channels)
            return (x32 - blurred).to(x.dtype)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LocalCNN(nn.Module):
    """Background flattening, five 3x3 conv-BN-ReLU stages (strides 1, 2, 1, 2, 1), global max pool,
    dropout, linear: the timm classifier interface (``forward_features``, ``forward_head``,
    ``reset_classifier``, ``feature_info``) so the kit's heatmaps and audits find their way."""

    STRIDES = (1, 2, 1, 2, 1)

    def __init__(self, widths: tuple[int, ...], num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, global_pool: str = "max", **_ignored: Any) -> None:
        super().__init__()
        if global_pool not in ("max", "avg"):
            raise ValueError(f"local_cnn: global_pool must be max or avg, not {global_pool!r}")
        self.num_classes, self.num_features, self.drop_rate = num_classes, widths[-1], drop_rate
        self.flatten_background = FlattenBackground(in_chans)
        stages, cin, self.feature_info = [], in_chans, []
        for width, stride in zip(widths, self.STRIDES):
            stages.append(_conv_bn_relu(cin, width, stride))
            cin = width
        for i, width in enumerate(widths):  # timm's convention: the last stage at each reduction
            if i + 1 == len(widths) or self.STRIDES[i + 1] > 1:
                self.feature_info.append({"num_chs": width, "reduction": math.prod(self.STRIDES[: i + 1]), "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.flatten_background(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.amax(dim=(2, 3)) if self.global_pool == "max" else x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 1000, "input_size": (3, 128, 128), "pool_size": None, "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "first_conv": "stages.0.0", "classifier": "fc", **kwargs}


default_cfgs = generate_default_cfgs({"local_cnn_s": _cfg(), "local_cnn_m": _cfg()})


def _create(variant: str, widths: tuple[int, ...], pretrained: bool, **kwargs: Any) -> LocalCNN:
    """No published weights exist; ``pretrained`` works only with a local file (``pretrained_file`` in a recipe),
    which timm loads and adapts (channels, classifier) as it does for its own models."""
    if pretrained and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
        raise ValueError(f"{variant} has no published weights; train it from scratch or give a weights file")
    return build_model_with_cfg(LocalCNN, variant, pretrained=pretrained, widths=widths,
                                feature_cfg={"feature_cls": "getter"}, **kwargs)


@register_model
def local_cnn_s(pretrained: bool = False, **kwargs: Any) -> LocalCNN:
    """The student: 16-16-32-32-48 channels, about 31 k parameters."""
    return _create("local_cnn_s", (16, 16, 32, 32, 48), pretrained, **kwargs)


@register_model
def local_cnn_m(pretrained: bool = False, **kwargs: Any) -> LocalCNN:
    """The teacher: 32-32-64-64-96 channels (the probe's network), about 122 k parameters."""
    return _create("local_cnn_m", (32, 32, 64, 64, 96), pretrained, **kwargs)
