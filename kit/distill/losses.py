"""Distillation losses with their formulas; golden-value tests live in tests/test_distill_losses.py."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", per sample.

    ``KD_T(s, t) = T^2 * sum_c softmax(t/T)_c * (log softmax(t/T)_c - log softmax(s/T)_c)``;
    the ``T^2`` keeps gradient magnitudes comparable across temperatures.
    """
    t_log = F.log_softmax(teacher_logits / temperature, dim=1)
    s_log = F.log_softmax(student_logits / temperature, dim=1)
    return temperature**2 * (t_log.exp() * (t_log - s_log)).sum(dim=1)


class KDLoss(NamedTuple):
    total: Tensor
    ce: Tensor
    kd: Tensor


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 4.0,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    class_weight: Tensor | None = None,
) -> KDLoss:
    """``total = ce_weight * CE(s, y) + kd_weight * mean_B KD_T(s, t)`` on one (weak) view.
    ``class_weight`` (recipe ``balance: loss``) weights the cross-entropy per class."""
    ce = F.cross_entropy(student_logits, target, weight=class_weight)
    kd = kd_per_sample(student_logits, teacher_logits.detach(), temperature).mean()
    return KDLoss(ce_weight * ce + kd_weight * kd, ce, kd)


class CRLDLoss(NamedTuple):
    total: Tensor
    ce: Tensor  # CE(s_w, y) + CE(s_s, y), unweighted
    within: Tensor  # mean_B mask_weak * (KD(s_w, t_w) + KD(s_s, t_s)), unweighted
    cross: Tensor  # mean_B mask_strong * (KD(s_s, t_w) + KD(s_w, t_s)), unweighted
    mask_weak: Tensor  # per sample, 0/1
    mask_strong: Tensor  # per sample, 0/1


def crld_loss(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    target: Tensor,
    *,
    temperature: float = 4.0,
    ce_weight: float = 1.0,
    within_weight: float = 2.0,
    cross_weight: float = 0.5,
    tau_weak: float = 0.9,
    tau_strong: float = 0.2,
    class_weight: Tensor | None = None,
) -> CRLDLoss:
    """Cross-view consistency distillation (CRLD), as the method's reference implementation.

    Teacher and student each see a weak and a strong view of the same images. The student
    matches the teacher within each view and across views; samples where the teacher is not
    confident are masked out (confidence = max softmax at temperature 1):

        mask_weak   = max_c softmax(t_w)_c >= tau_weak
        mask_strong = max_c softmax(t_s)_c >= tau_strong
        total = ce_weight     * (CE(s_w, y) + CE(s_s, y))
              + within_weight * mean_B(mask_weak   * (KD_T(s_w, t_w) + KD_T(s_s, t_s)))
              + cross_weight  * mean_B(mask_strong * (KD_T(s_s, t_w) + KD_T(s_w, t_s)))

    The mean runs over the whole batch: masked samples count as zero, they do not shrink the
    denominator. Teacher logits are detached; the teacher runs in eval mode without gradients.
    ``class_weight`` (recipe ``balance: loss``) weights the two cross-entropy terms per class.
    """
    teacher_weak, teacher_strong = teacher_weak.detach(), teacher_strong.detach()
    with torch.no_grad():
        mask_weak = (F.softmax(teacher_weak, dim=1).amax(dim=1) >= tau_weak).to(student_weak.dtype)
        mask_strong = (F.softmax(teacher_strong, dim=1).amax(dim=1) >= tau_strong).to(student_weak.dtype)
    ce = F.cross_entropy(student_weak, target, weight=class_weight) + F.cross_entropy(student_strong, target, weight=class_weight)
    within = (mask_weak * (kd_per_sample(student_weak, teacher_weak, temperature)
                           + kd_per_sample(student_strong, teacher_strong, temperature))).mean()
    cross = (mask_strong * (kd_per_sample(student_strong, teacher_weak, temperature)
                            + kd_per_sample(student_weak, teacher_strong, temperature))).mean()
    total = ce_weight * ce + within_weight * within + cross_weight * cross
    return CRLDLoss(total, ce, within, cross, mask_weak, mask_strong)
