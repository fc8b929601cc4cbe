"""The small-receptive-field family (kit.models.local_cnn): the fixed background flattening, the position-free max, the
timm interface the kit relies on, its export, and the scaffold rule that picks it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from kit.errors import RecipeError
from kit.export.heatmap_head import heatmap_layer
from kit.export.onnx_fp32 import export_onnx
from kit.models.local_cnn import FLATTEN_SIGMA_PX, FlattenBackground
from kit.models import check_pretrained, create_model, load_model, model_args, save_checkpoint
from kit.onboard.init_line import init_line, wants_local_cnn
from kit.recipe import load_recipe
from kit.sample_line import generate_sparse_line


def _spot(size: int, x: int, y: int, background: float = 0.0) -> torch.Tensor:
    img = torch.full((1, 1, size, size), background)
    img[0, 0, y - 1 : y + 2, x - 1 : x + 2] = background + 1.0
    return img


def test_flattening_removes_lighting_gradients_and_keeps_a_small_spot():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (0.02 * xx - 0.01 * yy + 0.3).view(1, 1, 64, 64)  # uneven illumination: a linear gradient
    flat = FlattenBackground(1)
    r = int(3 * FLATTEN_SIGMA_PX) + 1
    interior = flat(ramp)[..., r:-r, r:-r]  # a symmetric blur reproduces a linear ramp away from the borders
    assert interior.abs().max() < 1e-5
    spot = flat(ramp + _spot(64, 32, 32))
    assert spot[0, 0, 32, 32] > 0.8  # a 3 px spot keeps most of its contrast (sigma 4 px)
    assert FlattenBackground(3)(torch.full((1, 3, 40, 40), 0.7)).abs().max() < 1e-5  # per channel, borders included


def test_a_defect_counts_the_same_wherever_it_lies():
    model = timm.create_model("local_cnn_s", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        at_a, at_b = model(_spot(64, 24, 24)), model(_spot(64, 40, 28))  # moved by whole strides (4 px)
        plain = model(torch.zeros(1, 1, 64, 64))
    torch.testing.assert_close(at_a, at_b, rtol=0, atol=1e-5)
    assert not torch.allclose(at_a, plain, atol=1e-3)


@pytest.mark.parametrize("arch,params", [("local_cnn_s", (25_000, 40_000)), ("local_cnn_m", (100_000, 140_000))])
def test_the_timm_interface_the_kit_uses(arch, params):
    model = create_model(arch, num_classes=4, in_chans=3, drop_rate=0.1)
    assert params[0] < sum(p.numel() for p in model.parameters()) < params[1]
    x = torch.randn(2, 3, 48, 48)
    model.eval()
    features = model.forward_features(x)
    assert features.shape[-1] == 12  # stride 4
    pre = model.forward_head(features, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    torch.testing.assert_close(model.get_classifier()(pre), model(x))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    assert heatmap_layer(model) == ("stages.4", 4)  # the last stage at the coarsest reduction


def test_no_published_weights_is_a_recipe_error():
    with pytest.raises(RecipeError, match="local_cnn_m"):
        check_pretrained("local_cnn_m", "teacher")


def test_checkpoint_round_trip_and_onnx_export_agree(tmp_path):
    torch.manual_seed(0)
    model = create_model("local_cnn_s", num_classes=3, in_chans=1)
    model.train()
    with torch.no_grad():  # move the BN statistics off their defaults so the round trip has something to keep
        model(torch.randn(8, 1, 40, 56) * 3)
    model.eval()
    save_checkpoint(tmp_path / "m.pt", model, model_args("local_cnn_s", 3, 1))
    loaded = load_model(tmp_path / "m.pt")[0].eval()
    x = torch.randn(5, 1, 40, 56)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(loaded(x), expected)
    export_onnx(loaded, tmp_path / "m.onnx", (1, 40, 56))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_the_scaffold_picks_the_local_family_for_mostly_good_parts_and_rare_defects(tmp_path):
    generate_sparse_line(tmp_path / "sparse", counts={"ok": 40, "scratch": 3, "pit": 3}, seed=3)
    path, survey = init_line(tmp_path / "sparse", "sparse", tmp_path / "sparse.yaml", gpu=False)
    assert wants_local_cnn(survey)
    recipe = load_recipe(path)
    assert (recipe.teacher.arch, recipe.student.arch) == ("local_cnn_m", "local_cnn_s")
    assert recipe.teacher.pretrained is False
    assert "87% good parts, 3 images of 'pit'" in path.read_text()


@pytest.mark.parametrize("counts,expected", [
    ({"ok": 70, "pit": 30}, True),          # 70 % good, 30 defects
    ({"ok": 69, "pit": 31}, False),         # under 70 % good
    ({"ok": 900, "pit": 100}, False),       # enough examples of every defect
    ({"crack": 900, "pit": 10}, False),     # no good-part class named
])
def test_the_local_rule_thresholds(counts, expected, tmp_path):
    from kit.onboard.init_line import LineSurvey, detect_ok_class

    classes = sorted(counts)
    survey = LineSurvey(tmp_path, classes, counts, False, (256, 256), "gray", ok_class=detect_ok_class(classes))
    assert wants_local_cnn(survey) is expected


def test_a_local_weights_file_loads_with_timm_adapting_channels_and_classifier(tmp_path):
    """``teacher.pretrained_file`` for this family: an RGB 1000-class state dict into a grey 3-class model."""
    torch.manual_seed(1)
    source = timm.create_model("local_cnn_m", num_classes=1000, in_chans=3)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model("local_cnn_m", num_classes=3, in_chans=1, pretrained_file=tmp_path / "weights.pth")
    rgb = source.state_dict()["stages.0.0.weight"]
    torch.testing.assert_close(model.state_dict()["stages.0.0.weight"], rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.state_dict()["stages.3.1.running_mean"], source.state_dict()["stages.3.1.running_mean"])
    assert model.get_classifier().out_features == 3


def test_heatmap_fit_reads_a_max_pooling_model_as_its_classifier_does():
    from kit.export.heatmap_head import fit_heatmap_head

    torch.manual_seed(0)
    model = timm.create_model("local_cnn_s", num_classes=3, in_chans=1).eval()
    rng = np.random.default_rng(0)
    inputs = rng.normal(0, 1, (96, 1, 32, 32)).astype(np.float32)
    head = fit_heatmap_head(model, inputs)
    assert head.layer == "stages.4"
    # The classifier reads max-pooled stages.4 features linearly, so the (ridge-shrunk) fit recovers its weights;
    # fitted on mean-pooled features, as for timm's models, the correlation was 0.66.
    assert np.corrcoef(head.weight.ravel(), model.fc.weight.detach().numpy().ravel())[0, 1] > 0.9
    assert head.probe_agreement == 1.0
