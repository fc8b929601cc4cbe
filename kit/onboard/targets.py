"""The operating targets a scaffolded recipe writes: the strictest rung of a ladder that the line's validation split can
certify, and the price of the next rung in images.

Both tasks certify the same way: a one-sided Clopper-Pearson bound at 95 % confidence with no failure among the
validation images that count (``kit.verify.stats.zero_failure_sample_size``: 0.05 needs 59, 0.02 needs 149, 0.01
needs 299). ``task: classify`` counts the accepted validation images against ``verify.threshold.accepted_accuracy``;
``task: anomaly`` counts the good validation images against ``anomaly.max_false_reject_rate``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from kit.verify.stats import zero_failure_sample_size

SCAFFOLD_VAL_FRACTION = 0.15  # the validation share of the split the scaffold writes
COMMENT_COLUMN = " " * 32  # where a recipe comment that continues on the next line starts


def strictest_certifiable(ladder: Sequence[float], trials: int,
                          error_rate: Callable[[float], float] = lambda target: target) -> tuple[float | None, float | None]:
    """(the first rung of ``ladder``, strictest first, whose error rate ``trials`` certify with no failure; the rung
    just stricter than it, or the loosest when none is certifiable: the next one to reach). ``error_rate`` turns a
    rung into the rate certified (an accuracy ``a`` certifies ``1 - a``)."""
    fits = [t for t in ladder if trials >= (zero_failure_sample_size(error_rate(t)) or 0)]
    chosen = fits[0] if fits else None
    stricter = list(ladder[:ladder.index(chosen)]) if chosen is not None else list(ladder)
    return chosen, (stricter[-1] if stricter else None)


def next_target_line(target: float, needed_val: int, fraction: float, have: int, kind: str = "") -> str:
    """The comment line under a target: what the next stricter ``target`` costs in validation images (``needed_val``)
    and in images of the line at its split (``fraction`` of them validate; ``have`` are there); ``kind`` qualifies
    the images ("good ")."""
    needed = math.ceil(needed_val / fraction)
    return (f"{COMMENT_COLUMN}# {target:g} needs about {needed_val} {kind}validation images (about {needed:,} {kind}images "
            f"at this split: {max(0, needed - have):,} more)\n")
