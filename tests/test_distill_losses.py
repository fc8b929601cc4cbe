"""crld_loss and kd_loss against an independent float64 numpy computation of their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kit.distill import crld_loss, kd_loss, kd_per_sample


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _kd(s: np.ndarray, t: np.ndarray, T: float) -> np.ndarray:
    lt, ls = _log_softmax(t / T), _log_softmax(s / T)
    return T * T * (np.exp(lt) * (lt - ls)).sum(axis=1)


def _ce(s: np.ndarray, y: np.ndarray) -> float:
    return float(-_log_softmax(s)[np.arange(len(y)), y].mean())


def _reference(sw, ss, tw, ts, y, T=4.0, ce_w=1.0, wi_w=2.0, cr_w=0.5, tau_w=0.9, tau_s=0.2):
    conf_w = np.exp(_log_softmax(tw)).max(axis=1)
    conf_s = np.exp(_log_softmax(ts)).max(axis=1)
    mw, ms = (conf_w >= tau_w).astype(np.float64), (conf_s >= tau_s).astype(np.float64)
    ce = _ce(sw, y) + _ce(ss, y)
    within = float(np.mean(mw * (_kd(sw, tw, T) + _kd(ss, ts, T))))
    cross = float(np.mean(ms * (_kd(ss, tw, T) + _kd(sw, ts, T))))
    return ce_w * ce + wi_w * within + cr_w * cross, ce, within, cross, mw, ms


def _random_logits(seed: int, batch: int = 16, classes: int = 5, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, (batch, classes)) for _ in range(4)] + [rng.integers(0, classes, batch)]


def _run(sw, ss, tw, ts, y, **kw):
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return crld_loss(t(sw), t(ss), t(tw), t(ts), torch.tensor(y), **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "kw",
    [{}, {"temperature": 2.0, "ce_weight": 0.5, "within_weight": 1.0, "cross_weight": 2.0, "tau_weak": 0.5, "tau_strong": 0.6}],
)
def test_crld_matches_float64_reference(seed, kw):
    sw, ss, tw, ts, y = _random_logits(seed)
    out = _run(sw, ss, tw, ts, y, **kw)
    names = {"temperature": "T", "ce_weight": "ce_w", "within_weight": "wi_w", "cross_weight": "cr_w", "tau_weak": "tau_w", "tau_strong": "tau_s"}
    total, ce, within, cross, mw, ms = _reference(sw, ss, tw, ts, y, **{names[k]: v for k, v in kw.items()})
    assert out.total.item() == pytest.approx(total, rel=1e-10)
    assert out.ce.item() == pytest.approx(ce, rel=1e-10)
    assert out.within.item() == pytest.approx(within, rel=1e-10)
    assert out.cross.item() == pytest.approx(cross, rel=1e-10)
    np.testing.assert_array_equal(out.mask_weak.numpy(), mw)
    np.testing.assert_array_equal(out.mask_strong.numpy(), ms)
    assert 0 < mw.sum() < len(mw) or kw  # the default draw exercises a partial mask


def test_crld_all_masked_leaves_only_cross_entropy():
    sw, ss, tw, ts, y = _random_logits(3, scale=0.01)  # near-uniform teacher: confidence ~ 1/5
    out = _run(sw, ss, tw, ts, y, tau_weak=0.99, tau_strong=0.99)
    assert out.mask_weak.sum().item() == 0 and out.mask_strong.sum().item() == 0
    assert out.within.item() == 0.0 and out.cross.item() == 0.0
    assert out.total.item() == pytest.approx(_ce(sw, y) + _ce(ss, y), rel=1e-10)


def test_crld_none_masked_equals_unmasked_sum():
    sw, ss, tw, ts, y = _random_logits(4)
    out = _run(sw, ss, tw, ts, y, tau_weak=0.0, tau_strong=0.0)
    assert out.mask_weak.sum().item() == len(y) and out.mask_strong.sum().item() == len(y)
    within = np.mean(_kd(sw, tw, 4.0) + _kd(ss, ts, 4.0))
    cross = np.mean(_kd(ss, tw, 4.0) + _kd(sw, ts, 4.0))
    assert out.within.item() == pytest.approx(within, rel=1e-10)
    assert out.cross.item() == pytest.approx(cross, rel=1e-10)


def test_crld_confidence_exactly_at_threshold_passes_the_mask():
    # Two classes, logits (log 3, 0): softmax = (0.75, 0.25) exactly representable.
    tw = np.array([[np.log(3.0), 0.0], [0.0, 0.0]])
    conf = np.exp(_log_softmax(tw)).max(axis=1)
    sw, ss, ts, y = np.zeros((2, 2)), np.ones((2, 2)), tw.copy(), np.array([0, 1])
    out = _run(sw, ss, tw, ts, y, tau_weak=float(conf[0]), tau_strong=float(conf[0]))
    np.testing.assert_array_equal(out.mask_weak.numpy(), [1.0, 0.0])
    np.testing.assert_array_equal(out.mask_strong.numpy(), [1.0, 0.0])


def test_crld_masked_samples_count_in_the_batch_mean():
    sw, ss, tw, ts, y = _random_logits(5, batch=8)
    tw[4:] = 0.0  # second half: uniform teacher, masked out of the within term
    out = _run(sw, ss, tw, ts, y, tau_weak=0.5)
    per_sample = _kd(sw, tw, 4.0) + _kd(ss, ts, 4.0)
    mask = out.mask_weak.numpy()
    assert mask[4:].sum() == 0
    assert out.within.item() == pytest.approx((mask * per_sample).sum() / 8, rel=1e-10)


def test_crld_gradients_reach_only_the_student():
    sw, ss, tw, ts = (torch.tensor(a, dtype=torch.float64) for a in _random_logits(6)[:4])
    for x in (sw, ss, tw):
        x.requires_grad_(True)
    out = crld_loss(sw, ss, tw, ts, torch.zeros(16, dtype=torch.long))
    out.total.backward()
    assert sw.grad is not None and ss.grad is not None and tw.grad is None


def test_kd_loss_matches_reference():
    s, t, _, _, y = _random_logits(7)
    out = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=4.0)
    kd = np.mean(_kd(s, t, 4.0))
    assert out.kd.item() == pytest.approx(kd, rel=1e-10)
    assert out.total.item() == pytest.approx(0.1 * _ce(s, y) + 0.9 * kd, rel=1e-10)


def test_kd_is_zero_when_student_equals_teacher():
    s = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(kd_per_sample(s, s.clone(), 4.0), torch.zeros(4, dtype=torch.float64))
