"""The deployed model as an appraiser, in a quality engineer's terms (AIAG attribute agreement, ``kit.verify.
attribute_agreement``): its decisions at the operating threshold on the test split against the test split's labels
(the reference).

A part the model decides alone gets its predicted class as the call; a part below the threshold gets the call
``review`` (it goes to a person). ``review`` is never ``good``: a defective part sent to a person is no miss, a good
part sent to a person is a false alarm (it does not pass on its own), and neither is effective. The mix is the test
split's, which is rich in defects; the section says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kit.verify.attribute_agreement import AIAG_LEVELS, AIAG_REFERENCE, cohens_kappa, parts_needed, versus_reference
from kit.verify.threshold import accepted_mask

REVIEW_CALL = "review"


def appraiser_section(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], ok_index: int | None,
                      threshold: float | None, floors: np.ndarray | None, confidence: float = 0.95) -> dict[str, Any] | None:
    """Effectiveness, miss rate, false-alarm rate (each k of n with its two-sided interval and AIAG level), Cohen's
    kappa against the reference, and the parts needed to show each AIAG limit; None without a good-part class."""
    if ok_index is None or len(labels) == 0:
        return None
    accepted = accepted_mask(probabilities, threshold, floors)
    pred = probabilities.argmax(axis=1)
    calls = [classes[p] if a else REVIEW_CALL for p, a in zip(pred, accepted)]
    reference = [classes[label] for label in labels]
    good = classes[ok_index]
    figures = versus_reference(calls, reference, good=good, confidence=confidence)
    defective = int((labels != ok_index).sum())
    return {
        "split": "test", "parts": int(len(labels)), "defective": defective, "good": int(len(labels)) - defective,
        "good_call": good, "review_call": REVIEW_CALL, "threshold": threshold,
        "effectiveness": figures["effectiveness"], "miss_rate": figures["miss_rate"],
        "false_alarm_rate": figures["false_alarm_rate"], "aiag": figures["aiag"],
        "kappa": cohens_kappa(calls, reference, confidence),
        "levels": {m: {"acceptable": a, "marginal": b, "direction": d} for m, (a, b, d) in AIAG_LEVELS.items()},
        "parts_needed": parts_needed(confidence), "reference": AIAG_REFERENCE,
    }
