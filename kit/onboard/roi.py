"""Propose ``data.roi`` from the images themselves: where the part lies when a plain background surrounds it.

Many lines photograph a part on a belt, a fixture or a light box. Every pixel of that background kept in
the crop is detail lost for the defects when the image is shrunk to the model's input, so the scaffold
proposes the box that holds the part in every sampled image. A background is recognised only when it is
plain: the image's outer frame is nearly uniform. Textured surfaces filling the frame (rolled steel, web
material) have no background, and no ROI is proposed for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FRAME_SHARE = 0.02  # the outer 2 % of rows and columns is where the background is read
FRAME_MAX_STD = 6.0  # grey levels: a frame varying more than this (in any channel) is not a plain background
MIN_CONTENT_DELTA = 8.0  # grey levels from the background (after a light blur) that count as the part, at least ...
CONTENT_STDS = 4.0  # ... and at least this many times the frame's own variation
MARGIN_SHARE = 0.04  # the proposed box grows by 4 % of the image side on every side
MAX_AREA_SHARE = 0.8  # a box covering more than this of the image is not worth cropping to
MIN_IMAGES = 8  # sampled images a proposal needs (with a plain background, all of one size)
WORK_SIDE_PX = 1024  # large images are looked at shrunk to this; the box is scaled back outward


@dataclass
class RoiFinder:
    """Folds sampled images into one union of part pixels; ``proposal`` gives the box, or None."""

    shape: tuple[int, int] | None = None  # source height, width
    union: np.ndarray | None = None  # at the working scale
    images: int = 0
    no_background: int = 0  # sampled images whose frame is not plain
    mixed_sizes: bool = False  # data.roi is in source pixels: it needs images of one size

    def add(self, image: np.ndarray) -> None:
        img = image if image.ndim == 3 else image[:, :, None]
        if self.shape is None:
            self.shape = img.shape[:2]
        self.images += 1
        if img.shape[:2] != self.shape:
            self.mixed_sizes = True
            return
        scale = min(1.0, WORK_SIDE_PX / max(self.shape))
        if scale < 1.0:
            img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
            img = img if img.ndim == 3 else img[:, :, None]
        img = img.astype(np.float32)
        h, w = img.shape[:2]
        fh, fw = max(1, int(h * FRAME_SHARE)), max(1, int(w * FRAME_SHARE))
        frame = np.concatenate([img[:fh].reshape(-1, img.shape[2]), img[-fh:].reshape(-1, img.shape[2]),
                                img[:, :fw].reshape(-1, img.shape[2]), img[:, -fw:].reshape(-1, img.shape[2])])
        frame_std = frame.std(axis=0)
        if frame_std.max() > FRAME_MAX_STD:
            self.no_background += 1
            return
        # Per channel, so a part that differs from the belt only in colour is found too.
        delta = np.abs(cv2.GaussianBlur(img, (0, 0), 2.0).reshape(h, w, -1) - np.median(frame, axis=0))
        part = (delta > np.maximum(MIN_CONTENT_DELTA, CONTENT_STDS * frame_std)).any(axis=2)
        self.union = part if self.union is None else self.union | part

    def proposal(self) -> tuple[int, int, int, int] | None:
        """``[x, y, width, height]`` around the part in every sampled image, or None: too few images, images of
        several sizes, any image without a plain background, no part found, or a box too large to be worth it."""
        if self.union is None or self.no_background or self.mixed_sizes or self.images < MIN_IMAGES or not self.union.any():
            return None
        h, w = self.shape
        sy, sx = h / self.union.shape[0], w / self.union.shape[1]
        ys, xs = np.nonzero(self.union)
        my, mx = int(round(h * MARGIN_SHARE)), int(round(w * MARGIN_SHARE))
        x0, y0 = max(0, int(np.floor(xs.min() * sx)) - mx), max(0, int(np.floor(ys.min() * sy)) - my)
        x1, y1 = min(w, int(np.ceil((xs.max() + 1) * sx)) + mx), min(h, int(np.ceil((ys.max() + 1) * sy)) + my)
        if (x1 - x0) * (y1 - y0) > MAX_AREA_SHARE * h * w:
            return None
        return x0, y0, x1 - x0, y1 - y0
