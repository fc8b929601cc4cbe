"""The registry of student training methods: ``crld``, ``kd``, ``none``.

A method says which views the student sees and turns student (and teacher) logits into a
loss plus the parts worth logging. The training loop knows nothing method-specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from kit.distill.losses import crld_loss, kd_loss

# (student logits per view, teacher logits per view or None, target, config) -> (loss, parts).
# Parts stay tensors: calling .item() every step would be a CPU-GPU sync point.
LossFn = Callable[[dict[str, Tensor], dict[str, Tensor] | None, Tensor, Any], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class DistillMethod:
    name: str
    views: tuple[str, ...]  # the views the student is trained on, each its own forward pass
    uses_teacher: bool
    loss: LossFn
    description: str


_METHODS: dict[str, DistillMethod] = {}


def register_method(method: DistillMethod) -> DistillMethod:
    if method.name in _METHODS:
        raise ValueError(f"distillation method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> DistillMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown distillation method {name!r}; choose from {', '.join(list_methods())}") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)


def _crld(student: dict[str, Tensor], teacher: dict[str, Tensor] | None, target: Tensor, cfg: Any):
    assert teacher is not None
    out = crld_loss(
        student["weak"], student["strong"], teacher["weak"], teacher["strong"], target,
        temperature=cfg.temperature, ce_weight=cfg.ce_weight, within_weight=cfg.within_weight,
        cross_weight=cfg.cross_weight, tau_weak=cfg.tau_weak, tau_strong=cfg.tau_strong,
    )
    parts = {
        "ce": out.ce, "within": out.within, "cross": out.cross,
        "mask_weak_frac": out.mask_weak.mean(), "mask_strong_frac": out.mask_strong.mean(),
    }
    return out.total, parts


def _kd(student: dict[str, Tensor], teacher: dict[str, Tensor] | None, target: Tensor, cfg: Any):
    assert teacher is not None
    out = kd_loss(student["weak"], teacher["weak"], target, temperature=cfg.temperature,
                  ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight)
    return out.total, {"ce": out.ce, "kd": out.kd}


def _none(student: dict[str, Tensor], teacher: dict[str, Tensor] | None, target: Tensor, cfg: Any):
    ce = F.cross_entropy(student["weak"], target)
    return ce, {"ce": ce}


register_method(DistillMethod("crld", ("weak", "strong"), True, _crld,
                              "cross-view consistency distillation: within- and cross-view KD, confidence-masked"))
register_method(DistillMethod("kd", ("weak",), True, _kd, "Hinton KD on the weak view"))
register_method(DistillMethod("none", ("weak",), False, _none, "cross-entropy on the weak view, no teacher"))
