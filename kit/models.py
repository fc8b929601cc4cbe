"""timm models and self-describing checkpoints.

Every model comes from ``timm.create_model``. Pretrained weights come only from a local file
(``pretrained_file``), loaded by timm itself, which adapts the first convolution to the
line's channel count and drops a mismatched classifier. Checkpoints carry the arguments that
rebuild the model, and are loaded with ``torch.load(weights_only=True)``: a pickle that tries
to run code is refused.
"""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from kit.errors import CheckpointError, RecipeError
from kit.io import write_atomic

CHECKPOINT_FORMAT = "inspection-kit/model"
CHECKPOINT_VERSION = 1


def check_arch(arch: str, where: str = "arch") -> None:
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else "; `python -c 'import timm; print(timm.list_models(\"*resnet*\"))'` lists names"
        raise RecipeError(f"{where}: unknown timm architecture {arch!r}{hint}")


def create_model(
    arch: str,
    num_classes: int,
    in_chans: int,
    *,
    pretrained_file: str | Path | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """A timm classifier; with ``pretrained_file``, timm loads and adapts local weights."""
    check_arch(arch)
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if pretrained_file is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
    try:
        return timm.create_model(arch, **kwargs)
    except (RuntimeError, pickle.UnpicklingError, OSError, KeyError) as exc:
        raise CheckpointError(f"{pretrained_file}: timm cannot load these weights into {arch}: {str(exc).splitlines()[0]}") from None


def model_args(arch: str, num_classes: int, in_chans: int) -> dict[str, Any]:
    return {"arch": arch, "num_classes": num_classes, "in_chans": in_chans}


def save_checkpoint(path: str | Path, model: nn.Module, args: dict[str, Any], **meta: Any) -> Path:
    """State dict + rebuild arguments + metadata (classes, role, epoch, scores), atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    body = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_args": dict(args), "state_dict": state, **meta}
    return write_atomic(path, lambda tmp: torch.save(body, tmp))


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Any kit checkpoint file, safely; one-line errors for everything that can go wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects that could run code; "
                "only kit checkpoints (tensors and plain data) are accepted"
            ) from None
        raise CheckpointError(f"{path}: not a checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an inspection-kit checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    return body


def load_model(
    path: str | Path,
    *,
    expect_arch: str | None = None,
    expect_classes: list[str] | None = None,
    expect_in_chans: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kit checkpoint and check that it fits what the recipe expects."""
    body = load_checkpoint_file(path)
    args = body["model_args"]
    if expect_arch is not None and args["arch"] != expect_arch:
        raise CheckpointError(f"{path}: checkpoint is a {args['arch']!r}, the recipe asks for {expect_arch!r}")
    if expect_classes is not None:
        saved = body.get("classes")
        if args["num_classes"] != len(expect_classes):
            raise CheckpointError(
                f"{path}: checkpoint has {args['num_classes']} classes, the line's data has {len(expect_classes)} ({', '.join(expect_classes)})"
            )
        if saved is not None and list(saved) != list(expect_classes):
            raise CheckpointError(f"{path}: checkpoint classes {saved} differ from the data's classes {expect_classes}")
    if expect_in_chans is not None and args["in_chans"] != expect_in_chans:
        raise CheckpointError(f"{path}: checkpoint expects {args['in_chans']} input channel(s), the recipe gives {expect_in_chans}")
    model = create_model(args["arch"], args["num_classes"], args["in_chans"])
    try:
        model.load_state_dict(body["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {args['arch']}: {str(exc).splitlines()[0]}") from None
    return model, body
