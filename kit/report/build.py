"""``kit report``: ``verify/kpi.json`` + the recipe's economics -> ``report/report.html`` (one
self-contained file: charts and images inline, no scripts, no network) and, when asked,
``report/report.pdf`` rendered from the same HTML.

Every user string reaches the page through jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import cv2
import jinja2

from deploy.manifest import read_manifest
from deploy.preprocess import read_image
from kit.errors import ArgumentError, KitError
from kit.io import publish_dir, read_json, staging_dir, write_atomic, write_text_atomic
from kit.recipe import read_recipe_lock, recipe_hash
from kit.report import charts
from kit.report.economics import savings
from kit.report.fonts import INSTALL_HINT, cjk_font
from kit.report.i18n import LANGUAGES, translator
from kit.rundir import (
    BUNDLE_DIR, HTML_NAME, LOCK_NAME, METRICS_NAME, PDF_NAME, REPORT_DIR, VIEWS_NAME, comparison_role, kpi_path, mark_stage, parity_path,
    read_state, require_stages,
)
THUMB_PX = 96


class ReportError(KitError):
    """The report cannot be rendered as asked."""


@dataclass
class ReportResult:
    html: Path
    pdf: Path | None
    go: bool | None  # None: the recipe sets no KPI target


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail(path: str, channels: str) -> str | None:
    """A small PNG of a test image; None when the file is gone (the report still renders)."""
    try:
        img = read_image(path, channels)  # type: ignore[arg-type]
    except Exception:
        return None
    scale = THUMB_PX / max(img.shape[:2])
    img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    return _data_uri(buf.tobytes()) if ok else None


def _hardware() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def build_context(run_dir: Path, lang: str, font_family: str | None) -> dict[str, Any]:
    kpi = read_json(kpi_path(run_dir))
    recipe = read_recipe_lock(run_dir / LOCK_NAME)
    manifest = read_manifest(run_dir / BUNDLE_DIR)
    parity = read_json(parity_path(run_dir)) if parity_path(run_dir).is_file() else None
    t = translator(lang)
    deployed = kpi["deployed_runtime"]
    measured, gate = kpi["measured"], kpi["gate"]
    summary = kpi["robustness"]["summary"]
    gated = [c for c in gate["checks"] if c["gated"]]
    lat_rows = [r for r in kpi["latency"]["rows"] if r["mode"] == "end_to_end" and r["batch"] == 1]
    by_model = {r["model"]: r for r in lat_rows}
    teacher_lat, deployed_lat = by_model.get("teacher"), by_model.get(deployed)
    speedup = teacher_lat["p95_ms"] / deployed_lat["p95_ms"] if teacher_lat and deployed_lat and deployed_lat["p95_ms"] > 0 else None
    money = savings(kpi["operating"]["test"]["automation_rate"], recipe.economics)
    students = ["student"] + [comparison_role(m) for m in kpi.get("compare", []) if comparison_role(m) in summary]
    model_labels = {"teacher": f"teacher ({_teacher_arch(recipe)})", "student": f"student {recipe.distill.method} ({recipe.student.arch})"}
    model_labels.update({comparison_role(m): f"student {m}" for m in kpi.get("compare", [])})
    for name in kpi["models"]:
        model_labels.setdefault(name, f"student {name}")

    with charts.chart_style(font_family):
        figures = {
            "robustness": charts.robustness_chart(kpi, ["teacher", *students], model_labels, t),
            "latency": charts.latency_chart(lat_rows, kpi["latency"]["takt_ms"], t),
            "operating": charts.operating_chart(kpi["operating"].get("curve_test", []), kpi["operating"]["threshold"],
                                                kpi["operating"]["test"], t),
            "reliability": charts.reliability_chart(kpi["calibration"].get("reliability_test_before", []),
                                                    kpi["calibration"]["reliability_test"], t),
            "confusion": charts.confusion_chart(kpi["models"][deployed]["confusion_matrix"], kpi["classes"], t),
        }
    views_png = run_dir / VIEWS_NAME
    state = read_state(run_dir)
    return {
        "t": t, "lang": lang, "kpi": kpi, "recipe": recipe, "run_id": run_dir.name,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "deployed": deployed, "deployed_runtime": kpi["models"][deployed]["runtime"],
        "go": None if not gated else bool(gate["passed"]), "gated": gated, "checks": [_display(c, t) for c in gate["checks"]],
        "failed": [_display(c, t) for c in gated if not c["passed"]],
        "measured": measured, "summary": summary, "students": students, "model_labels": model_labels,
        "takt_ms": kpi["latency"]["takt_ms"], "deployed_lat": deployed_lat, "speedup": speedup,
        "money": money, "lat_rows": lat_rows, "parity": parity,
        "figures": {k: _data_uri(v) for k, v in figures.items()},
        "views": _data_uri(views_png.read_bytes()) if views_png.is_file() else None,
        "errors": [{**e, "thumb": _thumbnail(e["path"], recipe.data.channels)} for e in kpi.get("misclassified", [])],
        "recipe_yaml": (run_dir / LOCK_NAME).read_text(encoding="utf-8"), "recipe_hash": recipe_hash(recipe),
        "artefacts": manifest.artefacts, "versions": manifest.extra.get("versions", {}), "hardware": _hardware(),
        "stages": state.get("stages", {}),
        "training_warnings": _training_warnings(run_dir),
    }


def _teacher_arch(recipe: Any) -> str:
    """The teacher's architecture as a reader should see it, ensembles included."""
    e = recipe.teacher.ensemble
    if e is None:
        return recipe.teacher.arch
    if e.members:
        return f"ensemble of {e.members} x {recipe.teacher.arch}"
    return " + ".join(e.archs) if e.archs else f"ensemble of {len(e.checkpoints)} checkpoints"


def _training_warnings(run_dir: Path) -> list[str]:
    """Warnings the run's evaluation recorded (a weak or miscalibrated teacher); raw English log text."""
    path = run_dir / METRICS_NAME
    return list(read_json(path).get("warnings", [])) if path.is_file() else []


PERCENT_MEASURES = {"accuracy", "macro_f1", "agreement", "automation_rate", "accepted_accuracy", "accuracy_gap",
                    "max_class_escape_rate", "operating_risk_upper"}


def _display(check: dict[str, Any], t: Callable[..., str]) -> dict[str, Any]:
    """A gate check with its value and limit formatted in the measure's unit."""
    def fmt(v: float | None) -> str:
        if v is None:
            return "–"
        if check["measure"] == "latency_p95_ms":
            return f"{v:.2f} ms"
        if check["measure"] == "accuracy_gap":
            return f"{100 * v:+.1f} pts"
        if check["measure"] in PERCENT_MEASURES:
            return f"{100 * v:.1f} %"
        return f"{v:.3f}"

    return {**check, "description": t("g_" + check["target"].removeprefix("kpi.").replace(" ", "_")),
            "value_text": fmt(check["value"]),
            "limit_text": "" if check["limit"] is None else f"{'≤' if check['op'] == '<=' else '≥'} {fmt(check['limit'])}"}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kit.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, digits=1: "–" if v is None else f"{100 * v:.{digits}f} %"
    env.filters["num"] = lambda v, digits=2: "–" if v is None else f"{v:,.{digits}f}"
    return env


def render_html(run_dir: Path, lang: str, font_family: str | None = None) -> str:
    return _environment().get_template("report.html.j2").render(**build_context(run_dir, lang, font_family))


def write_pdf(html: str, path: Path, font_file: Path | None) -> None:
    try:
        from weasyprint import CSS, HTML
        from weasyprint.text.fonts import FontConfiguration
    except (ImportError, OSError) as exc:  # OSError: the pango/cairo system libraries are missing
        raise ArgumentError("pdf", f"the PDF renderer is not available ({type(exc).__name__}: {exc}); "
                          "pip install 'inspection-kit[report]' (weasyprint; needs the pango system library)") from None
    fonts = FontConfiguration()
    stylesheets = []
    if font_file is not None:  # the CJK font travels inside the PDF, whatever the reader's machine has
        stylesheets.append(CSS(string=f"@font-face {{ font-family: 'KitCJK'; src: url('{font_file.as_uri()}'); }}"
                                      "body { font-family: 'KitCJK', sans-serif; }", font_config=fonts))
    write_atomic(path, lambda tmp: HTML(string=html).write_pdf(str(tmp), stylesheets=stylesheets, font_config=fonts))


def build_report(run_dir: str | Path, lang: str | None = None, pdf: bool = False,
                 log: Callable[[str], None] = print) -> ReportResult:
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
    html = render_html(run_dir, lang, font_family)
    staging = staging_dir(run_dir / REPORT_DIR)
    write_text_atomic(staging / HTML_NAME, html)
    if pdf:
        write_pdf(html, staging / PDF_NAME, font_file)
    out = publish_dir(staging, run_dir / REPORT_DIR)
    kpi = read_json(kpi_path(run_dir))
    gated = [c for c in kpi["gate"]["checks"] if c["gated"]]
    go = None if not gated else bool(kpi["gate"]["passed"])
    mark_stage(run_dir, state, "report", time.perf_counter() - started, language=lang, pdf=pdf)
    log(f"report: {out / HTML_NAME}{' and ' + PDF_NAME if pdf else ''} ({lang}; "
        f"{'no targets set' if go is None else 'GO' if go else 'NO-GO'})")
    return ReportResult(out / HTML_NAME, out / PDF_NAME if pdf else None, go)


__all__ = ["INSTALL_HINT", "ReportError", "ReportResult", "build_report", "render_html"]
