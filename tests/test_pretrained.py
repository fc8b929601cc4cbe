"""Pretrained weights: a local file (``pretrained_file``) and timm's published weights through its
Hugging Face cache (``pretrained: true``). timm adapts both to the line: a grey line's first
convolution is the sum of the RGB kernels, and a classifier of another class count is replaced.

The weight files are made here from a timm model; nothing is downloaded. The published-weights
tests run in a fresh interpreter because huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HOME``
once, at import, and that interpreter refuses every socket, so a network attempt fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from kit.errors import RecipeError
from kit.models import check_pretrained, create_model
from kit.recipe import parse_recipe
from tests.conftest import tiny_recipe_dict

ARCH = "resnet10t"
FIRST_CONV = "conv1.0.weight"  # timm's pretrained_cfg["first_conv"] for resnet10t
CLASSIFIER = ("fc.weight", "fc.bias")
HUB_REPO = "models--timm--resnet10t.c3_in1k"  # timm's hf_hub_id for resnet10t, in the hub cache's layout


def _saved_weights(num_classes: int) -> dict[str, torch.Tensor]:
    """An RGB resnet10t's state dict with every float tensor shifted by 0.5: unlike any random init."""
    torch.manual_seed(123)
    source = timm.create_model(ARCH, num_classes=num_classes, in_chans=3)
    return {k: (v + 0.5 if v.is_floating_point() else v).contiguous() for k, v in source.state_dict().items()}


def _write(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _fresh_classifier(in_chans: int, seed: int) -> dict[str, torch.Tensor]:
    """The classifier timm initialises for a 3-class model after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=3, in_chans=in_chans)
    return {k: v for k, v in model.state_dict().items() if k in CLASSIFIER}


def _check_adapted(got: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], in_chans: int,
                   fresh: dict[str, torch.Tensor]) -> None:
    expected_conv = saved[FIRST_CONV].sum(dim=1, keepdim=True) if in_chans == 1 else saved[FIRST_CONV]
    assert got[FIRST_CONV].shape == (saved[FIRST_CONV].shape[0], in_chans, 3, 3)
    assert torch.equal(got[FIRST_CONV], expected_conv)
    assert got["fc.weight"].shape == (3, 512)
    for key in CLASSIFIER:
        assert torch.equal(got[key], fresh[key])  # timm's own initialisation, not the saved classifier
    body = [k for k in saved if k != FIRST_CONV and k not in CLASSIFIER]
    assert body and all(torch.equal(got[k], saved[k]) for k in body)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("source_classes", [1000, 7])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_pretrained_file_adapts_first_conv_and_replaces_classifier(tmp_path, suffix, source_classes, in_chans):
    saved = _saved_weights(source_classes)
    path = _write(saved, tmp_path / f"weights{suffix}")
    torch.manual_seed(5)
    model = create_model(ARCH, 3, in_chans, pretrained_file=path)
    _check_adapted(model.state_dict(), saved, in_chans, _fresh_classifier(in_chans, seed=5))


def test_pretrained_and_pretrained_file_exclude_each_other():
    recipe = tiny_recipe_dict("images", **{"student.pretrained": True, "student.pretrained_file": "w.pth"})
    with pytest.raises(RecipeError, match=r"^<recipe>: student\.pretrained_file: set pretrained: true or "
                                          r"pretrained_file, not both \(got 'w\.pth'\)$"):
        parse_recipe(json.dumps(recipe), check=False)


def test_pretrained_needs_published_weights():
    unpublished = next(name for name in timm.list_models("resnet*") if not timm.models.is_model_pretrained(name))
    with pytest.raises(RecipeError, match=rf"^teacher\.pretrained: timm publishes no weights for '{unpublished}'; "
                                          r"train from scratch \(pretrained: false\) or set teacher\.pretrained_file$"):
        check_pretrained(unpublished, where="teacher")


# -- published weights, offline (fresh interpreter, sockets refused) ---------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent("""
    import json, socket, sys

    class NetworkUsed(BaseException):
        pass

    def refuse(*args, **kwargs):
        raise NetworkUsed("a socket was opened")

    socket.socket.connect = socket.getaddrinfo = socket.create_connection = refuse

    import torch
    from kit.errors import CheckpointError
    from kit.models import create_model

    torch.manual_seed(5)
    try:
        model = create_model("resnet10t", 3, int(sys.argv[1]), pretrained=True, where="teacher")
    except CheckpointError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        torch.save(model.state_dict(), sys.argv[2])
        print(json.dumps({"saved": sys.argv[2]}))
""")


def _run_offline(tmp_path: Path, monkeypatch, hf_home: Path, in_chans: int) -> dict:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    out = tmp_path / "model.pt"
    done = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, str(in_chans), str(out)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ), cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pretrained_offline_without_cache_is_one_line_with_the_prefetch_hint(tmp_path, monkeypatch):
    hf_home = tmp_path / "empty_hf_home"
    hf_home.mkdir()
    result = _run_offline(tmp_path, monkeypatch, hf_home, in_chans=1)
    assert result["error"] == (
        f"teacher.pretrained: the published resnet10t weights are not in the local cache ({hf_home / 'hub'}) and "
        "cannot be downloaded (HF_HUB_OFFLINE=1); pre-fetch them on a connected machine with "
        "`python -c \"import timm; timm.create_model('resnet10t', pretrained=True)\"` and copy ~/.cache/huggingface "
        "to this PC (or point HF_HOME at the copy), or download the weights file and set teacher.pretrained_file"
    )


@pytest.mark.parametrize("in_chans", [1, 3])
def test_pretrained_offline_loads_a_copied_cache_and_adapts_it(tmp_path, monkeypatch, in_chans):
    """What the README tells a plant to do: a cache filled elsewhere, copied over, used offline."""
    saved = _saved_weights(1000)
    commit = "0" * 40
    repo = tmp_path / "hf_home" / "hub" / HUB_REPO
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    _write(saved, repo / "snapshots" / commit / "model.safetensors")
    result = _run_offline(tmp_path, monkeypatch, tmp_path / "hf_home", in_chans)
    got = torch.load(result["saved"], weights_only=True)
    _check_adapted(got, saved, in_chans, _fresh_classifier(in_chans, seed=5))


def _fill_cache(hub: Path) -> None:
    """resnet10t's published weights as a copied Hugging Face cache holds them (made here, not downloaded)."""
    commit = "1" * 40
    repo = hub / HUB_REPO
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    _write(_saved_weights(1000), repo / "snapshots" / commit / "model.safetensors")


def test_published_weights_are_found_in_a_cache_without_a_network(tmp_path):
    from kit.models import published_weights_cached

    hub = tmp_path / "hub"
    hub.mkdir()
    assert not published_weights_cached(ARCH, cache_dir=hub)
    _fill_cache(hub)
    assert published_weights_cached(ARCH, cache_dir=hub)
    assert not published_weights_cached("resnet18", cache_dir=hub)  # another architecture's weights are not there
    assert not published_weights_cached("ese_vovnet19b_slim_dw", cache_dir=hub)  # timm publishes none


@pytest.mark.parametrize("cached", [True, False])
def test_the_scaffold_uses_cached_published_weights_and_otherwise_says_how_to_get_them(tmp_path, tiny_line, cached):
    from kit.onboard.init_line import init_line
    from kit.recipe import load_recipe

    path, _ = init_line(tiny_line, "tiny", tmp_path / "tiny.yaml", gpu=False, weights_cached=cached)
    text = path.read_text()
    assert load_recipe(path).teacher.pretrained is cached
    if cached:
        assert "  pretrained: true              # timm's published resnet10t weights, found in this PC's cache" in text
    else:
        assert "  # pretrained: true            # published weights: the usual remedy when few or small defects starve" in text
