"""The registry of student training methods: ``crld``, ``kd``, ``none``.

A method is everything about it in one place: the recipe settings it accepts (a pydantic model,
as albumentations keeps each transform's schema with the transform), the views the student sees,
whether it needs a teacher, and its loss. The recipe schema validates ``distill:`` and
``compare:`` against this registry, and the training loop knows nothing method-specific, so a new
method is one ``register_method`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported by the losses when they run, not here: the recipe schema validates ``distill:``
# against this registry, and reading a recipe (``kit ingest``, ``kit shadow``) needs no torch.

# (student logits per view, teacher logits per view or None, target, settings) -> (loss, parts).
# Parts stay tensors: calling .item() every step would be a CPU-GPU sync point. With recipe
# ``balance: loss`` the loss is also called with ``class_weight=`` (per-class cross-entropy weights).
LossFn = Callable[[dict[str, "Tensor"], "dict[str, Tensor] | None", "Tensor", Any], tuple["Tensor", dict[str, "Tensor"]]]


class MethodSettings(BaseModel):
    """Base of every method's ``distill:`` settings; ``method`` names the registered method."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    method: str


@dataclass(frozen=True)
class DistillMethod:
    name: str
    views: tuple[str, ...]  # the views the student is trained on, each its own forward pass
    uses_teacher: bool
    loss: LossFn
    description: str
    settings: type[MethodSettings]  # the recipe's ``distill:`` block for this method


_METHODS: dict[str, DistillMethod] = {}


def register_method(method: DistillMethod) -> DistillMethod:
    if method.name in _METHODS:
        raise ValueError(f"distillation method {method.name!r} is registered twice")
    declared = method.settings.model_fields["method"].default
    if declared != method.name:
        raise ValueError(f"distillation method {method.name!r}: its settings declare method={declared!r}")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """For tests and plug-ins that register a method for a while."""
    _METHODS.pop(name, None)


def get_method(name: str) -> DistillMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown distillation method {name!r}; choose from {', '.join(list_methods())}") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)


def default_settings(name: str) -> MethodSettings:
    """A method's recipe defaults: comparison students use the method as published."""
    return get_method(name).settings()


# -- crld ------------------------------------------------------------------------------------------

class CRLDConfig(MethodSettings):
    """Cross-view consistency distillation; see ``kit.distill.losses.crld_loss``."""

    method: Literal["crld"] = "crld"
    temperature: Annotated[float, Field(gt=0)] = 4.0
    ce_weight: Annotated[float, Field(ge=0)] = 1.0
    within_weight: Annotated[float, Field(ge=0)] = 2.0
    cross_weight: Annotated[float, Field(ge=0)] = 0.5
    tau_weak: Annotated[float, Field(ge=0, le=1)] = 0.9
    tau_strong: Annotated[float, Field(ge=0, le=1)] = 0.2


def _crld(student: dict[str, Tensor], teacher: dict[str, Tensor] | None, target: Tensor, cfg: CRLDConfig,
          class_weight: Tensor | None = None):
    from kit.distill.losses import crld_loss

    assert teacher is not None
    out = crld_loss(
        student["weak"], student["strong"], teacher["weak"], teacher["strong"], target,
        temperature=cfg.temperature, ce_weight=cfg.ce_weight, within_weight=cfg.within_weight,
        cross_weight=cfg.cross_weight, tau_weak=cfg.tau_weak, tau_strong=cfg.tau_strong, class_weight=class_weight,
    )
    parts = {
        "ce": out.ce, "within": out.within, "cross": out.cross,
        "mask_weak_frac": out.mask_weak.mean(), "mask_strong_frac": out.mask_strong.mean(),
    }
    return out.total, parts


# -- kd --------------------------------------------------------------------------------------------

class KDConfig(MethodSettings):
    """Hinton knowledge distillation on the weak view."""

    method: Literal["kd"] = "kd"
    temperature: Annotated[float, Field(gt=0)] = 4.0
    ce_weight: Annotated[float, Field(ge=0)] = 0.1
    kd_weight: Annotated[float, Field(ge=0)] = 0.9


def _kd(student: dict[str, Tensor], teacher: dict[str, Tensor] | None, target: Tensor, cfg: KDConfig,
        class_weight: Tensor | None = None):
    from kit.distill.losses import kd_loss

    assert teacher is not None
    out = kd_loss(student["weak"], teacher["weak"], target, temperature=cfg.temperature,
                  ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight, class_weight=class_weight)
    return out.total, {"ce": out.ce, "kd": out.kd}


# -- none ------------------------------------------------------------------------------------------

class NoDistillConfig(MethodSettings):
    """Cross-entropy on the weak view only: the baseline a distillation method must beat."""

    method: Literal["none"] = "none"


def _none(student: dict[str, Tensor], teacher: dict[str, Tensor] | None, target: Tensor, cfg: NoDistillConfig,
          class_weight: Tensor | None = None):
    import torch.nn.functional as F

    ce = F.cross_entropy(student["weak"], target, weight=class_weight)
    return ce, {"ce": ce}


register_method(DistillMethod("crld", ("weak", "strong"), True, _crld,
                              "cross-view consistency distillation: within- and cross-view KD, confidence-masked",
                              CRLDConfig))
register_method(DistillMethod("kd", ("weak",), True, _kd, "Hinton KD on the weak view", KDConfig))
register_method(DistillMethod("none", ("weak",), False, _none, "cross-entropy on the weak view, no teacher",
                              NoDistillConfig))
