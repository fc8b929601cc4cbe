"""timm models, teacher ensembles and self-describing checkpoints.

Every model comes from ``timm.create_model``. Pretrained weights come from a local file
(``pretrained_file``) or from timm's published weights through its own Hugging Face cache
(``pretrained``); either way timm loads them itself, which adapts the first convolution to the
line's channel count (grey: the sum of the RGB kernels) and drops a mismatched classifier.
An ``EnsembleModel`` averages the logits of several such models. Checkpoints carry the
arguments that rebuild the model (an ensemble: each member's), and are loaded with
``torch.load(weights_only=True)``: a pickle that tries to run code is refused.
"""

from __future__ import annotations

import difflib
import pickle
import urllib.error
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors import SafetensorError
from torch import nn

import kit.models.local_cnn  # noqa: F401  (registers the local_cnn_* architectures with timm)
from kit.errors import CheckpointError, RecipeError
from kit.io import write_atomic

CHECKPOINT_FORMAT = "inspection-kit/model"
CHECKPOINT_VERSION = 1
ENSEMBLE_ARCH = "ensemble"  # model_args["arch"] of an EnsembleModel checkpoint


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
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    drop_rate: float = 0.0,
    where: str = "model",
) -> nn.Module:
    """A timm classifier, randomly initialised or with weights timm loads and adapts itself.

    ``pretrained_file``: a local weights file. ``pretrained``: timm's published weights, from
    its Hugging Face cache (downloaded into it when the machine is online). ``where`` names the
    recipe block (``teacher``, ``student``) in error messages.
    """
    check_arch(arch)
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if pretrained and pretrained_file is not None:
        raise CheckpointError(f"{where}: pretrained and pretrained_file exclude each other; set one")
    if pretrained_file is not None:
        return _create_from_file(arch, kwargs, pretrained_file)
    if pretrained:
        return _create_from_hub(arch, kwargs, where)
    return timm.create_model(arch, **kwargs)


def _create_from_file(arch: str, kwargs: dict[str, Any], pretrained_file: str | Path) -> nn.Module:
    """timm's ``file`` override goes through the same loader as published weights, so the first
    convolution and the classifier are adapted exactly as they would be for those."""
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)), **kwargs)
    except (RuntimeError, pickle.UnpicklingError, OSError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"{pretrained_file}: timm cannot load these weights into {arch}: {str(exc).splitlines()[0]}") from None


def check_pretrained(arch: str, where: str = "model") -> None:
    """timm publishes weights for ``arch`` (a registry look-up; nothing is downloaded)."""
    if not timm.models.is_model_pretrained(arch):
        raise RecipeError(f"{where}.pretrained: timm publishes no weights for {arch!r}; "
                          f"train from scratch (pretrained: false) or set {where}.pretrained_file")


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo, in its order


def published_weights_cached(arch: str, cache_dir: str | Path | None = None) -> bool:
    """timm's published weights for ``arch`` are already in the local Hugging Face cache (``cache_dir``:
    another cache than the default): ``pretrained: true`` would then load without a network."""
    from huggingface_hub import try_to_load_from_cache

    if not timm.models.is_model_pretrained(arch):
        return False
    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    if not repo:
        return False
    try:
        return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=str(cache_dir) if cache_dir else None), str)
                   for name in HUB_WEIGHT_FILES)
    except (OSError, ValueError):  # a damaged or unreadable cache (copied from elsewhere) holds no usable weights
        return False


def _create_from_hub(arch: str, kwargs: dict[str, Any], where: str) -> nn.Module:
    """timm's published weights through its own cache. A plant PC is usually offline, so a cache
    miss becomes one line saying how to fill the cache on a connected machine."""
    check_pretrained(arch, where)
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, urllib.error.URLError):
        raise CheckpointError(_not_cached_message(arch, where)) from None
    except HfHubHTTPError as exc:
        raise CheckpointError(f"{where}.pretrained: the Hugging Face hub refused the {arch} weights: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    except (RuntimeError, pickle.UnpicklingError, SafetensorError) as exc:
        raise CheckpointError(f"{where}.pretrained: timm cannot load its published {arch} weights "
                              f"(a damaged cache?): {str(exc).strip().splitlines()[0]}") from None


def _not_cached_message(arch: str, where: str) -> str:
    """Where timm looked, why it could not download, and the two ways to bring the weights over."""
    if timm.models.get_pretrained_cfg(arch).hf_hub_id:
        cache, copy, env = hub_constants.HF_HUB_CACHE, "~/.cache/huggingface", "HF_HOME"
        why = "HF_HUB_OFFLINE=1" if hub_constants.HF_HUB_OFFLINE else "the hub is not reachable"
    else:  # a few older weights are plain URLs, cached by torch.hub
        cache, copy, env, why = torch.hub.get_dir(), "~/.cache/torch", "TORCH_HOME", "the host is not reachable"
    return (f"{where}.pretrained: the published {arch} weights are not in the local cache ({cache}) and cannot be "
            f"downloaded ({why}); pre-fetch them on a connected machine with "
            f"`python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"` and copy {copy} to this PC "
            f"(or point {env} at the copy), or download the weights file and set {where}.pretrained_file")


def model_args(arch: str, num_classes: int, in_chans: int) -> dict[str, Any]:
    return {"arch": arch, "num_classes": num_classes, "in_chans": in_chans}


class EnsembleModel(nn.Module):
    """Several classifiers as one teacher: the mean of their logits.

    Averaging logits is averaging log-probabilities, so the ensemble's softmax is the normalised
    geometric mean of the members' probabilities: confident only where the members agree, which
    is what CRLD's confidence masks should see. The mean is taken in float32 (members may run
    under autocast).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members (got {len(members)})")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).float() for member in self.members]).mean(dim=0)


def ensemble_args(members: list[dict[str, Any]]) -> dict[str, Any]:
    """An ensemble's rebuild arguments: every member's own, plus the class and channel counts
    they share (so ``load_model`` checks an ensemble like any other model)."""
    shapes = {(m["num_classes"], m["in_chans"]) for m in members}
    if len(shapes) != 1:
        raise CheckpointError(f"ensemble members disagree on (classes, input channels): {sorted(shapes)}")
    ((num_classes, in_chans),) = shapes
    return {"arch": ENSEMBLE_ARCH, "num_classes": num_classes, "in_chans": in_chans, "members": [dict(m) for m in members]}


def create_from_args(args: dict[str, Any]) -> nn.Module:
    """The randomly initialised model that ``args`` (a checkpoint's ``model_args``) describes."""
    if args["arch"] == ENSEMBLE_ARCH:
        return EnsembleModel([create_from_args(m) for m in args["members"]])
    return create_model(args["arch"], args["num_classes"], args["in_chans"])


def member_archs(args: dict[str, Any]) -> list[str]:
    """The timm architectures inside ``args``: one for a single model, every member's for an ensemble."""
    if args["arch"] == ENSEMBLE_ARCH:
        return [arch for m in args["members"] for arch in member_archs(m)]
    return [args["arch"]]


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
    """Rebuild a model from a kit checkpoint and check that it fits what the recipe expects.

    An ensemble checkpoint fits ``expect_arch`` when it is ``"ensemble"`` or when every member is
    that architecture: ``teacher.arch`` names what the teacher is built from, and an ensemble of
    seeds of it (``teacher.ensemble.members``) is still that teacher.
    """
    body = load_checkpoint_file(path)
    args = body["model_args"]
    _check_arch_fits(path, args, expect_arch)
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
    model = create_from_args(args)
    try:
        model.load_state_dict(body["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {args['arch']}: {str(exc).splitlines()[0]}") from None
    return model, body


def _check_arch_fits(path: str | Path, args: dict[str, Any], expect_arch: str | None) -> None:
    if expect_arch is None or args["arch"] == expect_arch:
        return
    if args["arch"] != ENSEMBLE_ARCH:
        raise CheckpointError(f"{path}: checkpoint is a {args['arch']!r}, the recipe asks for {expect_arch!r}")
    archs = member_archs(args)
    if set(archs) != {expect_arch}:
        raise CheckpointError(f"{path}: checkpoint is an ensemble of {', '.join(archs)}, the recipe asks for {expect_arch!r}")
