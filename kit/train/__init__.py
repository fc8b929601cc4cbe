"""Training: teacher by cross-entropy, student by a distillation method."""

from kit.device import DeviceSetup, resolve_device
from kit.train.loop import FitResult, Reporter, fit
from kit.train.roles import TrainContext, train_student, train_teacher

__all__ = ["DeviceSetup", "FitResult", "Reporter", "TrainContext", "fit", "resolve_device", "train_student", "train_teacher"]
