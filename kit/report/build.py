"""``kit report``: ``verify/kpi.json`` + the recipe's economics -> ``report/report.html`` (one
self-contained file: charts and images inline, no scripts, no network) and, when asked,
``report/report.pdf`` rendered from the same HTML.

Every user string reaches the page through jinja2's autoescaping.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import jinja2

from deploy.decision import DecisionRule
from deploy.manifest import MANIFEST_NAME, read_manifest, sha256_file
from kit.errors import ArgumentError, KitError
from kit.io import publish_dir, read_json, staging_dir, write_text_atomic
from kit.recipe import read_recipe_lock, recipe_hash
import kit.report.charts as charts
from kit.report.economics import savings
from kit.report.images import data_uri, thumbnail, views_grid_png
from kit.report.format import format_ci, format_exact, format_number, format_pct, format_rate_ci, level as _level
from kit.report.fonts import INSTALL_HINT, cjk_font, embedded_font_css
from kit.report.pdf import fit_to_font, write_pdf
from kit.report.i18n import LANGUAGES, STRINGS, translator
from kit.report.heatmap_section import localisation_context
from kit.report.certificate import certificate_message, certificate_sentences, operating_sentences  # noqa: F401
from kit.report.quality import quality_box
from kit.report.shadow_exit import exit_criteria, mix_assumption, net_downside
from kit.report.breaking import breaking_conditions
from kit.report.label_audit import label_audit_context
from kit.report.page_one import difference_rows, net_context, production_sentences
from kit.report.recommendation import point_only, recommend
from kit.verdict import GO, NONE, TAMPERED_EXIT, Check, Release
from kit.verify.integrity import check_kpi_run
from kit.verify.release import describe_release
from kit.verify import stats
from kit.verify.record import KpiRecord, read_kpi
from kit.verify.machine import cpu_name
from kit.rundir import (
    BUNDLE_DIR, LOCK_NAME, METRICS_NAME, REPORT_DIR, STALE_REPORT_DIR, VIEWS_NAME, comparison_role, kpi_path, mark_stage, parity_path,
    read_state, report_names, require_stages,
)

THUMB_PX = 96
# Bundle formats as a reader names them; the engine is what runs them (the speed card compares across engines).
FORMAT_NAMES = {"onnx": "ONNX FP32", "onnx-int8": "ONNX INT8", "tensorrt-fp16": "TensorRT FP16", "tensorrt-int8": "TensorRT INT8"}
ENGINE_NAMES = {"onnx": "ONNX Runtime", "tensorrt": "TensorRT"}


class ReportError(KitError):
    """The report cannot be rendered as asked."""


@dataclass
class ReportResult:
    html: Path
    pdf: Path | None
    verdict: Release  # the run's one verdict, as ``kit verify`` stored it (``kpi.json`` ``release``)
    tampered: list[str] = field(default_factory=list)  # files or figures changed after `kit verify` (kit.verify.integrity)

    @property
    def go(self) -> bool | None:
        """True only for GO (never for GO AFTER A SHADOW PERIOD); None: the recipe sets no KPI target."""
        return None if self.verdict.verdict == NONE else self.verdict.verdict == GO

    @property
    def exit_code(self) -> int:
        """``kit report``'s exit status: the verdict's, or ``TAMPERED_EXIT`` when the run changed after `kit verify`."""
        return TAMPERED_EXIT if self.tampered else self.verdict.exit_code


def build_context(run_dir: Path, lang: str, font_family: str | None) -> dict[str, Any]:
    kpi = read_kpi(run_dir)  # an older file (no intervals, ...) is refused: run `kit verify` again
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    integrity = check_kpi_run(run_dir, kpi, recipe)  # an edited file or figure: page one says TAMPERED, names it
    manifest = read_manifest(run_dir / BUNDLE_DIR)
    parity = read_json(parity_path(run_dir)) if parity_path(run_dir).is_file() else None
    t = translator(lang)
    deployed = kpi.deployed_runtime
    measured, gate = kpi.measured, kpi.gate
    summary = kpi.robustness["summary"]
    gated = gate.gated
    lat_rows = [r for r in kpi.latency["rows"] if r["mode"] == "end_to_end" and r["batch"] == 1]
    basis = automation_basis(kpi)
    money = savings(basis["rate"], recipe.economics)
    students = ["student"] + [comparison_role(m) for m in kpi.compare if comparison_role(m) in summary]
    labels = model_labels(kpi, t)

    with charts.chart_style(font_family):
        figures = {
            "robustness": charts.robustness_chart(kpi.robustness, ["teacher", *students], labels, t),
            "latency": charts.latency_chart(lat_rows, kpi.latency["takt_ms"], t, labels),
            "operating": charts.operating_chart(kpi.operating.curve_test, kpi.operating.threshold, kpi.operating.test, t),
            "reliability": charts.reliability_chart(kpi.calibration.get("reliability_test_before", []),
                                                    kpi.calibration["reliability_test"], t),
            "confusion": charts.confusion_chart(kpi.deployed["confusion_matrix"], kpi.classes, t),
        }
    views_png = run_dir / VIEWS_NAME
    state = read_state(run_dir)
    machine = kpi.machine
    net = net_context(kpi, recipe, t)
    return {
        "t": t, "lang": lang, "kpi": kpi, "recipe": recipe, "run_id": kpi.run_id or state.get("run_id") or run_dir.name,
        "run_folder": run_dir.name, "recommendation": recommend(kpi, t), "integrity": integrity,
        "kpi_sha256": sha256_file(kpi_path(run_dir)),
        "production": production_sentences(kpi, recipe, t), "net": net, "net_downside": net_downside(net, t),
        "shadow_exit": exit_criteria(kpi, recipe, t), "mix_assumption": mix_assumption(kpi, recipe, t),
        "differences": difference_rows(kpi, labels, t),
        "gate_on": gate.gate_on or "point", "known_keys": set(STRINGS[lang]),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "deployed": deployed, "deployed_runtime": kpi.deployed["runtime"],
        "release": kpi.verdict, "gated": [c.to_dict() for c in gated],
        "checks": [_display(c, t, kpi) for c in gate.checks],
        "failed": [_display(c, t, kpi) for c in gated if not c.passed],
        "measured": measured, "summary": summary, "students": students, "model_labels": labels,
        "intervals": kpi.intervals,
        "accuracy_sentence": _accuracy_sentence(kpi, t),
        "baseline_sentence": _baseline_sentence(kpi, t),
        "speed": _speed(kpi, labels, t), "takt_ms": kpi.latency["takt_ms"],
        "money": money, "money_range": _savings_range(basis, recipe), "automation_mix": basis["mix"],
        "automation_text": format_rate_ci(kpi.intervals.automation_rate, t) if basis["mix"] == "test" else
        f"{format_pct(basis['rate'])} ({format_pct(basis['low'])}–{format_pct(basis['high'])})",
        "assumptions": _assumptions(money, recipe.line.defect_rate),
        "operating_sentences": operating_sentences(kpi, t), "certificate_sentences": certificate_sentences(kpi, t),
        "quality": quality_box(kpi, t),
        "test_mix": _test_mix(kpi, t),
        "models_line": t("models_line", teacher=_teacher_arch(recipe), student=recipe.student.arch, method=recipe.distill.method,
                         fmt=FORMAT_NAMES.get(deployed, deployed)),
        "escapes": _escapes(kpi, t),
        "lat_rows": lat_rows, "parity": parity,
        "figures": {k: data_uri(v) for k, v in figures.items()},
        "views": _views(run_dir, recipe, manifest, views_png),
        "errors": [{**e, "thumb": thumbnail(e["path"], recipe.data.channels, THUMB_PX), "action": mistake_action(kpi, e)}
                   for e in kpi.misclassified],
        "recipe_yaml": (run_dir / LOCK_NAME).read_text(encoding="utf-8"), "recipe_hash": recipe_hash(recipe),
        "artefacts": manifest.artefacts, "versions": manifest.extra.get("versions", {}),
        "hardware": machine or {"cpu": cpu_name(), "cores": str(os.cpu_count()), "system": f"{platform.system()} {platform.release()}"},
        "hardware_is_measuring": machine is not None,
        "sources": source_hashes(run_dir),
        "stages": _stages(state, datetime.now(timezone.utc)),
        "training_warnings": _training_warnings(run_dir),
        "localisation": localisation_context(run_dir, kpi, recipe, t),
        "breaking": breaking_conditions(kpi, recipe, tuple(manifest.preprocess.image_size), t),
        "label_audit": label_audit_context(run_dir, t),
    }


def _views(run_dir: Path, recipe: Any, manifest: Any, stored: Path) -> str | None:
    """The training views, one image per class, readable on A4; the data stage's views.png when the images are gone."""
    png = views_grid_png(run_dir, recipe, manifest.preprocess, manifest.classes)
    if png is None and stored.is_file():
        png = stored.read_bytes()
    return data_uri(png) if png is not None else None


def _stages(state: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The run's stages for the appendix, the report row being this report (the state still holds the previous one's)."""
    stages = {name: s for name, s in state.get("stages", {}).items() if name != "report"}
    stages["report"] = {"status": "current", "finished_at": now.isoformat(timespec="seconds"), "seconds": None}
    return stages


def mistake_action(kpi: KpiRecord, mistake: dict[str, Any]) -> str:
    """What the deployed rule did with a misclassified test part (accept / reject alone, or review: a person saw it),
    from its calibrated confidence, the operating threshold and the class thresholds (``deploy.decision``)."""
    op = kpi.operating
    rule = DecisionRule(threshold=op.threshold, ok_class=op.ok_class, class_thresholds=dict(op.class_thresholds or {}))
    bar = max(rule.threshold or 0.0, float(rule.class_floors([mistake["predicted"]])[0]))
    return rule.action(mistake["predicted"], abstain=mistake["confidence"] < bar)


def model_labels(kpi: KpiRecord, t: Callable[..., str]) -> dict[str, str]:
    """One name per model, everywhere in the report: the large model (teacher), the small model in each
    runtime (the deployed one says so), the comparison students."""
    deployed = kpi.deployed_runtime
    labels = {"teacher": t("m_teacher"), "teacher-onnx": t("m_teacher_onnx"), "student": t("m_student_torch")}
    labels.update({comparison_role(m): t("m_compare", method=m) for m in kpi.compare})
    for name, model in kpi.models.items():
        if model.get("kind") == "bundle":
            fmt = FORMAT_NAMES.get(name, name)
            labels[name] = t("m_deployed", fmt=fmt) if name == deployed else t("m_student_fmt", fmt=fmt)
        labels.setdefault(name, name)
    return labels


def _engine(fmt: str) -> str:
    return ENGINE_NAMES.get(fmt.split("-")[0], fmt)


def _model_accuracy(kpi: KpiRecord, name: str) -> dict[str, Any]:
    """A model's test accuracy as a rate with its interval, counted from its confusion matrix."""
    cm = kpi.models[name]["confusion_matrix"]
    return stats.rate(sum(cm[i][i] for i in range(len(cm))), sum(map(sum, cm)))


def _accuracy_sentence(kpi: KpiRecord, t: Callable[..., str]) -> str:
    """The gap in words: better, worse or as accurate (never a signed "gap")."""
    gap_pts = 100 * kpi.measured.accuracy_gap  # teacher minus deployed student
    interval = _model_accuracy(kpi, "teacher")
    teacher, ci = format_pct(interval["rate"]), format_ci(interval, t)
    if round(abs(gap_pts), 1) == 0:
        return t("acc_same", teacher=teacher, ci=ci)
    return t("acc_worse" if gap_pts > 0 else "acc_better", pts=f"{abs(gap_pts):.1f}", teacher=teacher, ci=ci)


MAJORITY_SHARE_NOTED = 0.5  # from this share of one class on, accuracy alone flatters a model


def _baseline_sentence(kpi: KpiRecord, t: Callable[..., str]) -> str | None:
    """On a test mix dominated by one class (mostly good parts), what calling every part that class would score,
    next to the deployed model's macro-F1 and balanced accuracy: the figures that class cannot win."""
    deployed = kpi.deployed
    support = [sum(row) for row in deployed["confusion_matrix"]]
    n = sum(support)
    if not n or max(support) / n < MAJORITY_SHARE_NOTED:
        return None
    return t("acc_baseline", cls=kpi.classes[support.index(max(support))], rate=format_pct(max(support) / n),
             f1=f"{deployed['macro_f1']:.2f}", balanced=format_pct(deployed["balanced_accuracy"]))


def _speed(kpi: KpiRecord, labels: dict[str, str], t: Callable[..., str]) -> dict[str, Any]:
    """The speed card: the deployed model against the line, then two comparisons that say what they compare
    (teacher in PyTorch vs the deployed runtime; both models in PyTorch)."""
    deployed = kpi.deployed_runtime
    rows = {r["model"]: r for r in kpi.latency["rows"] if r["mode"] == "end_to_end" and r["batch"] == 1}
    mine, teacher, student = rows.get(deployed), rows.get("teacher"), rows.get("student")
    teacher_onnx = rows.get("teacher-onnx")
    out: dict[str, Any] = {"p95_ms": mine["p95_ms"] if mine else None, "lines": []}
    if mine is None:
        return out
    runtime = mine["runtime"].split(" on ", 1)[-1].replace("ExecutionProvider", "")  # ONNX Runtime (CPU)
    takt = kpi.latency["takt_ms"]
    p95 = format_number(mine["p95_ms"])
    out["lines"].append(t("speed_line", model=labels[deployed], p95=p95, runtime=runtime, takt=format_number(takt, 0))
                        if takt else t("speed_no_takt", model=labels[deployed], p95=p95, runtime=runtime))

    def ratio_text(key: str, slow: float, fast: float, **values: Any) -> str | None:
        if not (slow > 0 and fast > 0):
            return None
        x = slow / fast
        return t(key, x=f"{x:.1f}", **values) if x >= 1 else t(key + "_slow", x=f"{1 / x:.1f}", **values)

    if teacher_onnx and deployed.startswith("onnx"):
        same = 0.95 <= teacher_onnx["p95_ms"] / mine["p95_ms"] <= 1.05 if mine["p95_ms"] > 0 else False
        out["lines"].append(t("speed_ort_same", teacher=format_number(teacher_onnx["p95_ms"])) if same else
                            ratio_text("speed_ort", teacher_onnx["p95_ms"], mine["p95_ms"], teacher=format_number(teacher_onnx["p95_ms"])))
    if teacher:
        out["lines"].append(ratio_text("speed_cross", teacher["p95_ms"], mine["p95_ms"], engine=_engine(deployed),
                                       teacher=format_number(teacher["p95_ms"])))
        if student:
            out["lines"].append(ratio_text("speed_same", teacher["p95_ms"], student["p95_ms"],
                                           student=format_number(student["p95_ms"])))
    out["lines"] = [line for line in out["lines"] if line]
    return out


def automation_basis(kpi: KpiRecord) -> dict[str, Any]:
    """The automation rate the savings use: the line's production mix where the recipe gives one
    (``line.defect_rate``), else the test split's; with its interval."""
    production = kpi.operating.production or {}
    auto = production.get("automation_rate") or {}
    if auto.get("rate") is not None:
        return {"mix": "production", "rate": auto["rate"], "low": auto["low"], "high": auto["high"], "confidence": 0.95}
    interval = kpi.intervals.automation_rate
    return {"mix": "test", "rate": kpi.operating.test["automation_rate"], "low": interval["low"],
            "high": interval["high"], "n": interval["n"], "confidence": interval.get("confidence", 0.95)}


def _savings_range(interval: dict[str, Any], recipe: Any) -> dict[str, Any] | None:
    """Hours saved per month at both ends of the automation rate's interval."""
    if interval.get("n") == 0:
        return None
    low, high = savings(interval["low"], recipe.economics), savings(interval["high"], recipe.economics)
    if not low["computed"]:
        return None
    return {"low": low["hours_saved_per_month"], "high": high["hours_saved_per_month"], "level": _level(interval)}


def _assumptions(money: dict[str, Any], defect_rate: Any = None) -> list[tuple[str, str]]:
    """(key, value) for every economics input the recipe sets, and ``line.defect_rate``, printed exactly as the
    recipe has them."""
    out = [(key, format_exact(value)) for key, value in money["assumptions"].items() if value is not None and key != "currency"]
    if isinstance(defect_rate, dict):
        out.append(("defect_rate", ", ".join(f"{c} {format_exact(v)}" for c, v in defect_rate.items())))
    elif defect_rate is not None:
        out.append(("defect_rate", format_exact(defect_rate)))
    return out


def _test_mix(kpi: KpiRecord, t: Callable[..., str]) -> dict[str, str]:
    """The test split's size and class mix, from the deployed model's confusion matrix (rows: true class)."""
    cm = kpi.deployed["confusion_matrix"]
    counts = {c: int(sum(row)) for c, row in zip(kpi.classes, cm)}
    n = sum(counts.values())
    ok = kpi.operating.ok_class
    if ok is None:
        mix = t("test_mix_defects_only", n=n)
    else:
        good = counts.get(ok, 0)
        mix = t("test_mix", n=n, defective=n - good, good=good, ok_class=ok, defective_pct=format_pct(_share(n - good, n), 0),
                good_pct=format_pct(_share(good, n), 0))
    by_class = t("sep").join(f"{c} {k}" for c, k in counts.items())
    note = t("mix_note_production") if automation_basis(kpi)["mix"] == "production" else t("mix_note")
    return {"mix": mix, "by_class": t("test_by_class", classes=by_class), "note": note}


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _escapes(kpi: KpiRecord, t: Callable[..., str]) -> dict[str, Any] | None:
    """Escapes and false rejects per class (defect classes first, worst first) and the sentences naming the worst
    defect class and the total; None for a line without an ok class (escapes are not defined there)."""
    table = kpi.operating.escapes_test
    if table is None:
        return None
    if not kpi.operating.test.get("accepted"):  # every part went to a person: zeros here would read as a pass
        return {"ok_class": table["ok_class"], "rows": [], "worst": None, "level": "95 %",
                "sentences": [t("escapes_unmeasured", n=kpi.operating.test["images"])]}
    rows = [{"class": c, **r} for c, r in table["classes"].items()]
    rows.sort(key=lambda r: (r["kind"] != "escape", -(r["rate"] or 0), -r["high"], r["class"]))
    sentences = []
    worst = table["classes"].get(table["worst"]) if table.get("worst") else None
    if worst is not None and worst["k"]:
        sentences.append(t("worst_escape", cls=table["worst"], k=worst["k"], n=worst["n"], rate=format_pct(worst["rate"]),
                           ppm_high=format_number(worst["ppm_high"], 0), level=_level(worst)))
    elif worst is not None:  # no escape at all: the bound the smallest defect class allows is the honest figure
        sizes = {r["n"] for r in table["classes"].values() if r["kind"] == "escape"}
        key = "worst_escape_zero_equal" if len(sizes) == 1 else "worst_escape_zero"  # "least-tested" only when n differ
        sentences.append(t(key, cls=table["worst"], n=worst["n"], ppm_high=format_number(worst["ppm_high"], 0),
                           level=_level(worst)))
    total = kpi.intervals.escape_rate
    if total is not None:
        sentences.append(t("escape_overall", k=total["k"], n=total["n"], rate=format_rate_ci(total, t)))
    return {"ok_class": table["ok_class"], "rows": rows, "worst": table.get("worst"), "sentences": sentences,
            "level": _level(rows[0]) if rows else "95 %"}


def source_hashes(run_dir: Path) -> list[dict[str, str]]:
    """sha256 of the measurements the report is built from, so a reader can tell which ones it shows."""
    files = [kpi_path(run_dir), run_dir / BUNDLE_DIR / MANIFEST_NAME, parity_path(run_dir)]
    return [{"file": str(p.relative_to(run_dir)), "sha256": sha256_file(p) if p.is_file() else "–"} for p in files]


def _teacher_arch(recipe: Any) -> str:
    """The teacher's architecture as a reader should see it, ensembles included, with its input size when it reads
    larger images than the student (its figures are measured at that size)."""
    e = recipe.teacher.ensemble
    if e is None:
        name = recipe.teacher.arch
    elif e.members:
        name = f"ensemble of {e.members} x {recipe.teacher.arch}"
    else:
        name = " + ".join(e.archs) if e.archs else f"ensemble of {len(e.checkpoints)} checkpoints"
    size = recipe.teacher.image_size
    if size is None or tuple(size) == tuple(recipe.data.image_size):
        return name
    student = recipe.data.image_size
    return f"{name} ({size[0]}x{size[1]} px; {recipe.student.arch}: {student[0]}x{student[1]} px)"


def _training_warnings(run_dir: Path) -> list[str]:
    """Warnings the run's evaluation recorded (a weak or miscalibrated teacher); raw English log text."""
    path = run_dir / METRICS_NAME
    return list(read_json(path).get("warnings", [])) if path.is_file() else []


PERCENT_MEASURES = {"accuracy", "macro_f1", "agreement", "automation_rate", "accepted_accuracy", "accuracy_gap",
                    "max_class_escape_rate", "operating_risk_upper", "false_reject_rate", "operating_test_risk"}


def _check_interval(check: Check, kpi: KpiRecord) -> dict[str, Any] | None:
    """The interval behind a gate check's value, where the value is a rate measured on the test split."""
    if check.measure in ("accuracy", "automation_rate", "accepted_accuracy", "false_reject_rate"):
        return kpi.intervals.of(check.measure)
    escapes = kpi.operating.escapes_test or {}
    if check.measure == "max_class_escape_rate":
        return (escapes.get("classes") or {}).get(escapes.get("worst") or "")
    if check.measure.startswith("escape_rate["):
        return (escapes.get("classes") or {}).get(check.measure[len("escape_rate["):-1])
    return None


def _check_description(target: str, t: Callable[..., str]) -> str:
    name = target.removeprefix("kpi.").replace(" ", "_")
    if name.startswith("no_regression["):  # kpi.no_regression[scratch] (kit.verify.regression)
        return t("g_no_regression", cls=name[name.index("[") + 1:-1])
    if name.startswith("min_heldout_relative_robustness["):  # one held-out family (kit.verify.gate)
        return t("g_heldout_family", family=charts.family_name(name[name.index("[") + 1:-1], t))
    if "[" in name:  # kpi.max_class_escape_rate[scratch]
        return t("g_class_escape", cls=name[name.index("[") + 1:-1])
    return t("g_" + name)


def _display(check: Check, t: Callable[..., str], kpi: KpiRecord) -> dict[str, Any]:
    """A gate check with its value and limit formatted in the measure's unit, and its interval when it has one.
    The accuracy gap reads as "better" / "worse", never as a signed loss."""
    def fmt(v: float | None) -> str:
        if v is None:
            return "–"
        if check.measure == "latency_p95_ms":
            return f"{v:.2f} ms"
        if check.measure == "accuracy_gap":  # teacher minus student: positive = the small model is worse
            return t("gap_worse" if v > 0 else "gap_better", pts=f"{abs(100 * v):.1f}")
        if check.measure in PERCENT_MEASURES or check.measure.startswith(("escape_rate[", "recall_change[")):
            return f"{100 * v:.1f} %"
        return f"{v:.3f}"

    interval = _check_interval(check, kpi)
    point = check.point if "point" in check.model_fields_set else check.value
    if check.limit is None:
        limit_text = ""
    elif check.measure == "accuracy_gap":
        limit_text = t("gap_limit", pts=f"{100 * check.limit:.1f}")
    else:
        limit_text = f"{'≤' if check.op == '<=' else '≥'} {fmt(check.limit)}"
    bound_text = t("bound_used", bound=fmt(check.bound)) if check.gated_on == "bound" else None
    thin = point_only(check)
    if thin:
        bound_text = t("point_only_note", bound=fmt(check.bound))
    if check.measure == "accuracy_gap" and check.bound is not None:
        gap = _gap_interval(kpi)
        ci_text = t("gap_ci", low=fmt(gap["low"]), high=fmt(gap["high"]), n=gap["n"]) if gap else None
    else:
        ci_text = format_ci(interval, t) if interval else None
    return {**check.to_dict(), "description": _check_description(check.target, t), "point_only": thin,
            "target_text": t("takt_fields") if check.target == "line takt" else check.target,
            "value_text": fmt(point), "ci_text": ci_text, "bound_text": bound_text, "limit_text": limit_text}


def _gap_interval(kpi: KpiRecord) -> dict[str, Any] | None:
    """The accuracy gap (teacher minus deployed) as a paired bootstrap interval, from kpi.json's differences."""
    pair = next((d for d in kpi.differences if d["name"] == "deployed_vs_teacher" and d["diff"] is not None), None)
    return None if pair is None else {"low": -pair["high"], "high": -pair["low"], "n": pair["n"]}


@jinja2.pass_context
def _rate_ci_filter(context: Any, interval: dict[str, Any]) -> str:
    return format_rate_ci(interval, context["t"])


@jinja2.pass_context
def _ci_filter(context: Any, interval: dict[str, Any]) -> str:
    return format_ci(interval, context["t"])


def css_string(text: Any) -> str:
    """``text`` as a quoted CSS string (a page footer's ``content``): quotes, backslashes, angle brackets, ampersands
    and line breaks escaped the CSS way, so no value can close the string or the style element (the template marks the
    result ``safe``: HTML escaping would put ``&#34;`` into the style sheet)."""
    escaped = "".join(f"\\{ord(c):x} " if c in '\\"<>&\n\r' else c for c in str(text))
    return f'"{escaped}"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kit.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = format_pct
    env.filters["num"] = format_number
    env.filters["ci"] = _ci_filter
    env.filters["rate_ci"] = _rate_ci_filter
    env.filters["css_string"] = css_string
    return env


def render_html(run_dir: Path, lang: str, font_family: str | None = None, shadow: str | Path | None = None,
                with_problems: bool = False) -> Any:
    """``shadow``: a ``kit shadow`` result (shadow.json or its folder) for the "shadow period" section. With
    ``with_problems``: ``(html, problems)``, the integrity problems page one names (``kit.verify.integrity``)."""
    from kit.report.after_golive import after_golive_context

    context = build_context(run_dir, lang, font_family)
    context.setdefault("kpi_sha256", sha256_file(kpi_path(run_dir)))  # every PDF page's footer names the measurements
    context.update(after_golive_context(context["kpi"], shadow, context["t"]))
    html = _environment().get_template("report.html.j2").render(**context)
    return (html, context["integrity"]["problems"]) if with_problems else html


def build_report(run_dir: str | Path, lang: str | None = None, pdf: bool = False,
                 log: Callable[[str], None] = print, shadow: str | Path | None = None) -> ReportResult:
    run_dir = Path(run_dir)
    state = require_stages(run_dir, ["export"], "kit report")
    if not kpi_path(run_dir).is_file():
        raise ReportError(f"{run_dir}: no verify/kpi.json; run `kit verify {run_dir}` first")
    started = time.perf_counter()
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    lang = lang or recipe.report.language
    if lang not in LANGUAGES:
        raise ArgumentError("lang", f"unknown language {lang!r}; choose from {', '.join(LANGUAGES)}")
    font_family, font_file = (None, None)
    if lang == "ja":
        font_family, font_file = cjk_font()
    html, tampered = render_html(run_dir, lang, font_family, shadow, with_problems=True)
    if font_file is not None:  # the page carries the glyphs it uses: readable where no CJK font is installed
        html = fit_to_font(html, font_file)
        html = html.replace("</head>", f'<style id="embedded-font">{embedded_font_css(font_file, html)}</style>\n</head>', 1)
    html_name, pdf_name = report_names(lang)
    staging = staging_dir(run_dir / REPORT_DIR)
    _keep_other_languages(run_dir / REPORT_DIR, staging, lang)
    write_text_atomic(staging / html_name, html)
    if pdf:
        write_pdf(html, staging / pdf_name, font_file)
    out = publish_dir(staging, run_dir / REPORT_DIR)
    shutil.rmtree(run_dir / STALE_REPORT_DIR, ignore_errors=True)  # superseded by the report just written
    rel = read_kpi(run_dir).verdict
    said = f"TAMPERED: {tampered[0]}" + (f" (and {len(tampered) - 1} more)" if len(tampered) > 1 else "") if tampered \
        else describe_release(rel)
    mark_stage(run_dir, state, "report", time.perf_counter() - started, language=lang, pdf=pdf,
               verdict="TAMPERED" if tampered else rel.label, tampered=tampered,
               sources={s["file"]: s["sha256"] for s in source_hashes(run_dir)})
    log(f"report: {out / html_name}{' and ' + pdf_name if pdf else ''} ({lang}; {said})")
    return ReportResult(out / html_name, out / pdf_name if pdf else None, rel, tampered)


def _keep_other_languages(current: Path, staging: Path, lang: str) -> None:
    """The report in the other languages stays beside the one being written: ``report/`` holds only current reports
    (a repeated measurement moves the whole folder to ``report.stale/``), so they describe the same measurements."""
    if not current.is_dir():
        return
    mine = set(report_names(lang))
    for other in LANGUAGES:
        for name in report_names(other):
            if name not in mine and (current / name).is_file():
                shutil.copy2(current / name, staging / name)


__all__ = ["INSTALL_HINT", "ReportError", "ReportResult", "build_report", "render_html"]
