"""``kit calibrate``: measure a camera's imaging conditions on unlabelled images and propose views
that cover them with a margin.

The statistics are ``deploy.profile``'s (the ones drift monitoring uses later), so the views a
line is trained with and the drift it is watched for are measured the same way. Each proposed
parameter comes with the measurement it was derived from.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from deploy.preprocess import IMAGE_SUFFIXES, PreprocessSpec, prepare_image, read_image
from deploy.profile import STATISTICS, image_statistics, statistics_table
from kit.errors import DataError, KitError
from kit.io import write_text_atomic
from kit.recipe import Recipe, load_recipe

MARGIN = 1.25  # proposed ranges are this much wider than the observed spread
MIN_COHERENT_IMAGES = 10
MAX_ROTATE = 20  # degrees; beyond this a camera is mounted differently, not jittering
BLUR_SIGMAS = np.round(np.arange(0.2, 4.01, 0.2), 2)


@dataclass
class Calibration:
    images: int
    stats: dict[str, np.ndarray]
    percentiles: dict[str, dict[str, float]]
    weak: list[dict[str, Any]]
    strong: list[dict[str, Any]]
    reasons: list[str] = field(default_factory=list)
    examples: dict[str, Path] = field(default_factory=dict)


def _image_paths(folder: Path, limit: int, seed: int) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"IMAGES_DIR: folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(paths) < 10:
        raise DataError(f"IMAGES_DIR: {len(paths)} image(s) in {folder}; calibration needs at least 10")
    if len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(paths))[:limit])
        paths = [paths[i] for i in keep]
    return paths


def _circular_std_180(angles: np.ndarray) -> float:
    doubled = np.radians(angles * 2)
    r = np.hypot(np.sin(doubled).mean(), np.cos(doubled).mean())
    return float(np.degrees(np.sqrt(-2 * np.log(max(r, 1e-12)))) / 2)


def _blur_sigma_for(images: list[np.ndarray], target_sharpness: float) -> float | None:
    """The Gaussian sigma that brings typical images down to ``target_sharpness``, by simulation."""
    for sigma in BLUR_SIGMAS:
        blurred = [cv2.GaussianBlur(img, (0, 0), float(sigma)) for img in images]
        if np.median([image_statistics(b)["sharpness"] for b in blurred]) <= target_sharpness:
            return float(sigma)
    return None


def propose(stats: dict[str, np.ndarray], images: list[np.ndarray], flips: list[dict[str, Any]]) -> tuple[list, list, list[str]]:
    """(weak steps, strong steps, reasons) from the measured statistics."""
    p = {k: np.percentile(v, [5, 50, 95]) for k, v in stats.items()}
    reasons: list[str] = []
    strong: list[dict[str, Any]] = copy.deepcopy(flips)
    weak: list[dict[str, Any]] = copy.deepcopy(flips)

    b5, b50, b95 = p["brightness"]
    brightness = float(np.clip(round(max(b95 - b50, b50 - b5) / 255 * MARGIN, 2), 0.05, 0.6))
    c5, c50, c95 = p["contrast"]
    contrast = float(np.clip(round(max(c95 / max(c50, 1e-6) - 1, 1 - c5 / max(c50, 1e-6)) * MARGIN, 2), 0.05, 0.6))
    strong.append({"RandomBrightnessContrast": {"brightness_limit": brightness, "contrast_limit": contrast, "p": 0.8}})
    reasons.append(f"brightness 5-95 %: {b5:.0f}-{b95:.0f} (median {b50:.0f}) -> brightness_limit {brightness}; "
                   f"contrast {c5:.1f}-{c95:.1f} (median {c50:.1f}) -> contrast_limit {contrast}")

    n50, n95 = p["nonuniformity"][1], p["nonuniformity"][2]
    intensity = float(np.clip(round((n95 - n50) / 2 * MARGIN, 3), 0.0, 0.2))
    if intensity >= 0.02:
        strong.append({"Illumination": {"mode": "linear", "intensity_range": [0.01, intensity], "p": 0.4}})
        reasons.append(f"illumination non-uniformity median {n50:.3f}, 95 % {n95:.3f} -> Illumination up to {intensity}")
    else:
        reasons.append(f"illumination non-uniformity stable (median {n50:.3f}, 95 % {n95:.3f}): no Illumination step")

    coherent = stats["orientation"][stats["coherence"] >= 0.3]
    if len(coherent) >= MIN_COHERENT_IMAGES:
        spread = _circular_std_180(coherent)
        rotate = float(np.clip(round(spread * MARGIN), 2, MAX_ROTATE))
        capped = f" (capped at {MAX_ROTATE}: the spread also holds the parts' own edges, e.g. scratches at any angle)" \
            if spread * MARGIN > MAX_ROTATE else ""
        reasons.append(f"dominant orientation spread {spread:.1f} deg over {len(coherent)} oriented images -> rotate +-{rotate:g}{capped}")
    else:
        rotate = 5.0
        reasons.append(f"only {len(coherent)} images with a clear orientation: rotate +-5 deg (default)")
    strong.append({"Affine": {"rotate": [-rotate, rotate], "translate_percent": [-0.04, 0.04], "border_mode": 4, "p": 0.7}})
    mild = min(round(rotate / 2, 1), 5.0)  # the weak view stays mild: the student always sees it
    weak.append({"Affine": {"rotate": [-mild, mild], "translate_percent": [-0.02, 0.02],
                            "border_mode": 4, "p": 0.5}})

    s5, s50 = p["sharpness"][0], p["sharpness"][1]
    if s50 - s5 > 0.1:
        typical = [img for img, s in zip(images, stats["sharpness"]) if abs(s - s50) <= 0.1][:16] or images[:16]
        sigma = _blur_sigma_for(typical, s5)
        if sigma is not None:
            top = float(round(max(0.3, sigma * MARGIN), 2))
            strong.append({"GaussianBlur": {"blur_limit": 0, "sigma_limit": [0.1, top], "p": 0.5}})
            reasons.append(f"sharpness (log10 var Laplacian) 5 %: {s5:.2f}, median {s50:.2f}: a Gaussian blur of sigma {sigma} "
                           f"reproduces the blurriest images -> sigma up to {top}")
    if not any("GaussianBlur" in step for step in strong):
        reasons.append(f"focus stable (sharpness 5 % {s5:.2f}, median {s50:.2f}): no blur step")

    z50, z95 = p["noise"][1], p["noise"][2]
    extra = float(np.sqrt(max(0.0, z95**2 - z50**2)) / 255 * MARGIN)
    if extra >= 0.004:
        top = float(round(max(0.01, extra), 3))
        strong.append({"GaussNoise": {"std_range": [0.0, top], "p": 0.5}})
        reasons.append(f"noise sigma median {z50:.2f}, 95 % {z95:.2f} grey levels -> GaussNoise std up to {top}")
    else:
        reasons.append(f"noise stable (sigma median {z50:.2f}, 95 % {z95:.2f}): no noise step")
    return weak, strong, reasons


def calibrate(images_dir: str | Path, recipe: Recipe | None = None, *, max_images: int = 400, seed: int = 0) -> Calibration:
    folder = Path(images_dir)
    if recipe is not None:
        from kit.data import preprocess_spec

        spec = preprocess_spec(recipe)
        flips = [s for s in recipe.views.weak if next(iter(s)) in ("HorizontalFlip", "VerticalFlip")]
    else:
        spec = PreprocessSpec(image_size=(96, 96))
        flips = [{"HorizontalFlip": {"p": 0.5}}, {"VerticalFlip": {"p": 0.5}}]
    paths = _image_paths(folder, max_images, seed)
    images = [prepare_image(read_image(p, spec.channels), spec) for p in paths]
    stats = statistics_table(images)
    weak, strong, reasons = propose(stats, images, flips)
    percentiles = {k: dict(zip(("p5", "p50", "p95"), map(float, np.percentile(v, [5, 50, 95])))) for k, v in stats.items()}
    examples = {
        "darkest": paths[int(np.argmin(stats["brightness"]))], "brightest": paths[int(np.argmax(stats["brightness"]))],
        "blurriest": paths[int(np.argmin(stats["sharpness"]))], "noisiest": paths[int(np.argmax(stats["noise"]))],
        "most uneven": paths[int(np.argmax(stats["nonuniformity"]))],
    }
    return Calibration(len(paths), stats, percentiles, weak, strong, reasons, examples)


def views_yaml(cal: Calibration) -> str:
    body = yaml.safe_dump({"views": {"weak": cal.weak, "strong": cal.strong}}, sort_keys=False, default_flow_style=None, width=120)
    body = re.sub(r"^(  )(weak|strong):\n", r"\1\2:\n", body, flags=re.M)
    header = f"# views proposed by `kit calibrate` from {cal.images} images (margin x{MARGIN}):\n"
    return header + "".join(f"#   {r}\n" for r in cal.reasons) + body


_TOP_LEVEL = re.compile(r"^(?P<key>[A-Za-z_]+):", re.M)


def replace_views(recipe_text: str, new_block: str) -> str:
    """The recipe text with its top-level ``views:`` block (and the comments just above it) replaced."""
    keys = list(_TOP_LEVEL.finditer(recipe_text))
    start = next((m for m in keys if m.group("key") == "views"), None)
    if start is None:
        return recipe_text.rstrip("\n") + "\n\n" + new_block
    following = [m for m in keys if m.start() > start.start()]
    end = following[0].start() if following else len(recipe_text)
    # keep any comment block that introduces the next section with it
    tail = recipe_text[start.start():end]
    trailing = re.search(r"(\n(?:#[^\n]*\n|\s*\n)*)$", tail)
    cut = end - (len(trailing.group(1)) - 1 if trailing else 0)
    return recipe_text[:start.start()] + new_block.rstrip("\n") + "\n" + recipe_text[cut:]


def apply_to_recipe(cal: Calibration, recipe_path: Path, write: bool) -> str:
    """The unified diff of the recipe change; with ``write`` the recipe is rewritten (atomically)
    after the new text has been validated as a recipe."""
    old = recipe_path.read_text(encoding="utf-8")
    new = replace_views(old, views_yaml(cal))
    if write:
        check = recipe_path.parent / f".{recipe_path.name}.calibrate.yaml"
        write_text_atomic(check, new)
        try:
            load_recipe(check)
        except KitError as exc:
            raise KitError(f"{recipe_path}: the proposed views do not validate ({exc}); the recipe was not changed") from None
        finally:
            check.unlink(missing_ok=True)
        write_text_atomic(recipe_path, new)
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(recipe_path), f"{recipe_path} (calibrated)"))


def plot_calibration(cal: Calibration, path: Path) -> Path:
    """One page: a histogram per statistic with its 5/50/95 % marks, and the extreme images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(STATISTICS)
    fig = plt.figure(figsize=(11.7, 8.3))
    grid = fig.add_gridspec(3, 5, height_ratios=[1, 1, 1.1], hspace=0.55, wspace=0.35)
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[i // 4, i % 4])
        values = cal.stats[name]
        ax.hist(values, bins=30, color="#1565c0", alpha=0.8)
        for q, style in (("p5", ":"), ("p50", "-"), ("p95", ":")):
            ax.axvline(cal.percentiles[name][q], color="#c62828", linestyle=style, linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for j, (label, img_path) in enumerate(cal.examples.items()):
        ax = fig.add_subplot(grid[2, j])
        img = read_image(img_path, "rgb")
        ax.imshow(img)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Imaging conditions of {cal.images} images (red: 5 / 50 / 95 %)", fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
