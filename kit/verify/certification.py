"""Which images certify the operating threshold, and what they bound about the line's own risks.

The checkpoint (best validation epoch), the temperature and the teacher check are chosen on validation images; a
certificate computed on those same images is optimistic (they were picked to look good on it). ``kit run`` therefore
holds back ``verify.certify_share`` of each class's validation images (``split.csv``: ``certify``, deterministic for
``data.split.seed``) and ``kit verify`` certifies on them alone. The price: fewer images, so a weaker certificate for
the same errors (0 errors in 66 images bound a rate at 4.4 % one-sided 95 %; in 132 at 2.2 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kit.rundir import CERTIFY_SPLIT, SplitData, has_split, load_split
from kit.verify import stats


def certification_split(run_dir: Path, spec: Any, classes: list[str], val: SplitData, seed: int,
                        share: float) -> tuple[SplitData, dict[str, Any]]:
    """The images the operating threshold is certified on: the run's held-out certification split (``split.csv``
    rows ``certify``, never used to choose the checkpoint, the temperature or anything else), or, for a run without
    one (made before it existed, or ``verify.certify_share: 0``), the validation images that chose, said so."""
    if has_split(run_dir, CERTIFY_SPLIT):
        held_out = load_split(run_dir, CERTIFY_SPLIT, spec, classes)
        return held_out, {"split": CERTIFY_SPLIT, "images": int(len(held_out.labels)), "independent": True,
                          "chose_on": "val", "chose_images": int(len(val.labels)), "share": share, "seed": seed,
                          "sided": "one-sided"}
    return val, {"split": "val", "images": int(len(val.labels)), "independent": False, "chose_on": "val",
                 "chose_images": int(len(val.labels)), "share": 0.0, "seed": seed, "sided": "one-sided"}


def line_risk_bounds(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], ok_index: int | None,
                     confidence: float) -> dict[str, dict[str, Any]] | None:
    """Per class on the certification images, the rate the line pays for, bounded whatever the threshold: a defect
    class's parts called good (an escape at any threshold is one of these) and good parts called a defect (a false
    reject at any threshold is one of these), each with its one-sided upper bound at ``confidence``. A higher
    threshold only removes parts from both, so each bound holds at the certified threshold too, although that
    threshold was chosen on the same images."""
    if ok_index is None:
        return None
    pred = probabilities.argmax(axis=1)
    out = {}
    for i, name in enumerate(classes):
        members = labels == i
        k = int((members & ((pred != ok_index) if i == ok_index else (pred == ok_index))).sum())
        n = int(members.sum())
        out[name] = {"kind": "false_reject" if i == ok_index else "escape", "k": k, "n": n, "confidence": confidence,
                     "upper": stats.clopper_pearson_upper(k, n, confidence), "sided": "one-sided"}
    return out
