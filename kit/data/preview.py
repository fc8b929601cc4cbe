"""``views.png`` (a run's data stage) and ``kit views`` (a recipe, no run): what the weak and strong
views do to real images of the line."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import matplotlib

matplotlib.use("Agg")  # files only; no display on a plant PC or in CI
import matplotlib.pyplot as plt
import numpy as np

from kit.data.dataset import DecodedSplit
from kit.io import write_atomic
from kit.seeds import view_seed
from kit.views.build import apply_view


def render_views_preview(
    split: DecodedSplit,
    classes: list[str],
    pipelines: dict[str, A.Compose],
    path: str | Path,
    *,
    per_class: int = 2,
    strong_samples: int = 2,
    seed: int = 0,
) -> Path:
    """A grid: one row per image (``per_class`` of each class): original, weak, strong x k."""
    rows = []
    for label, name in enumerate(classes):
        idx = np.flatnonzero(split.labels == label)[:per_class]
        rows += [(name, int(i)) for i in idx]
    cols = 2 + strong_samples
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.6 * len(rows)), squeeze=False)
    for r, (name, i) in enumerate(rows):
        image = split.images[i]
        panels = [("original", image), ("weak", apply_view(pipelines["weak"], image, view_seed(seed, 0, i, 0)))]
        panels += [
            (f"strong #{k + 1}", apply_view(pipelines["strong"], image, view_seed(seed, k, i, 1)))
            for k in range(strong_samples)
        ]
        for c, (title, panel) in enumerate(panels):
            ax = axes[r][c]
            cmap = "gray" if panel.shape[2] == 1 else None
            ax.imshow(panel[:, :, 0] if panel.shape[2] == 1 else panel, cmap=cmap, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return Path(path)


def preview_views(recipe_path: str | Path, out: str | Path | None = None, *, per_class: int = 2) -> Path:
    """``kit views``: the same grid for a recipe, before any run (``per_class`` training images of each class)."""
    from kit.data import decode_split, index_line, teacher_preprocess_spec
    from kit.recipe import load_recipe
    from kit.views.build import build_view

    recipe = load_recipe(recipe_path)
    index = index_line(recipe)
    spec = teacher_preprocess_spec(recipe)  # views are drawn at the teacher's size when it reads larger images
    picked = []
    for label in range(len(index.classes)):
        picked += [s for s in index.split("train") if s.label == label][:per_class]
    split = decode_split(picked, spec)
    pipelines = {v: build_view(getattr(recipe.views, v), f"views.{v}", recipe.view_size, spec.num_channels)
                 for v in ("weak", "strong")}
    out = Path(out) if out else Path(f"{recipe.line.name}.views.png")
    return render_views_preview(split, index.classes, pipelines, out, per_class=per_class, seed=recipe.seed)
