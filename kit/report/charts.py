"""The report's charts: matplotlib (Agg) -> PNG bytes, readable at print size."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Translate = Callable[..., str]
COLOURS = {"teacher": "#4c566a", "teacher-onnx": "#81a1c1", "student": "#2e7d32", "student-kd": "#f9a825", "student-none": "#9e9e9e",
           "student-crld": "#2e7d32"}
DEFAULT_COLOUR = "#1565c0"


@contextmanager
def chart_style(font_family: str | None) -> Iterator[None]:
    rc = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
          "savefig.dpi": 150, "figure.dpi": 100}
    if font_family:
        rc["font.family"] = [font_family, "DejaVu Sans"]
    with plt.rc_context(rc):
        yield


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def family_name(family: str, t: Translate) -> str:
    """A corruption family in the report's language (a family registered without a translation keeps its name)."""
    try:
        return t("fam_" + family)
    except KeyError:
        return family


def robustness_chart(robustness: dict[str, Any], models: list[str], labels: dict[str, str], t: Translate) -> bytes:
    """Grouped bars: mean accuracy per family for each model; held-out families hatched. ``robustness``:
    ``kpi.json``'s robustness section (``kit.verify.robustness.run_suite``)."""
    families = robustness["families"]
    fams = list(families)
    summary = robustness["summary"]
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(fams))
    for i, m in enumerate(models):
        values = [100 * (summary[m]["per_family"].get(f) or 0) for f in fams]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=labels.get(m, m),
                      color=COLOURS.get(m, DEFAULT_COLOUR))
        for bar, f in zip(bars, fams):
            if families[f]["coverage"] == "held-out":
                bar.set_hatch("///")
                bar.set_edgecolor("white")
    names = [family_name(f, t) for f in fams]
    ax.set_xticks(x, [f"{name}\n({t('held_out')})" if families[f]["coverage"] == "held-out" else name
                      for f, name in zip(fams, names)], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(t("chart_accuracy"))
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), fontsize=8, ncols=min(4, len(models)), frameon=False)
    return _png(fig)


def latency_chart(rows: list[dict[str, Any]], takt_ms: float | None, t: Translate,
                  labels: dict[str, str] | None = None) -> bytes:
    """Horizontal bars: end-to-end batch-1 p95 per model/runtime, with the line's budget; bars named by ``labels``."""
    names = [r["model"] for r in rows]
    values = [r["p95_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.0))
    ax.barh([(labels or {}).get(n, n) for n in names], values, color=[COLOURS.get(n, DEFAULT_COLOUR) for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f} ms", va="center", fontsize=8)
    if takt_ms is not None:
        ax.axvline(takt_ms, color="#c62828", linestyle="--")
        ax.text(takt_ms, len(rows) - 0.4, f" {t('chart_takt')} {takt_ms:g} ms", color="#c62828", fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel(t("chart_latency") + " (log)")
    ax.invert_yaxis()
    return _png(fig)


def operating_chart(curve: list[dict[str, Any]], threshold: float | None, point: dict[str, Any], t: Translate) -> bytes:
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    pts = [(r["automation_rate"], r["accepted_accuracy"]) for r in curve if r["accepted_accuracy"] is not None]
    if pts:
        cov, acc = zip(*pts)
        ax.plot([100 * c for c in cov], [100 * a for a in acc], marker=".", color=DEFAULT_COLOUR)
    if threshold is not None and point.get("accepted_accuracy") is not None:
        ax.scatter([100 * point["automation_rate"]], [100 * point["accepted_accuracy"]], s=80, color="#c62828", zorder=3,
                   label=f"{t('chart_threshold')} {threshold:.3f}")
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel(t("chart_coverage") + " %")
    ax.set_ylabel(t("chart_accepted") + " %")
    ax.grid(alpha=0.3)
    return _png(fig)


def reliability_chart(before: list[dict[str, Any]], after: list[dict[str, Any]], t: Translate) -> bytes:
    fig, ax = plt.subplots(figsize=(4.0, 3.4))
    ax.plot([0, 100], [0, 100], color="#9e9e9e", linestyle=":", label=t("chart_ideal"))
    for rows, label, colour in ((before, t("chart_before"), "#f9a825"), (after, t("chart_after"), DEFAULT_COLOUR)):
        pts = [(100 * r["confidence"], 100 * r["accuracy"]) for r in rows if r["count"]]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=label, color=colour)
    ax.set_xlabel(t("chart_confidence") + " %")
    ax.set_ylabel(t("chart_observed") + " %")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_chart(matrix: list[list[int]], classes: list[str], t: Translate) -> bytes:
    cm = np.asarray(matrix)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(n), classes, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel(t("chart_pred"))
    ax.set_ylabel(t("chart_true"))
    return _png(fig)
