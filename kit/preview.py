"""``kit views``: the views preview for a recipe, without a run."""

from __future__ import annotations

from pathlib import Path

from kit.data import decode_split, index_line, preprocess_spec
from kit.recipe import load_recipe
from kit.views import build_view
from kit.views.preview import render_views_preview


def preview_views(recipe_path: str | Path, out: str | Path | None = None, *, per_class: int = 2) -> Path:
    recipe = load_recipe(recipe_path)
    index = index_line(recipe)
    spec = preprocess_spec(recipe)
    picked = []
    for label in range(len(index.classes)):
        picked += [s for s in index.split("train") if s.label == label][:per_class]
    split = decode_split(picked, spec)
    channels = spec.num_channels
    pipelines = {v: build_view(getattr(recipe.views, v), f"views.{v}", recipe.data.image_size, channels) for v in ("weak", "strong")}
    out = Path(out) if out else Path(f"{recipe.line.name}.views.png")
    return render_views_preview(split, index.classes, pipelines, out, per_class=per_class, seed=recipe.seed)
