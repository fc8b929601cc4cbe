"""Onboarding a line: ``kit init-line`` scaffolds a recipe that runs as is; ``kit calibrate``
fits the views to measured imaging conditions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kit.cli import app
from kit.onboard.calibrate import calibrate, replace_views
from kit.onboard.init_line import (
    CPU_PIXEL_BUDGET,
    CPU_SIZES_PX,
    LineSurvey,
    detect_ok_class,
    init_line,
    plan_image_size,
    propose_image_size,
)
from kit.recipe import load_recipe
from kit.sample_line import SPARSE_CLASS_COUNTS, generate_sample_line, generate_sparse_line, masks_dir


def test_init_line_writes_a_valid_commented_recipe(tmp_path, tiny_line):
    line = tmp_path / "line"
    shutil.copytree(tiny_line, line)
    shutil.copy(next((line / "ok").glob("*.png")), line / "ok" / "copy.png")
    path, survey = init_line(line, "line7", tmp_path / "recipes" / "line7.yaml", gpu=False)
    recipe = load_recipe(path)
    assert recipe.line.name == "line7" and recipe.data.classes == ["dent", "ok", "scratch"]
    assert recipe.resolve_path(recipe.data.root) == line.resolve()
    assert recipe.data.image_size == (48, 48) and recipe.data.channels == "gray"
    assert recipe.teacher.arch == "resnet10t" and recipe.distill.method == "crld"
    text = path.read_text()
    assert "# Survey warnings:" in text and "exact duplicate" in text and "few images in" in text
    assert survey.counts == {"dent": 6, "ok": 9, "scratch": 6}
    result = CliRunner().invoke(app, ["init-line", str(line), "--name", "line7", "--out", str(path)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    bad = CliRunner().invoke(app, ["init-line", str(line), "--name", "line 7!", "--out", str(tmp_path / "x.yaml")])
    assert bad.exit_code == 1 and "--name: 'line 7!' is not a valid line name" in bad.output


@pytest.mark.slow
def test_scaffolded_recipe_runs_without_edits(tmp_path, tiny_line):
    path, _ = init_line(tiny_line, "scaffolded", tmp_path / "scaffolded.yaml", gpu=False)
    # Test budget only: one epoch each, and a 1-epoch teacher is no better than chance, so its check only warns.
    text = (path.read_text().replace("epochs: 30", "epochs: 1").replace("epochs: 40", "epochs: 1")
            .replace("  train_views: mix", "  check: warn\n  train_views: mix"))
    path.write_text(text)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs"), "--stop-after", "export"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "scaffolded").is_dir()




def test_image_size_proposal():
    assert propose_image_size((128, 160), gpu=True, total_images=660) == 128
    assert propose_image_size((128, 160), gpu=False, total_images=660) == 128  # 10.8 M px per epoch: affordable
    assert propose_image_size((20, 20), gpu=False, total_images=50) == 32
    assert propose_image_size((1000, 1000), gpu=True, total_images=100_000) == 224


@pytest.mark.parametrize(("total_images", "source_px", "expected_px"), [
    (1000, 256, 128),    # 160^2 x 1000 = 25.6 M px > 20 M
    (660, 96, 96),       # the sample line: never above the source
    (5000, 256, 96),     # over budget even at 96: the CPU floor
    (600, 256, 160),
    (400, 256, 192),     # 224^2 x 400 = 20.07 M px, just over
    (200, 256, 224),
    (100, 48, 48),       # a source below the floor keeps its size
])
def test_cpu_image_size_is_the_largest_that_fits_the_pixel_budget(total_images, source_px, expected_px):
    assert propose_image_size((source_px, source_px), gpu=False, total_images=total_images) == expected_px
    if expected_px > CPU_SIZES_PX[0]:
        assert total_images * expected_px**2 <= CPU_PIXEL_BUDGET


def _survey(total_images: int, source_px: int) -> LineSurvey:
    counts = {"ok": total_images - 10, "pit": 10}
    return LineSurvey(Path("/data/line"), sorted(counts), counts, False, (source_px, source_px), "gray")


def test_size_comment_says_what_the_resize_does_to_a_small_defect():
    plan = plan_image_size(_survey(1000, 256), gpu=False)
    assert plan.size_px == 128 and plan.warning() is None
    assert plan.cost() == "median source 256x256 px -> 2.0x smaller: a 4 px defect becomes 2.0 px"
    assert plan.reason == ("the largest size whose 1000 images x 128^2 px = 16 M px per epoch fit the CPU budget (20 M); "
                           "a GPU affords 224")
    assert plan_image_size(_survey(100, 48), gpu=False).cost() == "median source 48x48 px: no detail lost in the resize"


def test_a_shrink_beyond_2x_is_a_survey_warning():
    plan = plan_image_size(_survey(5000, 256), gpu=False)
    assert plan.size_px == 96
    assert plan.warning() == ("images are shrunk 2.7x (256x256 px -> 96 px): defects smaller than about 5 px will be lost; "
                              "consider data.roi (crop to the part), a larger data.image_size on a GPU")
    assert plan.reason == "5000 images are over the CPU budget (20 M px per epoch) even at 96 px; a GPU affords 224"


@pytest.mark.parametrize("folder", ["ok", "OK", "okay", "good", "Normal", "pass", "free", "no_defect", "No-Defect",
                                    "defect_free", "ok_parts", "good_2024"])
def test_the_good_part_class_is_found_by_its_folder_name(folder):
    assert detect_ok_class(["crack", folder, "scratch"]) == folder


@pytest.mark.parametrize("classes", [["nok", "crack"], ["NOK", "goods"], ["not_ok", "bad"],
                                     ["ok", "good"]])
def test_no_good_part_class_is_guessed(classes):
    assert detect_ok_class(classes) is None


def test_init_line_on_a_sparse_line_proposes_a_larger_input_and_says_why(tmp_path):
    counts = {"ok": 180, "scratch": 7, "pit": 7, "crack": 6}
    generate_sparse_line(tmp_path / "sparse", counts=counts, seed=2)
    path, survey = init_line(tmp_path / "sparse", "sparse", tmp_path / "sparse.yaml", gpu=False)
    expected = max(s for s in CPU_SIZES_PX if s <= 224 and 200 * s**2 <= CPU_PIXEL_BUDGET)
    assert expected == 224
    recipe = load_recipe(path)
    assert recipe.data.image_size == (expected, expected)
    assert recipe.teacher.balance == recipe.student.balance == "auto"
    assert recipe.teacher.select_by == recipe.student.select_by == "macro_f1"
    assert survey.ok_class == "ok" and survey.imbalanced
    text = path.read_text()
    assert "# good-part class: ok (recognised by its folder name)\n" in text
    assert f"image_size: {expected}               # median source 256x256 px -> 1.1x smaller: a 4 px defect becomes 3.5 px\n" in text
    assert "balance: auto                 # imbalanced here (ok 180 vs crack 6): auto uses class-balanced sampling" in text
    assert text.count("select_by: macro_f1") == 2 and not any("shrunk" in w for w in survey.warnings)


def test_init_line_warns_when_the_resize_erases_small_defects(tmp_path):
    generate_sparse_line(tmp_path / "big", counts={"ok": 4, "pit": 2}, size_px=512)
    path, survey = init_line(tmp_path / "big", "big", tmp_path / "big.yaml", gpu=False)
    warning = ("images are shrunk 2.3x (512x512 px -> 224 px): defects smaller than about 5 px will be lost; "
               "consider data.roi (crop to the part), a larger data.image_size on a GPU")
    assert warning in survey.warnings and f"#   ! {warning}\n" in path.read_text()
    assert load_recipe(path).data.image_size == (224, 224)


def _darkened_copy(src: Path, dst: Path) -> Path:
    for i, p in enumerate(sorted(src.rglob("*.png"))):
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(out), (img * 0.5).astype(np.uint8) if i % 3 == 0 else img)
    return dst


def _brightness_limit(cal) -> float:
    return next(s for s in cal.strong if "RandomBrightnessContrast" in s)["RandomBrightnessContrast"]["brightness_limit"]


def test_calibrate_widens_the_lighting_range_for_a_darker_camera(tmp_path, tiny_line):
    plain = calibrate(tiny_line)
    dark = calibrate(_darkened_copy(tiny_line, tmp_path / "dark"))
    assert _brightness_limit(dark) > _brightness_limit(plain) + 0.05
    assert dark.percentiles["brightness"]["p5"] < plain.percentiles["brightness"]["p5"] - 20
    assert any("brightness 5-95 %" in r for r in dark.reasons)


def test_calibrate_writes_views_into_the_recipe(tmp_path, tiny_line):
    path, _ = init_line(tiny_line, "cal", tmp_path / "cal.yaml", gpu=False)
    before = path.read_text()
    dry = CliRunner().invoke(app, ["calibrate", str(tiny_line), "--recipe", str(path), "--plot", str(tmp_path / "c.png")])
    assert dry.exit_code == 0, dry.output
    assert "+  - RandomBrightnessContrast" in dry.output and path.read_text() == before
    wet = CliRunner().invoke(app, ["calibrate", str(tiny_line), "--recipe", str(path), "--write", "--plot", str(tmp_path / "c.png")])
    assert wet.exit_code == 0, wet.output
    recipe = load_recipe(path)
    names = [next(iter(step)) for step in recipe.views.strong]
    assert names[:2] == ["HorizontalFlip", "VerticalFlip"] and "RandomBrightnessContrast" in names and "Affine" in names
    assert "teacher:" in path.read_text() and "# views proposed by `kit calibrate`" in path.read_text()
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_replace_views_keeps_the_rest_of_the_recipe():
    text = "line:\n  name: a\n# the views\nviews:\n  weak: []\n  strong: []\n\n# the teacher\nteacher:\n  arch: resnet18\n"
    out = replace_views(text, "views:\n  weak: [x]\n")
    assert out == "line:\n  name: a\n# the views\nviews:\n  weak: [x]\n\n# the teacher\nteacher:\n  arch: resnet18\n"
    assert yaml.safe_load(out)["teacher"] == {"arch": "resnet18"}


def test_calibrate_needs_images(tmp_path):
    (tmp_path / "few").mkdir()
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "few")])
    assert result.exit_code == 1 and "calibration needs at least 10" in result.output


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # calibration.png and recipes/ land in the test's folder


def test_the_scaffold_gives_the_teacher_the_source_resolution_where_affordable(tmp_path, monkeypatch):
    """Source 512 px, student input capped at 224: on a GPU the teacher reads 512 px, and on a CPU too while its
    epoch fits the teacher's pixel budget; past it the line is a commented hint. The ROI hint is there in every case
    (the resize costs detail)."""
    from kit.onboard import init_line as scaffold

    generate_sparse_line(tmp_path / "big", counts={"ok": 4, "pit": 2}, size_px=512)
    gpu_path, _ = init_line(tmp_path / "big", "big", tmp_path / "gpu.yaml", gpu=True)
    recipe = load_recipe(gpu_path)
    assert recipe.data.image_size == (224, 224) and recipe.teacher.image_size == (512, 512)
    affordable, _ = init_line(tmp_path / "big", "big", tmp_path / "cpu_small.yaml", gpu=False)
    assert load_recipe(affordable).teacher.image_size == (512, 512)  # 6 x 512^2 = 1.6 M px per epoch
    assert ("  image_size: 512               # the teacher reads 512 px (small defects intact), the student 224; both see "
            "the same views; 2 M px per teacher epoch fit the CPU's teacher budget (40 M)\n") in affordable.read_text()
    monkeypatch.setattr(scaffold, "TEACHER_CPU_PIXEL_BUDGET", 1_000_000)
    cpu_path, _ = init_line(tmp_path / "big", "big", tmp_path / "cpu.yaml", gpu=False)
    text = cpu_path.read_text()
    assert load_recipe(cpu_path).teacher.image_size is None
    assert ("  # image_size: 512             # on a GPU: the teacher reads 512 px (small defects intact), the student 224; "
            "both see the same views\n") in text
    assert "  # roi: [x, y, width, height]  # crop to the part before the resize" in text
    assert "# roi:" in gpu_path.read_text()


def test_no_teacher_size_or_roi_hint_when_nothing_is_lost(tmp_path, tiny_line):
    path, _ = init_line(tiny_line, "tiny", tmp_path / "tiny.yaml", gpu=True)
    text = path.read_text()
    assert "# roi:" not in text and "image_size: " in text and text.count("image_size:") == 1


def _parts_on_a_belt(root: Path, n_per_class: int = 6) -> tuple[int, int, int, int]:
    """A dark belt (300x200 px, uniform) with a textured bright part (120x90 px) at a jittered place; one class
    has a dark spot on the part. Returns the box every part lies in (x0, y0, x1, y1)."""
    rng = np.random.default_rng(4)
    box = [300, 200, 0, 0]
    for label in ("ok", "spot"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.full((200, 300), 20, np.uint8)
            x, y = int(rng.integers(90, 111)), int(rng.integers(50, 61))
            img[y:y + 90, x:x + 120] = np.clip(160 + rng.normal(0, 8, (90, 120)), 0, 255).astype(np.uint8)
            if label == "spot":
                cv2.circle(img, (x + 60, y + 45), 3, 40, -1)
            cv2.imwrite(str(root / label / f"{label}_{i}.png"), img)
            box = [min(box[0], x), min(box[1], y), max(box[2], x + 120), max(box[3], y + 90)]
    return tuple(box)


def test_the_scaffold_crops_to_the_part_on_a_plain_background(tmp_path):
    x0, y0, x1, y1 = _parts_on_a_belt(tmp_path / "belt")
    path, survey = init_line(tmp_path / "belt", "belt", tmp_path / "belt.yaml", gpu=False)
    roi = load_recipe(path).data.roi
    assert roi == survey.roi and roi is not None
    x, y, w, h = roi
    assert x <= x0 and y <= y0 and x + w >= x1 and y + h >= y1  # every part is inside
    assert x >= x0 - 20 and y >= y0 - 15 and x + w <= x1 + 20 and y + h <= y1 + 15  # and little belt
    assert survey.input_hw == (h, w)
    text = path.read_text()
    assert f"  roi: [{x}, {y}, {w}, {h}]" in text and "the part lies inside this box in all 12 sampled images" in text
    assert f"# ROI {h}x{w} px" in text  # the image size follows the crop, not the full frame


def test_no_roi_for_a_surface_that_fills_the_frame(tmp_path):
    generate_sparse_line(tmp_path / "sparse", counts={"ok": 10, "pit": 4}, seed=1)
    _, survey = init_line(tmp_path / "sparse", "sparse", tmp_path / "sparse.yaml", gpu=False)
    assert survey.roi is None and survey.roi_images == 14


def _belt_images(n: int, shape=(200, 300), belt=(20, 20, 20), part=(160, 160, 160), box=(90, 50, 120, 90)) -> list:
    """Plain belt colour, a part of another colour (slightly textured) at ``box`` = x, y, w, h."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = np.empty((*shape, 3), np.uint8)
        img[:] = belt
        x, y, w, h = box
        img[y:y + h, x:x + w] = np.clip(np.array(part) + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(img)
    return out


def test_the_roi_finder_sees_colour_low_contrast_and_large_images_and_refuses_mixed_sizes():
    from kit.onboard.roi import RoiFinder

    def propose(images):
        finder = RoiFinder()
        for img in images:
            finder.add(img)
        return finder.proposal()

    def covers(roi, box):
        x, y, w, h = roi
        return x <= box[0] and y <= box[1] and x + w >= box[0] + box[2] and y + h >= box[1] + box[3]

    box = (90, 50, 120, 90)
    colour_only = _belt_images(8, belt=(60, 140, 60), part=(150, 80, 60), box=box)  # about the same luminance
    assert covers(propose(colour_only), box)
    faint = _belt_images(8, belt=(120, 120, 120), part=(132, 132, 132), box=box)  # 12 grey levels of contrast
    assert covers(propose(faint), box)
    large_box = (1900, 1000, 2000, 1500)
    large = _belt_images(8, shape=(4000, 6000), box=large_box)  # looked at shrunk, box scaled back outward
    roi = propose(large)
    assert covers(roi, large_box) and roi[2] < 2600 and roi[3] < 2000
    assert propose(_belt_images(8, box=box) + _belt_images(2, shape=(100, 150), box=(40, 20, 60, 45))) is None
    assert propose(_belt_images(7, box=box)) is None  # too few images to trust


def test_a_damaged_weights_cache_reads_as_no_weights(tmp_path):
    from kit.models import published_weights_cached

    repo = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_bytes(b"\xff\xfe\x00")
    (repo / "snapshots").write_text("not a folder")
    assert published_weights_cached("resnet10t", cache_dir=tmp_path / "hub") is False
    assert published_weights_cached("no_such_arch_anywhere", cache_dir=tmp_path / "hub") is False


def test_no_larger_teacher_when_the_student_loses_little(tmp_path):
    """Source 144 px, student 128 px on a GPU-less PC: 1.1x is below the measured 2x, so only a hint."""
    generate_sparse_line(tmp_path / "mild", counts={"ok": 6, "pit": 3}, size_px=144)
    path, _ = init_line(tmp_path / "mild", "mild", tmp_path / "mild.yaml", gpu=False)
    assert load_recipe(path).teacher.image_size is None
    assert "  # image_size: 144" in path.read_text() and "measured worth it from a 2x shrink, this one is" in path.read_text()


def test_init_line_on_1300_images_writes_a_target_the_split_can_certify(tmp_path):
    """Issue 31: about 1,300 images give 195 validation images, of which about 98 certify (issue 28: the half held out
    of every choice); 99 % (the schema's default) needs 299 with no error, 98 % 149, 97 % 99, so the scaffold writes 95 %
    (certifiable with no error among 90 % of the 98 accepted) and names 97 %'s price in validation images."""
    from kit.onboard.init_line import certifiable_target
    from kit.sample_line import generate_sample_line
    from kit.verify.threshold import certifiability_problems

    line = tmp_path / "line"
    generate_sample_line(line, counts={"ok": 700, "scratch": 300, "dent": 300}, seed=2, size_px=16)
    path, survey = init_line(line, "line13", tmp_path / "line13.yaml", gpu=False)
    assert survey.total == 1300 and survey.val_images == 195
    recipe = load_recipe(path)
    assert recipe.verify.threshold.accepted_accuracy == 0.95
    text = " ".join(path.read_text().split())
    assert "certified at 95 % confidence on 98 of the 195 # validation images" in text
    assert "# 0.97 needs about 220 validation images (about 1,467 images at this split: 167 more)" in text
    assert certifiable_target(195) == (0.95, 0.97) and certifiable_target(10) == (None, 0.8)
    labels = np.array([0] * 53 + [1] * 23 + [2] * 22)  # the certification share of the 195
    assert certifiability_problems(recipe.verify.threshold, labels, recipe.data.classes) == []


# -- task: anomaly (kit/onboard/anomaly_scaffold.py) ----------------------------------------------------------------

def _flat(text: str) -> str:
    """The recipe's text on one line, comment markers at line starts dropped: wrapped comments read as written."""
    return " ".join(re.sub(r"(^|\n)\s*#", "\n", text).split())


def test_the_sparse_line_is_proposed_anomaly_mode_with_the_false_reject_target_it_can_certify(tmp_path):
    """The sparse line's counts (900 good, 33-34 per defect class; 64 px here, the counts decide): 33 < 50 images of
    'crack', so task: anomaly. A 15 % split holds round(900 x 0.15) = 135 good validation images: 0.05 needs 59 with no
    false reject, 0.02 needs 149, so 0.05 is written and 0.02's price named (149 / 0.15 -> 994 good images, 94 more).
    Every defect class has at least 10 images: the hybrid is proposed."""
    from kit.data.index import index_line

    generate_sparse_line(tmp_path / "sparse", counts=SPARSE_CLASS_COUNTS, seed=2, size_px=64)
    path, survey = init_line(tmp_path / "sparse", "sparse", tmp_path / "sparse.yaml", gpu=False)
    assert survey.good_val_images == 135
    recipe = load_recipe(path)
    assert recipe.task == "anomaly" and recipe.line.ok_class == "ok"
    assert recipe.anomaly.max_false_reject_rate == 0.05 and recipe.anomaly.review_fraction == 0.02
    assert recipe.anomaly.name_defects is True
    assert (recipe.teacher.arch, recipe.student.arch) == ("local_cnn_m", "local_cnn_s")
    assert recipe.kpi.min_image_auroc == 0.95 and recipe.kpi.max_false_reject_rate == 0.05
    assert recipe.kpi.max_class_escape_rate == 0.05 and recipe.kpi.min_macro_f1 is None
    assert recipe.compare == [] and recipe.resolve_path(recipe.data.masks) == masks_dir(tmp_path / "sparse").resolve()
    text = path.read_text()
    assert "\nverify:" not in text and "\ncompare:" not in text and "\ndistill:" not in text
    flat = _flat(text)
    assert "task: anomaly, proposed: the rarest defect class, 'crack', has 33 images, fewer than 50" in flat
    assert "max_false_reject_rate: 0.05 # at most 5 % of good parts rejected, certified at 95 % confidence:" in flat
    assert "135 good validation images (a 15 % split) with no false reject" in flat
    assert "0.02 needs about 149 good validation images (about 994 good images at this split: 94 more)" in flat
    assert "epochs: 10 # an epoch is about 630 good training images x 64^2 px = 3 M px, within the CPU budget (20 M)" in flat
    assert (recipe.student.optimizer, recipe.student.lr, recipe.student.epochs) == ("adamw", 0.003, 10)
    assert (recipe.teacher.optimizer, recipe.teacher.lr, recipe.teacher.epochs) == ("adamw", 0.001, 10)
    index = index_line(recipe)
    splits = {(index.classes[s.label], s.split) for s in index.samples}
    # the namer takes its centres from validation defects: no defect image is in train
    assert ("ok", "train") in splits and ("crack", "val") in splits and ("crack", "test") in splits
    assert not {split for name, split in splits if name != "ok"} & {"train"}


@pytest.mark.parametrize("folder", ["ok", "parts"])
def test_a_folder_of_good_parts_alone_scaffolds_a_loadable_anomaly_recipe(tmp_path, folder):
    """200 good images and no defect folder: the only folder is the good-part class whatever its name; 30 good
    validation images certify 0.10 (29 needed), 0.05 needs 59; escapes wait for defective parts."""
    from kit.data.index import index_line

    generate_sample_line(tmp_path / "line", counts={"ok": 200}, seed=3, size_px=32)
    if folder != "ok":
        (tmp_path / "line" / "ok").rename(tmp_path / "line" / folder)
    result = CliRunner().invoke(app, ["init-line", str(tmp_path / "line"), "--name", "goodonly",
                                      "--out", str(tmp_path / "goodonly.yaml")])
    assert result.exit_code == 0, result.output
    recipe = load_recipe(tmp_path / "goodonly.yaml")
    assert recipe.task == "anomaly" and recipe.line.ok_class == folder and recipe.data.classes == [folder]
    assert recipe.anomaly.max_false_reject_rate == 0.1 and recipe.anomaly.name_defects is False
    assert recipe.kpi.min_image_auroc == 0.95 and recipe.data.masks is None
    assert {s.split for s in index_line(recipe).samples} == {"train", "val", "test"}
    flat = _flat((tmp_path / "goodonly.yaml").read_text())
    assert "1 class, 200 images:" in flat and "task: anomaly, proposed: the folder holds good parts only" in flat
    assert "GO needs defective parts, and the shadow period supplies them" in flat
    assert "30 good validation images (a 15 % split) with no false reject" in flat
    assert "0.05 needs about 59 good validation images (about 394 good images at this split: 194 more)" in flat
    assert "name_defects: true # the hybrid: the anomaly score decides accept / reject" in flat
    if folder != "ok":
        assert f"good-part class: {folder} (the only folder: a line of good parts alone)" in flat


def test_a_line_with_100_images_per_defect_class_keeps_the_classifier_scaffold(tmp_path):
    """The sample line's measured point: 100 images per defect class trained supervised was GO."""
    generate_sample_line(tmp_path / "line", counts={"ok": 300, "scratch": 100, "dent": 100}, seed=3, size_px=32)
    path, survey = init_line(tmp_path / "line", "line", tmp_path / "line.yaml", gpu=False)
    recipe = load_recipe(path)
    assert recipe.task == "classify" and recipe.verify.threshold is not None and recipe.distill.method == "crld"
    assert "task:" not in path.read_text() and "anomaly" not in path.read_text()


def _counted(counts: dict[str, int]) -> LineSurvey:
    classes = sorted(counts)
    ok = classes[0] if len(classes) == 1 else detect_ok_class(classes)
    return LineSurvey(Path("/data/line"), classes, counts, False, (256, 256), "gray", ok_class=ok)


@pytest.mark.parametrize(("counts", "anomaly"), [
    ({"ok": 900, "pit": 49, "crack": 200}, True),   # the rarest defect class decides
    ({"ok": 900, "pit": 50, "crack": 200}, False),  # at the cut-off: a classifier
    ({"ok": 900, "pit": 33, "crack": 33, "scratch": 34}, True),  # the sparse line
    ({"ok": 160, "pit": 100, "crack": 100}, False),  # the sample line's measured point
    ({"ok": 193, "pit": 5}, True),                   # 29 good validation images certify 0.10
    ({"ok": 186, "pit": 5}, False),                  # 28 certify nothing: the classifier's scaffold stays
    ({"crack": 900, "pit": 10}, False),              # no good-part class named: nothing to learn alone
    ({"ok": 200}, True),                             # good parts only
    ({"parts": 12}, True),                           # good parts only, however few: there is no other task
])
def test_the_anomaly_rule_and_its_cut_off(counts, anomaly):
    from kit.onboard.anomaly_scaffold import ANOMALY_BELOW_DEFECT_IMAGES, MIN_GOOD_VAL_IMAGES, propose_anomaly

    assert (ANOMALY_BELOW_DEFECT_IMAGES, MIN_GOOD_VAL_IMAGES) == (50, 29)
    assert (propose_anomaly(_counted(counts)) is not None) is anomaly


@pytest.mark.parametrize(("counts", "name_defects"), [
    ({"ok": 900, "pit": 10, "crack": 12}, True),
    ({"ok": 900, "pit": 9, "crack": 40}, False),  # every defect class needs 10
    ({"ok": 900}, False),                         # no labelled defect to name
])
def test_the_hybrid_is_proposed_from_10_images_of_every_defect_class(counts, name_defects):
    from kit.onboard.anomaly_scaffold import NAME_DEFECTS_MIN_IMAGES, propose_anomaly

    assert NAME_DEFECTS_MIN_IMAGES == 10
    assert propose_anomaly(_counted(counts)).name_defects is name_defects


@pytest.mark.parametrize(("good_val", "expected"), [
    (299, (0.01, None)), (298, (0.02, 0.01)), (149, (0.02, 0.01)), (135, (0.05, 0.02)), (59, (0.05, 0.02)),
    (58, (0.1, 0.05)), (29, (0.1, 0.05)), (28, (None, 0.1)),
])
def test_the_false_reject_ladder_is_the_threshold_ladder_on_good_validation_images(good_val, expected):
    from kit.onboard.anomaly_scaffold import FALSE_REJECT_LADDER
    from kit.onboard.targets import strictest_certifiable

    assert strictest_certifiable(FALSE_REJECT_LADDER, good_val) == expected


def test_the_committed_sparse_recipe_is_the_anomaly_scaffold():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "sparse_line.yaml")
    assert recipe.task == "anomaly" and recipe.anomaly.max_false_reject_rate == 0.05 and recipe.anomaly.name_defects
    assert recipe.data.masks == "../sample_data/sparse_line_masks"
