"""A teacher built from several models (``teacher.ensemble``): the averaged logits, the checkpoint
that rebuilds it, the run stage that trains its members, and the recipe's one-line errors."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch

from deploy.preprocess import PreprocessSpec
from kit.errors import CheckpointError, RecipeError
from kit.models import EnsembleModel, create_model, ensemble_args, load_checkpoint_file, load_model, model_args, save_checkpoint
from kit.recipe import parse_recipe
from kit.rundir import HISTORY_NAME, checkpoint_path
from kit.run import run_line
from kit.train.distributed import SINGLE
from kit.train.roles import TrainContext, ensemble_member_recipes, train_teacher_ensemble
from tests.conftest import tiny_recipe_dict, write_recipe

CLASSES = ["dent", "ok", "scratch"]


def _members(archs: list[str], in_chans: int = 1) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [create_model(arch, len(CLASSES), in_chans).eval() for arch in archs]


def _saved_ensemble(path, archs: list[str]) -> EnsembleModel:
    ensemble = EnsembleModel(_members(archs)).eval()
    save_checkpoint(path, ensemble, ensemble_args([model_args(a, len(CLASSES), 1) for a in archs]), classes=CLASSES)
    return ensemble


def test_ensemble_logits_are_the_mean_of_the_members_logits():
    members = _members(["resnet10t", "resnet10t", "mobilenetv3_small_050"])
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = (members[0](x) + members[1](x) + members[2](x)) / 3
        got = EnsembleModel(members).eval()(x)
    assert got.dtype == torch.float32 and got.shape == (4, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_an_ensemble_needs_two_members():
    with pytest.raises(ValueError, match=r"^an ensemble needs at least 2 members \(got 1\)$"):
        EnsembleModel(_members(["resnet10t"]))


def test_an_ensemble_checkpoint_round_trips(tmp_path):
    path = tmp_path / "teacher.pt"
    ensemble = _saved_ensemble(path, ["resnet10t", "resnet10t"])
    loaded, body = load_model(path, expect_arch="resnet10t", expect_classes=CLASSES, expect_in_chans=1)
    assert body["model_args"]["arch"] == "ensemble" and body["model_args"]["num_classes"] == 3
    assert [m["arch"] for m in body["model_args"]["members"]] == ["resnet10t", "resnet10t"]
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), ensemble(x))


def test_expect_arch_applies_to_every_member(tmp_path):
    path = tmp_path / "teacher.pt"
    _saved_ensemble(path, ["resnet10t", "mobilenetv3_small_050"])
    load_model(path, expect_arch="ensemble")
    with pytest.raises(CheckpointError, match=r"teacher\.pt: checkpoint is an ensemble of resnet10t, "
                                              r"mobilenetv3_small_050, the recipe asks for 'resnet10t'$"):
        load_model(path, expect_arch="resnet10t")
    with pytest.raises(CheckpointError, match=r"teacher\.pt: checkpoint expects 1 input channel\(s\), the recipe gives 3$"):
        load_model(path, expect_in_chans=3)


def test_members_get_their_own_role_seed_and_arch(tmp_path):
    recipe = parse_recipe(json.dumps(tiny_recipe_dict(tmp_path, **{
        "seed": 7, "teacher.ensemble": {"archs": ["resnet10t", "mobilenetv3_small_050"]}})), check=False)
    members = ensemble_member_recipes(recipe)
    assert [(role, r.seed, r.teacher.arch, r.teacher.ensemble) for role, r in members] == [
        ("teacher-m0", 7, "resnet10t", None), ("teacher-m1", 107, "mobilenetv3_small_050", None)]
    assert all(r.teacher.epochs == recipe.teacher.epochs and r._base_dir == recipe._base_dir for _, r in members)


def _checkpoint_ctx(tmp_path, files: list[str]) -> SimpleNamespace:
    """The part of a RunContext that an ensemble of existing checkpoints reads."""
    recipe = parse_recipe(json.dumps(tiny_recipe_dict(tmp_path, **{"teacher.ensemble": {"checkpoints": files}})),
                          base_dir=tmp_path, check=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return SimpleNamespace(recipe=recipe, run_dir=run_dir, is_main=True, dctx=SINGLE, log=lambda message: None,
                           train=TrainContext(recipe, {}, CLASSES, PreprocessSpec(image_size=(32, 32)), {}, None, run_dir))


def test_an_ensemble_of_checkpoints_trains_nothing(tmp_path):
    for name, arch in (("a.pt", "resnet10t"), ("b.pt", "mobilenetv3_small_050")):
        save_checkpoint(tmp_path / name, create_model(arch, 3, 1), model_args(arch, 3, 1), classes=CLASSES, role="teacher")
    ctx = _checkpoint_ctx(tmp_path, ["a.pt", "b.pt"])
    train_teacher_ensemble(ctx, {"classes": CLASSES, "role": "teacher"}, on_epoch=lambda role: None)
    body = load_checkpoint_file(checkpoint_path(ctx.run_dir, "teacher"))
    assert [m["arch"] for m in body["model_args"]["members"]] == ["resnet10t", "mobilenetv3_small_050"]
    assert [m["source"] for m in body["ensemble"]] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]


def test_an_ensemble_checkpoint_of_other_classes_is_refused(tmp_path):
    save_checkpoint(tmp_path / "a.pt", create_model("resnet10t", 3, 1), model_args("resnet10t", 3, 1), classes=CLASSES)
    save_checkpoint(tmp_path / "b.pt", create_model("resnet10t", 2, 1), model_args("resnet10t", 2, 1), classes=["ok", "nok"])
    ctx = _checkpoint_ctx(tmp_path, ["a.pt", "b.pt"])
    with pytest.raises(CheckpointError, match=r"b\.pt: checkpoint has 2 classes, the line's data has 3 \(dent, ok, scratch\)$"):
        train_teacher_ensemble(ctx, {"role": "teacher"}, on_epoch=lambda role: None)


@pytest.mark.slow
def test_a_resumed_run_does_not_train_a_finished_member_again(tmp_path):
    ctx = _checkpoint_ctx(tmp_path, ["a.pt", "b.pt"])
    ctx.recipe = ctx.recipe.model_copy(update={"teacher": ctx.recipe.teacher.model_copy(update={
        "ensemble": ctx.recipe.teacher.ensemble.model_copy(update={"members": 2, "checkpoints": None})})})
    ctx.checkpoint_dir, ctx.resume = tmp_path / "checkpoints", True
    ctx.checkpoint_dir.mkdir()
    for role in ("teacher-m0", "teacher-m1"):  # both finished before the interruption
        save_checkpoint(checkpoint_path(ctx.checkpoint_dir, role), create_model("resnet10t", 3, 1),
                        model_args("resnet10t", 3, 1), classes=CLASSES, role=role)
    # ctx.train is no TrainContext here: training a member would fail
    train_teacher_ensemble(ctx, {"role": "teacher"}, on_epoch=lambda role: None)
    body = load_checkpoint_file(checkpoint_path(ctx.run_dir, "teacher"))
    assert [m["role"] for m in body["ensemble"]] == ["teacher-m0", "teacher-m1"] and "source" not in body["ensemble"][0]


@pytest.mark.slow
def test_a_run_with_an_ensemble_teacher(tmp_path, tiny_line):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(
        tiny_line, compare=[], **{"teacher.ensemble": {"members": 2}, "student.epochs": 1}))
    result = run_line(recipe, out_root=tmp_path / "runs", name="r1", stop_after="train")
    teacher = load_checkpoint_file(checkpoint_path(result.run_dir, "teacher"))
    assert teacher["model_args"]["arch"] == "ensemble"
    assert [m["arch"] for m in teacher["model_args"]["members"]] == ["resnet10t", "resnet10t"]
    assert [m["role"] for m in teacher["ensemble"]] == ["teacher-m0", "teacher-m1"]
    with (result.run_dir / HISTORY_NAME).open(newline="", encoding="utf-8") as fh:
        roles = [row["role"] for row in csv.DictReader(fh)]
    assert roles.count("teacher-m0") == 1 and roles.count("teacher-m1") == 1 and "teacher" not in roles
    assert "student" in roles and 0 <= result.metrics["teacher"]["accuracy"] <= 1


@pytest.mark.parametrize(("ensemble", "message"), [
    ({"members": 2, "archs": ["resnet10t", "resnet18"]},
     r"teacher\.ensemble: set exactly one of members, archs or checkpoints \(got \{'members': 2, 'archs': "),
    ({"archs": ["resnet10t", "resnet18"], "checkpoints": ["a.pt", "b.pt"]},
     r"teacher\.ensemble: set exactly one of members, archs or checkpoints \(got "),
    ({}, r"teacher\.ensemble: set exactly one of members, archs or checkpoints \(got \{\}\)$"),
    ({"members": 1}, r"teacher\.ensemble\.members: an ensemble needs at least 2 members; for a single teacher leave "
                     r"teacher\.ensemble out \(got 1\)$"),
    ({"archs": ["resnet18"]}, r"teacher\.ensemble\.archs: an ensemble needs at least 2 archs; for a single teacher "
                              r"leave teacher\.ensemble out \(got \['resnet18'\]\)$"),
    ({"seeds": 2}, r"teacher\.ensemble\.seeds: unknown field"),
])
def test_ensemble_recipe_errors_are_one_line(ensemble, message):
    with pytest.raises(RecipeError, match=rf"^<recipe>: {message}") as caught:
        parse_recipe(json.dumps(tiny_recipe_dict("images", **{"teacher.ensemble": ensemble})), check=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"teacher.checkpoint": "t.pt"}, r"teacher\.ensemble: teacher\.checkpoint already is the teacher; for an ensemble "
                                     r"of checkpoints use ensemble\.checkpoints"),
    ({"teacher.pretrained_file": "w.pth", "teacher.ensemble": {"archs": ["resnet10t", "resnet18"]}},
     r"teacher\.ensemble: pretrained_file holds weights for one architecture; with ensemble\.archs use pretrained: true"),
])
def test_ensemble_conflicts_are_one_line(overrides, message):
    recipe = tiny_recipe_dict("images", **{"teacher.ensemble": {"members": 2}, **overrides})
    with pytest.raises(RecipeError, match=rf"^<recipe>: {message}") as caught:
        parse_recipe(json.dumps(recipe), check=False)
    assert "\n" not in str(caught.value)


def test_check_recipe_finds_missing_ensemble_checkpoints_and_unknown_archs(tmp_path, tiny_line):
    base = tiny_recipe_dict(tiny_line)
    for ensemble, message in (
        ({"checkpoints": ["a.pt", "b.pt"]}, rf"teacher\.ensemble\.checkpoints\[0\]: file not found: {tmp_path / 'a.pt'}$"),
        ({"archs": ["resnet10t", "resnet81"]}, r"teacher\.ensemble\.archs\[1\]: unknown timm architecture 'resnet81'"),
    ):
        text = json.dumps({**base, "teacher": {**base["teacher"], "ensemble": ensemble}})
        with pytest.raises(RecipeError, match=rf"^<recipe>: {message}"):
            parse_recipe(text, base_dir=tmp_path)


def test_an_ensemble_member_trained_at_another_size_is_refused(tmp_path):
    for name, size in (("a.pt", [32, 32]), ("b.pt", [64, 64])):
        save_checkpoint(tmp_path / name, create_model("resnet10t", 3, 1), model_args("resnet10t", 3, 1), classes=CLASSES,
                        role="teacher", preprocess={"image_size": size})
    ctx = _checkpoint_ctx(tmp_path, ["a.pt", "b.pt"])
    with pytest.raises(CheckpointError, match=rf"^teacher\.ensemble\.checkpoints: {tmp_path / 'b.pt'} was trained on 64x64 px "
                                              r"images, this recipe gives the teacher 32x32; set teacher\.image_size: \[64, 64\]$"):
        train_teacher_ensemble(ctx, {"classes": CLASSES, "role": "teacher"}, on_epoch=lambda role: None)
