"""Which epoch a training keeps: a higher validation score always wins; among tied scores the recipe's
``tie_break`` decides (issue 31: validation saturates on easy lines, and the first tied epoch was under-trained)."""

from __future__ import annotations

import pytest

from kit.recipe.schema import TrainConfig
from kit.train.checkpoint import FitProgress
from kit.train.loop import is_new_best

# (score, validation loss) per epoch: 0.9 at epoch 1, then 1.0 tied at epochs 2-5, the lowest loss at epoch 4.
EPOCHS = [(0.9, 0.50), (1.0, 0.30), (1.0, 0.20), (1.0, 0.10), (1.0, 0.15), (0.98, 0.05)]


def _kept(tie_break: str, epochs=EPOCHS) -> int:
    progress = FitProgress()
    for epoch, (score, loss) in enumerate(epochs, start=1):
        if is_new_best(score, loss, progress, tie_break):
            progress.best_score, progress.best_epoch, progress.best_loss = score, epoch, loss
    return progress.best_epoch


@pytest.mark.parametrize("tie_break, epoch", [("first", 2), ("last", 5), ("val_loss", 4)])
def test_tie_break_picks_among_the_tied_epochs_only(tie_break, epoch):
    assert _kept(tie_break) == epoch  # epoch 6 has the lowest loss of all but a lower score: never kept


def test_a_higher_score_resets_the_tie():
    rising = [(0.9, 0.1), (0.9, 0.05), (0.95, 0.4), (0.95, 0.3)]
    assert [_kept(rule, rising) for rule in ("first", "last", "val_loss")] == [3, 4, 4]


def test_scores_within_float_noise_are_tied():
    noisy = [(2 / 3, 0.3), (1 - 1 / 3, 0.2)]  # the same ratio, computed two ways
    assert _kept("first", noisy) == 1 and _kept("val_loss", noisy) == 2


def test_the_default_tie_break_is_in_the_schema():
    assert TrainConfig.model_fields["tie_break"].default in ("first", "last", "val_loss")
    with pytest.raises(ValueError, match="tie_break"):
        TrainConfig(arch="resnet10t", epochs=1, tie_break="average")
