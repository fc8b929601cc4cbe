"""Page one's "conditions that break the model": per corruption family, the mildest level at which the deployed
model lets more defects through, or rejects more good parts, than the recipe's limits allow, in physical units
(``kit.physical``), with what to do about it.

The rates are the robustness suite's decision cells in ``kpi.json`` (``robustness.decisions.cells``: the deployed
rule on every family x severity copy of the test images, escapes and false rejects with counts). The limits are the
gated ``kpi.max_class_escape_rate`` (the strictest, when per class) and ``kpi.max_false_reject_rate``; a limit the
recipe leaves out is replaced by ``DEFAULT_LIMIT`` and the page says so. A level "breaks" when its measured rate is
above the limit (the point estimate, as the cell's k / n reads).

The advice fits the family: trained in the strong view (in-recipe) -> train it harder (the preset severity whose
draws reach the breaking level, read from the preset itself), held out -> add it to the strong view, and in every
case the way to keep it off the line (lighting, focus, fixture).
"""

from __future__ import annotations

from typing import Any, Callable

from kit.report.charts import family_name
from kit.report.format import format_pct
from kit.verify.record import KpiRecord
from kit.physical import PRESET_OF, covering_severity, physical_level

DEFAULT_LIMIT = 0.05
ADD_TRANSFORM = {"shadow": "RandomShadow", "perspective": "Perspective", "uneven_illumination": "lighting: {severity: 3}"}


def limits(kpi: KpiRecord) -> dict[str, tuple[float, bool]]:
    """measure -> (limit, set by the recipe): escapes (strictest gated class limit) and false rejects."""
    esc = [c.limit for c in kpi.gate.gated if c.target.startswith("kpi.max_class_escape_rate") and c.limit is not None]
    fr = [c.limit for c in kpi.gate.gated if c.target == "kpi.max_false_reject_rate" and c.limit is not None]
    return {"escape_rate": (min(esc), True) if esc else (DEFAULT_LIMIT, False),
            "false_reject_rate": (min(fr), True) if fr else (DEFAULT_LIMIT, False)}


def _over(cell: dict[str, Any], measure: str, limit: float) -> bool:
    r = cell.get(measure)
    return bool(r) and r.get("rate") is not None and r["rate"] > limit + 1e-12


def _strong_severity(recipe: Any, preset: str | None) -> int | None:
    """The severity of ``preset`` in the recipe's strong view (None: not there)."""
    for step in recipe.views.strong if recipe is not None and preset else []:
        if preset in step:
            return int((step[preset] or {}).get("severity", 1))
    return None


def _advice(family: str, coverage: str, value: float, recipe: Any, t: Callable[..., str]) -> str:
    preset = PRESET_OF.get(family)
    if coverage == "held-out":
        transform = ADD_TRANSFORM.get(family, preset or family)
        train = t("brk_add", transform=transform)
    else:
        needed, now = covering_severity(family, value), _strong_severity(recipe, preset)
        if needed is not None and preset is not None and (now is None or needed > now):
            train = t("brk_raise", preset=preset, now=now if now is not None else "–", needed=needed)
        elif needed is None and preset is not None:
            train = t("brk_beyond", preset=preset)
        else:
            train = t("brk_widen")
    return t("brk_advice", train=train, control=t("brk_ctl_" + family))


def _rate_text(r: dict[str, Any], limit: float, key: str, t: Callable[..., str]) -> str:
    return t(key, rate=format_pct(r["rate"]), k=r["k"], n=r["n"], limit=format_pct(limit, 0))


def breaking_conditions(kpi: KpiRecord, recipe: Any, image_size: tuple[int, int], t: Callable[..., str]) -> dict[str, Any] | None:
    """Rows (families that break, mildest first), the families that hold and the limits used; None when the run has no
    decision cells or no good-part class (escapes and false rejects are not defined), or decided no part alone."""
    decisions = kpi.robustness.get("decisions") or {}
    cells = decisions.get("cells") or []
    if not cells or kpi.operating.ok_class is None or not kpi.operating.test.get("accepted"):
        return None
    lim = limits(kpi)
    families = kpi.robustness["families"]
    by_family: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        by_family.setdefault(cell["family"], []).append(cell)
    rows, holding = [], []
    for family, fcells in by_family.items():
        fcells = sorted(fcells, key=lambda c: c["severity"])
        coverage = families.get(family, {}).get("coverage", "held-out")
        broken = next((c for c in fcells if any(_over(c, m, lim[m][0]) for m in lim)), None)
        if broken is None:
            harshest = physical_level(family, fcells[-1]["value"], image_size)
            holding.append(t("brk_holds_family", family=family_name(family, t), level=_physical_text(harshest, t)))
            continue
        level = physical_level(family, broken["value"], image_size)
        held = [c for c in fcells if c["severity"] < broken["severity"]]
        effects = [_rate_text(broken[m], lim[m][0], "brk_" + m, t) for m in lim if _over(broken, m, lim[m][0])]
        rows.append({"family": family, "name": family_name(family, t), "coverage": coverage,
                     "coverage_text": t("brk_in_recipe" if coverage == "in-recipe" else "brk_held_out"),
                     "severity": broken["severity"], "value": broken["value"], "amount": level.amount,
                     "level": _physical_text(level, t),
                     "held_to": _physical_text(physical_level(family, held[-1]["value"], image_size), t) if held else None,
                     "effects": effects, "escape_rate": broken.get("escape_rate"),
                     "false_reject_rate": broken.get("false_reject_rate"),
                     "advice": _advice(family, coverage, broken["value"], recipe, t)})
    rows.sort(key=lambda r: (r["severity"], r["family"]))
    unset = [m for m, (_, set_) in lim.items() if not set_]
    return {"rows": rows, "holding": holding, "images": kpi.robustness.get("images"),
            "limits": {m: v for m, (v, _) in lim.items()},
            "intro": t("brk_intro", n=kpi.robustness.get("images"), esc=format_pct(lim["escape_rate"][0], 0), fr=format_pct(lim["false_reject_rate"][0], 0),
                       w=image_size[1], h=image_size[0]),
            "unset": t("brk_default_limit", limit=format_pct(DEFAULT_LIMIT, 0)) if unset else None}


def _physical_text(level: Any, t: Callable[..., str]) -> str:
    return t("phys_" + level.family, **level.values)


def breaking_summary(kpi: KpiRecord, t: Callable[..., str]) -> list[str]:
    """One line for the verdict box: the conditions that break the model, named (the table on page one has the
    levels). Needs no image size: it names families only."""
    decisions = kpi.robustness.get("decisions") or {}
    if not decisions.get("cells") or kpi.operating.ok_class is None or not kpi.operating.test.get("accepted"):
        return []
    lim = limits(kpi)
    broken = sorted({c["family"] for c in decisions["cells"] if any(_over(c, m, lim[m][0]) for m in lim)})
    if not broken:
        return []
    return [t("brk_warning", families=t("list_sep").join(family_name(f, t) for f in broken))]
