"""``teacher.image_size``: a teacher that reads larger images than the student.

Both models must see one random transform per view (the student's copy is the teacher's view resized),
and every place that scores the teacher must feed it its own input size.
"""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import torch

from deploy.preprocess import PreprocessSpec, prepare_image, to_tensor
from kit.data import PairedViewDataset
from kit.data.dataset import DecodedSplit, teacher_preprocess_spec
from kit.errors import RecipeError
from kit.models import load_checkpoint_file
from kit.recipe import parse_recipe
from kit.rundir import checkpoint_path, load_split
from kit.run import run_line
from tests.conftest import tiny_recipe_dict, write_recipe

TEACHER, STUDENT = 64, 32


def _dot_image(x: int, y: int, size: int = TEACHER) -> np.ndarray:
    """A dark frame with one bright 4x4 square whose top-left corner is (x, y)."""
    img = np.zeros((size, size, 1), np.uint8)
    img[y:y + 4, x:x + 4] = 255
    return img


def _centre(tensor: torch.Tensor) -> tuple[float, float]:
    """(x, y) centre of mass of the bright pixels of a normalised 1xHxW tensor."""
    weights = tensor[0].numpy() - tensor[0].numpy().min()
    ys, xs = np.mgrid[:weights.shape[0], :weights.shape[1]]
    return float((xs * weights).sum() / weights.sum()), float((ys * weights).sum() / weights.sum())


def _paired(pipeline: A.Compose, image: np.ndarray) -> PairedViewDataset:
    spec = PreprocessSpec(image_size=(STUDENT, STUDENT))
    teacher = PreprocessSpec(image_size=(TEACHER, TEACHER))
    split = DecodedSplit(images=image[None], labels=np.array([0]), samples=[])
    return PairedViewDataset(split, teacher, spec, {"weak": pipeline, "strong": pipeline}, ["weak", "strong"],
                             seed=3, with_teacher=True)


def test_a_known_affine_moves_the_defect_to_the_same_place_for_teacher_and_student():
    # Shift right by a quarter of the width, no randomness: the square moves from x=10 to x=26 at 64 px.
    shift = A.Compose([A.Affine(translate_percent={"x": (0.25, 0.25), "y": (0.0, 0.0)}, p=1.0)], seed=0)
    dataset = _paired(shift, _dot_image(10, 20))
    assert dataset.view_names == ["weak", "strong", "teacher:weak", "teacher:strong"]
    student_weak, _, teacher_weak, _, label = dataset[(0, 0)]
    assert tuple(student_weak.shape) == (1, STUDENT, STUDENT) and tuple(teacher_weak.shape) == (1, TEACHER, TEACHER)
    tx, ty = _centre(teacher_weak)
    assert tx == pytest.approx(10 + 16 + 1.5, abs=0.5) and ty == pytest.approx(21.5, abs=0.5)
    sx, sy = _centre(student_weak)
    assert (sx + 0.5) * 2 - 0.5 == pytest.approx(tx, abs=0.5) and (sy + 0.5) * 2 - 0.5 == pytest.approx(ty, abs=0.5)
    assert label == 0


def test_random_views_share_their_transform_between_teacher_and_student():
    """Random rotation, translation, scale and flips: over many draws the square lands in the same
    place (in the student's pixels) in both copies, while the draws themselves differ."""
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5),
                          A.Affine(rotate=(-30, 30), translate_percent=(-0.15, 0.15), scale=(0.9, 1.1), p=1.0)], seed=0)
    dataset = _paired(pipeline, _dot_image(18, 40))
    centres = []
    for epoch in range(12):
        student_weak, student_strong, teacher_weak, teacher_strong, _ = dataset[(epoch, 0)]
        for student, teacher in ((student_weak, teacher_weak), (student_strong, teacher_strong)):
            sx, sy = _centre(student)
            tx, ty = _centre(teacher)
            assert (sx + 0.5) * 2 - 0.5 == pytest.approx(tx, abs=0.75) and (sy + 0.5) * 2 - 0.5 == pytest.approx(ty, abs=0.75)
            centres.append((round(tx), round(ty)))
    assert len(set(centres)) > 6  # the transform really is random from view to view


def test_the_student_copy_is_the_teacher_view_through_the_one_resize():
    """No transform: the student's copy is exactly ``prepare_image`` of the teacher-size image."""
    image = np.random.default_rng(0).integers(0, 256, (TEACHER, TEACHER, 1), dtype=np.uint8)
    dataset = _paired(A.Compose([], seed=0), image)
    student, _, teacher, _, _ = dataset[(0, 0)]
    spec = PreprocessSpec(image_size=(STUDENT, STUDENT))
    np.testing.assert_array_equal(student.numpy(), to_tensor(prepare_image(image, spec), spec))
    np.testing.assert_array_equal(teacher.numpy(), to_tensor(image, PreprocessSpec(image_size=(TEACHER, TEACHER))))


def test_without_a_teacher_the_dataset_yields_only_the_student_views():
    dataset = PairedViewDataset(DecodedSplit(_dot_image(5, 5)[None], np.array([1]), []),
                                PreprocessSpec(image_size=(TEACHER, TEACHER)), PreprocessSpec(image_size=(STUDENT, STUDENT)),
                                {"weak": A.Compose([], seed=0)}, ["weak"], seed=0, with_teacher=False)
    weak, label = dataset[0]
    assert tuple(weak.shape) == (1, STUDENT, STUDENT) and label == 1


def test_teacher_image_size_in_the_recipe():
    recipe = parse_recipe(json.dumps(tiny_recipe_dict("images", **{"teacher.image_size": 48})), check=False)
    assert recipe.teacher.image_size == (48, 48)
    spec = teacher_preprocess_spec(recipe)
    assert spec.image_size == (48, 48) and spec.channels == "gray"
    same = parse_recipe(json.dumps(tiny_recipe_dict("images")), check=False)
    assert teacher_preprocess_spec(same).image_size == (32, 32)
    with pytest.raises(RecipeError, match=r"teacher\.image_size \[16, 16\] is smaller than data\.image_size \[32, 32\]"):
        parse_recipe(json.dumps(tiny_recipe_dict("images", **{"teacher.image_size": 16})), check=False)


@pytest.mark.slow
def test_a_run_whose_teacher_reads_larger_images(tmp_path, tiny_line):
    """Teacher at the source's 48 px, student at 32 px: every figure about the teacher is measured on 48 px
    inputs (recomputed here from its checkpoint), and the bundle the station runs stays at 32 px."""
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_line, **{"teacher.image_size": 48, "student.epochs": 1}))
    result = run_line(recipe, out_root=tmp_path / "runs", name="r1", stop_after="report")
    run_dir = result.run_dir
    body = load_checkpoint_file(checkpoint_path(run_dir, "teacher"))
    assert body["preprocess"]["image_size"] == [48, 48]
    assert load_checkpoint_file(checkpoint_path(run_dir, "student"))["preprocess"]["image_size"] == [32, 32]
    manifest = json.loads((run_dir / "bundle" / "model.json").read_text())
    assert manifest["preprocess"]["image_size"] == [32, 32]

    from kit.evaluate import predict_logits
    from kit.models import load_model

    teacher, _ = load_model(checkpoint_path(run_dir, "teacher"))
    classes = result.metrics["classes"]
    spec48 = PreprocessSpec.from_dict(body["preprocess"])
    test = load_split(run_dir, "test", spec48, classes)
    pred = predict_logits(teacher, torch.from_numpy(test.inputs(spec48)), torch.device("cpu")).argmax(1).numpy()
    expected = float(np.mean(pred == test.labels))
    assert result.metrics["teacher"]["accuracy"] == pytest.approx(expected)
    assert result.kpi.models["teacher"]["accuracy"] == pytest.approx(expected)
    rung = next(r for r in result.parity["rungs"] if r["rung"] == "teacher")
    assert rung["accuracy"] == pytest.approx(expected)
    # The export's teacher-vs-student figure, recomputed: the teacher on 48 px, the student on 32 px of the same images.
    from deploy.predictor import softmax

    student, _ = load_model(checkpoint_path(run_dir, "student"))
    spec32 = PreprocessSpec.from_dict(manifest["preprocess"])
    student_p = softmax(predict_logits(student, torch.from_numpy(load_split(run_dir, "test", spec32, classes).inputs(spec32)),
                                       torch.device("cpu")).numpy())

    def teacher_p(spec: PreprocessSpec) -> np.ndarray:
        inputs = torch.from_numpy(load_split(run_dir, "test", spec, classes).inputs(spec))
        return softmax(predict_logits(teacher, inputs, torch.device("cpu")).numpy())

    recorded = next(r for r in result.parity["rungs"] if r["rung"] == "student")["vs_teacher"]["mean_abs_delta_p"]
    assert recorded == pytest.approx(float(np.abs(teacher_p(spec48) - student_p).mean()), abs=1e-6)
    assert recorded != pytest.approx(float(np.abs(teacher_p(spec32) - student_p).mean()), abs=1e-6)  # the size matters
    assert "teacher" in result.kpi.robustness["summary"]
    assert "resnet10t (48x48 px; mobilenetv3_small_050: 32x32 px)" in result.report.read_text(encoding="utf-8")
    history = (run_dir / "history.csv").read_text()
    assert "student" in history and "teacher" in history


def test_a_teacher_checkpoint_trained_at_another_size_is_refused(tmp_path, tiny_line, finished_run):
    from typer.testing import CliRunner

    from kit.cli import app

    d = tiny_recipe_dict(tiny_line, **{"teacher.checkpoint": str(finished_run / "teacher.pt"), "teacher.image_size": 48})
    result = CliRunner().invoke(app, ["run", str(write_recipe(tmp_path / "r.yaml", d)), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert (f"teacher.checkpoint: {finished_run / 'teacher.pt'} was trained on 32x32 px images, this recipe gives the "
            "teacher 48x48; leave teacher.image_size out (that is data.image_size)") in " ".join(result.output.split())


def test_views_are_checked_at_the_size_they_are_drawn_at():
    """A crop to the teacher's size is right when the teacher reads larger images; at the student's it is refused
    with the size to use."""
    crop = {"RandomResizedCrop": {"size": [48, 48], "p": 1.0}}
    ok = tiny_recipe_dict("images", **{"teacher.image_size": 48, "views.weak": [crop]})
    assert parse_recipe(json.dumps(ok), check=True, base_dir=None).view_size == (48, 48)
    with pytest.raises(RecipeError, match=r"views\.weak: the view turns a \(32, 32, 1\) uint8 image into \(48, 48, 1\) "
                                          r"uint8; views must keep size and type \(use e\.g\. RandomResizedCrop with size \[32, 32\]"):
        parse_recipe(json.dumps(tiny_recipe_dict("images", **{"views.weak": [crop]})), check=True)


def test_a_teacher_of_another_shape_is_refused():
    with pytest.raises(RecipeError, match=r"teacher\.image_size \[96, 48\] has another shape than data\.image_size "
                                          r"\[32, 32\]; keep height / width the same"):
        parse_recipe(json.dumps(tiny_recipe_dict("images", **{"teacher.image_size": [96, 48]})), check=False)
