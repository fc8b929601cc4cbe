"""After go-live, in the report: the shadow period (``kit shadow``) and the previous model against this one
(``kit verify`` with ``previous:``). Both are drawn by ``_shadow.html.j2``; ``kit shadow`` renders the same
partial as its own page (``shadow.html``), so the numbers read the same in both places.

Every user string (class names, part ids, paths) reaches the page through jinja2's autoescaping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jinja2

from kit.errors import ShadowError
from kit.io import read_json
from kit.report.i18n import LANGUAGES, translator
from kit.verify.record import ClassChange, KpiRecord, OverallChange, Previous

SHADOW_NAME = "shadow.json"  # the record ``kit shadow`` writes (``kit.feedback.shadow``) and the report reads
SHADOW_FORMAT = "inspection-kit/shadow"

MISMATCH_KEYS = ("inspector_without_decision", "decision_without_inspector", "repeated_inspector_rows", "unknown_labels",
                 "rows_without_id", "sha256_differs")


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def _ci(r: dict[str, Any], t: Callable[..., str]) -> str:
    return t("ci", level=f"{r['confidence']:.0%}", low=_pct(r["low"]), high=_pct(r["high"]), n=r["n"])


def _rate_cell(r: dict[str, Any] | None, t: Callable[..., str]) -> dict[str, str] | None:
    if r is None:
        return None
    return {"kn": f"{r['k']} / {r['n']}", "rate": _pct(r["rate"]), "ci": _ci(r, t)}


def shadow_section(result: dict[str, Any], t: Callable[..., str]) -> dict[str, Any]:
    """What ``_shadow.html.j2`` draws for a ``kit shadow`` result, in the report's language."""
    s, rec = result["summary"], result["recommendation"]
    measures = [(t("sh_agreement"), s["agreement"]), (t("sh_agreement_ok_ng"), s["agreement_ok_ng"]),
                (t("sh_automated"), s["automated"]), (t("sh_escapes"), s["escapes"]),
                (t("sh_false_rejects"), s["false_rejects"])]
    rows = []
    for r in result["per_class"]:
        err = r.get("escapes") or r.get("false_rejects")
        rows.append({"class": r["class"], "kind": t("sh_kind_" + r["kind"]), "parts": r["parts"],
                     "automated": _rate_cell(r["automated"], t), "agreement": _rate_cell(r["agreement"], t),
                     "errors": _rate_cell(err, t), "error_kind": t("sh_escape_short" if "escapes" in r else "sh_false_reject_short")})
    pool = t("sh_pool_defective" if rec.get("pool_name") == "defective parts" else "sh_pool_parts")
    risk = t("sh_risk_escape" if rec.get("risk") == "escape_rate" else "sh_risk_error")
    level = f"{rec.get('confidence', 0.95):.0%}"
    if rec["decision"] == "automate":
        sentence = t("sh_automate", thr=f"{rec['threshold']:.4g}", n=rec["pool"], pool=pool, level=level, risk=risk,
                     upper=_pct(rec["upper"], 2), limit=_pct(rec["limit"], 2), rate=_pct(rec["automation_rate"]))
    elif rec.get("needed") is None:
        sentence = t("sh_keep_none", risk=risk) if "limit" in rec else t("sh_keep_empty")
    else:
        stop = rec.get("stopped_at")
        why = (t("sh_keep_bound", k=stop["k"], level=level, risk=risk, upper=_pct(stop["risk_upper"], 2), limit=_pct(rec["limit"], 2))
               if stop else t("sh_keep_few", n=rec["pool"], pool=pool, risk=risk, limit=_pct(rec["limit"], 2), level=level))
        more = t("sh_keep_more", more=rec["more"], pool=pool, needed=rec["needed"])
        if rec.get("more_parts"):
            more += t("sentence_sep") + t("sh_keep_more_parts", parts=rec["more_parts"])
        sentence = why + t("sentence_sep") + more
    counts = result["counts"]
    return {
        "intro": t("sh_intro", parts=counts["matched"], first=(result["period"]["first"] or "–")[:10],
                   last=(result["period"]["last"] or "–")[:10], ok=result["ok_class"]),
        "measures": [{"name": n, **_rate_cell(r, t)} for n, r in measures],
        "rows": rows, "decision": rec["decision"], "recommendation": sentence,
        "mismatches": [{"name": t("sh_m_" + k), "count": counts.get(k, 0), "examples": result["mismatches"].get(k, [])[:5]}
                       for k in MISMATCH_KEYS],
        "mismatch_total": sum(counts.get(k, 0) for k in MISMATCH_KEYS),
        "study": study_section(result["study"], t) if result.get("study") else None,
    }


def _kappa(k: dict[str, Any] | None) -> str:
    if not k or k.get("kappa") is None:
        return "–"
    return f"{k['kappa']:.2f}" + (f" [{k['low']:.2f}, {k['high']:.2f}]" if k.get("low") is not None else "")


def study_section(study: dict[str, Any], t: Callable[..., str]) -> dict[str, Any]:
    """The attribute agreement study (``kit.feedback.attribute_study``) in the report's language: one row per
    appraiser with the MSA figures next to the kit's own words, between appraisers, pairs, levels, sample size."""
    counts, need, levels = study["counts"], study["parts_needed"], study["aiag_levels"]
    level = f"{study['confidence']:.0%}"

    def name(a: str) -> str:
        return t("st_model") if a == "model" else a

    def figure(r: dict[str, Any] | None, with_level: bool = False) -> dict[str, Any] | None:
        cell = ({"kn": f"{r['k']} / {r['n']}", "rate": _pct(r["rate"]), "ci": f"{_pct(r['low'])[:-2]}–{_pct(r['high'])}"}
                if r is not None and r["n"] else None)  # the level and n are in the intro: a compact cell
        if cell is not None:
            measured = with_level and r.get("aiag")
            cell["aiag"], cell["level"] = (t("st_aiag_" + r["aiag"]), r["aiag"]) if measured else (None, None)
        return cell

    rows = [{"appraiser": name(a["appraiser"]), "is_model": a["is_model"], "decisions": a["decisions"],
             "within": figure(a["within"]), "within_kappa": _kappa(a["within_kappa"]),
             **{m: figure(a["versus_reference"][m], True) for m in ("effectiveness", "miss_rate", "false_alarm_rate")},
             "kappa": _kappa(a["kappa_reference"]), "verdict": t("st_aiag_" + a["aiag"]) if a["aiag"] else "–",
             "level": a["aiag"]} for a in study["appraisers"]]
    between = [{"group": t("st_between_inspectors"), "agreement": figure(study["between"]["agreement"]),
                "fleiss": _kappa(study["between"]["fleiss"]), "all_ref": figure(study["between"]["all_match_reference"])}]
    if study.get("between_with_model"):
        b = study["between_with_model"]
        between.append({"group": t("st_between_model"), "agreement": figure(b["agreement"]), "fleiss": _kappa(b["fleiss"]),
                        "all_ref": figure(b["all_match_reference"])})
    pct = lambda v: f"{100 * v:g} %"  # noqa: E731
    model = next((a for a in study["appraisers"] if a["is_model"]), None)
    return {
        "intro": t("st_intro", parts=counts["parts"], defective=counts["defective"], good=counts["good"],
                   appraisers=sum(not a["is_model"] for a in study["appraisers"]),
                   trials=max(a["trials"] for a in study["appraisers"]), level=level, reference=study["reference_text"]),
        "rows": rows, "between": between,
        "pairs": [{"a": name(p["a"]), "b": name(p["b"]), "parts": p["parts"], "kappa": _kappa(p)} for p in study["pairs"]],
        "levels": t("st_levels", eff_ok=pct(levels["effectiveness"][0]), eff_m=pct(levels["effectiveness"][1]),
                    miss_ok=pct(levels["miss_rate"][0]), miss_m=pct(levels["miss_rate"][1]),
                    fa_ok=pct(levels["false_alarm_rate"][0]), fa_m=pct(levels["false_alarm_rate"][1])),
        "sample": t("st_sample", miss=pct(levels["miss_rate"][0]), level=level, miss_n=need["miss_rate"]["acceptable"],
                    miss_m=pct(levels["miss_rate"][1]), miss_mn=need["miss_rate"]["marginal"],
                    defective=counts["defective"], fa=pct(levels["false_alarm_rate"][0]),
                    fa_n=need["false_alarm_rate"]["acceptable"], fa_m=pct(levels["false_alarm_rate"][1]),
                    fa_mn=need["false_alarm_rate"]["marginal"], good=counts["good"]),
        "model_note": t("st_model_note", abstained=counts.get("model_abstained", 0), parts=model["parts"],
                        absent=counts.get("model_without_decision", 0)) if model else None,
    }


def previous_section(previous: Previous | None, t: Callable[..., str]) -> dict[str, Any] | None:
    """The old-vs-new table of ``kpi.json``'s ``previous`` block (``kit.verify.regression``)."""
    if not previous:
        return None

    def diff_text(d: ClassChange | OverallChange) -> str:
        if d.diff is None:
            return "–"
        return t("prev_diff", diff=f"{100 * d.diff:+.1f}", low=f"{100 * d.low:+.1f}", high=f"{100 * d.high:+.1f}")

    rows = [{"class": r.class_, "n": r.n, "old": _pct(r.old), "new": _pct(r.new), "diff": diff_text(r),
             "verdict": t("prev_" + r.verdict), "worse": r.verdict == "worse", "total": False}
            for r in previous.per_class]
    overall = previous.overall
    rows.append({"class": t("prev_overall"), "n": overall.n, "old": _pct(overall.old), "new": _pct(overall.new),
                 "diff": diff_text(overall), "verdict": t("prev_" + overall.verdict), "worse": overall.verdict == "worse",
                 "total": True})
    intro = t("prev_intro", run=previous.run_dir, n=overall.n, level=f"{previous.confidence:.0%}")
    if previous.excluded_seen_by_previous:
        intro += t("sentence_sep") + t("prev_excluded", n=previous.excluded_seen_by_previous)
    return {"intro": intro, "rows": rows, "worse": previous.worse, "gated": previous.gated}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("kit.report", "templates"),
                              autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_shadow_page(result: dict[str, Any], lang: str = "en") -> str:
    """``kit shadow``'s own HTML page: the report's shadow section, standalone."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; choose from {', '.join(LANGUAGES)}")
    t = translator(lang)
    return _environment().get_template("shadow_page.html.j2").render(
        t=t, lang=lang, shadow=shadow_section(result, t), previous=None, result=result)


def after_golive_context(kpi: KpiRecord, shadow: Any, t: Callable[..., str]) -> dict[str, Any]:
    """The report's ``shadow`` and ``previous`` (each None when absent); ``shadow``: a shadow.json path or folder."""
    return {"shadow": shadow_section(read_shadow(shadow), t) if shadow is not None else None,
            "previous": previous_section(kpi.previous, t)}


def read_shadow(path: str | Path) -> dict[str, Any]:
    """A ``shadow.json`` (or the folder holding one), checked to be one."""
    path = Path(path)
    if path.is_dir():
        path = path / SHADOW_NAME
    if not path.is_file():
        raise ShadowError(f"{path}: no shadow result; make one with `kit shadow --log DECISIONS --inspector CSV`")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != SHADOW_FORMAT:
        raise ShadowError(f"{path}: not a `kit shadow` result (no {SHADOW_FORMAT!r} format header)")
    return data
