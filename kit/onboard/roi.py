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
FRAME_MAX_STD = 6.0  # grey levels: a frame varying more than this is not a plain background
CONTENT_DELTA = 20.0  # grey levels from the background (after a light blur) that count as the part
MARGIN_SHARE = 0.04  # the proposed box grows by 4 % of the image side on every side
MAX_AREA_SHARE = 0.8  # a box covering more than this of the image is not worth cropping to
MIN_IMAGES = 8  # sampled images a proposal needs (with a plain background, all of one size)


@dataclass
class RoiFinder:
    """Folds sampled images into one union of part pixels; ``proposal`` gives the box, or None."""

    shape: tuple[int, int] | None = None
    union: np.ndarray | None = None
    images: int = 0
    no_background: int = 0  # sampled images whose frame is not plain

    def add(self, image: np.ndarray) -> None:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[2] == 3 else image[:, :, 0]
        if self.shape is None:
            self.shape = grey.shape
        if grey.shape != self.shape:
            return  # data.roi is in source pixels: only images of one size share it
        grey = grey.astype(np.float32)
        h, w = grey.shape
        fh, fw = max(1, int(h * FRAME_SHARE)), max(1, int(w * FRAME_SHARE))
        frame = np.concatenate([grey[:fh].ravel(), grey[-fh:].ravel(), grey[:, :fw].ravel(), grey[:, -fw:].ravel()])
        self.images += 1
        if frame.std() > FRAME_MAX_STD:
            self.no_background += 1
            return
        part = np.abs(cv2.GaussianBlur(grey, (0, 0), 2.0) - np.median(frame)) > CONTENT_DELTA
        self.union = part if self.union is None else self.union | part

    def proposal(self) -> tuple[int, int, int, int] | None:
        """``[x, y, width, height]`` around the part in every sampled image, or None: too few images, any
        image without a plain background, no part found, or a box too large to be worth it."""
        if self.union is None or self.no_background or self.images < MIN_IMAGES or not self.union.any():
            return None
        h, w = self.shape
        ys, xs = np.nonzero(self.union)
        my, mx = int(round(h * MARGIN_SHARE)), int(round(w * MARGIN_SHARE))
        x0, y0 = max(0, int(xs.min()) - mx), max(0, int(ys.min()) - my)
        x1, y1 = min(w, int(xs.max()) + 1 + mx), min(h, int(ys.max()) + 1 + my)
        if (x1 - x0) * (y1 - y0) > MAX_AREA_SHARE * h * w:
            return None
        return x0, y0, x1 - x0, y1 - y0
