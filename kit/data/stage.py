"""The run's data stage: index, split and decode the line once, record the split, preview the views."""

from __future__ import annotations

from typing import Any

from kit.rundir import VIEWS_NAME, write_split


def run_data_stage(ctx: Any) -> dict[str, Any]:
    """``split.csv`` (what every later stage reads) and ``views.png``; the decoded images stay in ``ctx.data``."""
    from kit.data.preview import render_views_preview

    data = ctx.data
    if ctx.is_main:
        write_split(ctx.run_dir, data.classes, data.splits)
        if not (ctx.run_dir / VIEWS_NAME).is_file():  # views as drawn: at the teacher's size when it reads larger images
            render_views_preview(data.teacher_splits["train"], data.classes, ctx.pipelines, ctx.run_dir / VIEWS_NAME,
                                 seed=ctx.recipe.seed)
    return {"counts": data.counts, "duplicates_dropped": len(data.index.duplicates_dropped),
            "unreadable": len(data.unreadable)}
