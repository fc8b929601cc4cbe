"""Figures of an anomaly score: AUROC, AUPR, recall at a false-reject rate, and where the map points.

Written out rather than imported (no scikit-learn in the kit): each is a few lines over sorted scores, and each
is checked against hand-computed values in tests/test_anomaly_metrics.py.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, defective: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U over both groups, ties counted half). None: one group empty."""
    scores, defective = np.asarray(scores, np.float64), np.asarray(defective, bool)
    n_pos, n_neg = int(defective.sum()), int((~defective).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[defective].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aupr(scores: np.ndarray, defective: np.ndarray) -> float | None:
    """Average precision (the step-wise area under the precision-recall curve, defective = positive)."""
    scores, defective = np.asarray(scores, np.float64), np.asarray(defective, bool)
    n_pos = int(defective.sum())
    if n_pos == 0 or n_pos == len(defective):
        return None
    order = np.argsort(-scores, kind="stable")
    hits = defective[order]
    # tied scores form one step: precision at the end of each group of equal scores
    ends = np.r_[np.nonzero(np.diff(scores[order]))[0], len(scores) - 1]
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float((precision * recall_step).sum())


def threshold_at_false_reject(good_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold that rejects at most ``rate`` of these good parts (score >= threshold rejects)."""
    good = np.sort(np.asarray(good_scores, np.float64))
    allowed = int(np.floor(rate * len(good)))
    if allowed >= len(good):
        return float(good[0])
    # reject the top ``allowed``: the threshold sits just above the next one down
    return float(np.nextafter(good[len(good) - allowed - 1], np.inf))


def peak_hits(maps: np.ndarray, masks: list[np.ndarray | None], tolerance_px: float) -> tuple[int, int]:
    """The pointing game: of the images with a mask, how many have the map's peak within ``tolerance_px`` of a
    defect pixel (maps and masks at the same size)."""
    import cv2

    hits = total = 0
    for amap, mask in zip(maps, masks):
        if mask is None or not mask.any():
            continue
        total += 1
        y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
        distance = cv2.distanceTransform((~mask.astype(bool)).astype(np.uint8), cv2.DIST_L2, 5)
        hits += int(distance[y, x] <= tolerance_px)
    return hits, total


def pro_auc(maps: np.ndarray, masks: list[np.ndarray | None], good_maps: np.ndarray, max_fpr: float = 0.3,
            steps: int = 100) -> float | None:
    """AUPRO (Bergmann et al. 2021): the mean overlap per connected defect region, integrated over the share of
    good pixels flagged up to ``max_fpr``, normalised to [0, 1]. Each region counts the same, whatever its size, so
    a small scratch weighs as much as a large stain."""
    import cv2

    regions = []
    for amap, mask in zip(maps, masks):
        if mask is None or not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8))
        regions += [amap[labels == r] for r in range(1, count)]
    if not regions or len(good_maps) == 0:
        return None
    good_pixels = np.sort(np.asarray(good_maps, np.float64).ravel())
    fprs = np.linspace(0, max_fpr, steps + 1)
    thresholds = np.quantile(good_pixels, 1 - fprs)
    overlaps = [np.mean([float((r >= t).mean()) for r in regions]) for t in thresholds]
    return float(np.trapezoid(overlaps, fprs) / max_fpr)
