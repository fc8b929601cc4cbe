"""Distillation: losses and the method registry."""

from kit.distill.losses import crld_loss, kd_loss, kd_per_sample
from kit.distill.methods import DistillMethod, get_method, list_methods, register_method

__all__ = ["DistillMethod", "crld_loss", "get_method", "kd_loss", "kd_per_sample", "list_methods", "register_method"]
