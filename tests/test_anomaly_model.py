"""The anomaly networks' fixed parts: local contrast normalisation, the map placed where cells look, the score."""

import torch

from kit.anomaly.model import (AnomalyModel, AnomalyStudent, FeatureTrunk, LocalContrastNorm, cell_origin,
                               image_score)


def test_local_contrast_removes_the_lights_gain_and_offset():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64) * 0.3
    norm = LocalContrastNorm(1)
    # darker and lower contrast: 0.6 x + an offset; the normalised input barely moves (the floor keeps it finite)
    moved = (norm(0.6 * x - 0.4) - norm(x)).abs().mean() / norm(x).abs().mean()
    assert moved < 0.1
    spot = x.clone()
    spot[0, 0, 30:33, 30:33] += 2.0  # a defect stays a strong local departure
    assert norm(spot)[0, 0, 31, 31] > 3 * norm(x)[0, 0, 31, 31].abs() + 1


def test_the_map_is_placed_where_the_cells_look():
    torch.manual_seed(0)
    teacher = FeatureTrunk("local_cnn_s", 1).eval()
    model = AnomalyModel(teacher, AnomalyStudent(FeatureTrunk("local_cnn_s", 1), teacher.channels)).eval()
    ox, oy = cell_origin(teacher, torch.randn(2, 1, 64, 64))
    assert abs(ox) < 1.5 and abs(oy) < 1.5  # stride-2 3x3 convolutions look at 4 i, not at the cell's middle (1.5)
    model.origin.copy_(torch.tensor([ox, oy]))
    cells = torch.zeros(1, 1, 16, 16)
    cells[0, 0, 5, 9] = 1.0
    pixels = model.to_pixels(cells, (64, 64))
    y, x = divmod(int(pixels.argmax()), 64)
    assert abs(x - (9 * 4 + ox)) <= 0.5 and abs(y - (5 * 4 + oy)) <= 0.5


def test_image_score_is_the_top_share_mean_or_the_max():
    cells = torch.zeros(2, 1, 10, 10)
    cells[0, 0, 0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert image_score(cells, "max", 0.02)[0] == 4.0
    assert image_score(cells, "topk_mean", 0.02)[0] == 3.5  # 2 % of 100 cells: the top 2
    assert image_score(cells, "topk_mean", 0.02)[1] == 0.0


def test_invariance_is_zero_for_equal_views_and_ignores_the_features_scale():
    from kit.anomaly.train import invariance

    torch.manual_seed(0)
    weak = torch.randn(4, 8, 6, 6)
    assert float(invariance(weak.clone(), weak)) == 0.0
    moved = weak + 0.5 * torch.randn(4, 8, 6, 6)
    # the same relative change on features 10x larger costs the same: shrinking features cannot satisfy it
    assert abs(float(invariance(moved, weak)) - float(invariance(10 * moved, 10 * weak))) < 1e-5
