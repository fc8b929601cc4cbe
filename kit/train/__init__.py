"""Training: teacher by cross-entropy, student by a distillation method."""

from kit.train.device import DeviceSetup, resolve_device
from kit.train.loop import FitResult, Reporter, fit
from kit.train.stages import StageContext, train_student, train_teacher

__all__ = ["DeviceSetup", "FitResult", "Reporter", "fit", "StageContext", "resolve_device", "train_student", "train_teacher"]
