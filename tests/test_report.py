"""``kit report`` on a real tiny run: both languages, self-contained HTML, escaping, PDF."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kit.cli import app
from kit.recipe.schema import EconomicsConfig
from kit.report import build_report, render_html
from kit.report.economics import savings
from kit.report.i18n import STRINGS

XSS = "<script>alert(1)</script>"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir


def _self_contained(html: str) -> None:
    assert not re.search(r"https?://", html), "the report references the network"
    assert "<script" not in html.lower() and "<link" not in html.lower()
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_run_writes_a_self_contained_english_report(finished_run):
    html = (finished_run / "report" / "report.html").read_text(encoding="utf-8")
    _self_contained(html)
    kpi = json.loads((finished_run / "verify" / "kpi.json").read_text())
    assert "Release report: inspection model for line tiny_line" in html
    assert 'class="verdict go"' in html  # the tiny recipe gates only the line takt, which a 32 px model meets
    assert f"{100 * kpi['measured']['accuracy']:.1f} %" in html
    for section in ("Robustness under line conditions", "Speed per runtime", "Operating point and calibration",
                    "Parity ladder", "Appendix for engineers", kpi["recipe_hash"]):
        assert section in html, section
    assert json.loads((finished_run / "state.json").read_text())["stages"]["report"]["status"] == "done"


def test_japanese_report(run_copy):
    result = CliRunner().invoke(app, ["report", str(run_copy), "--lang", "ja"])
    assert result.exit_code == 0, result.output
    html = (run_copy / "report" / "report.html").read_text(encoding="utf-8")
    _self_contained(html)
    assert '<html lang="ja">' in html
    assert "リリース判定レポート：ライン tiny_line の検査モデル" in html and "GO（導入可）" in html
    assert "Release report" not in html


def test_user_strings_are_escaped(run_copy):
    lock = run_copy / "recipe.lock.yaml"
    body = yaml.safe_load(lock.read_text())
    body["recipe"]["line"]["description"] = XSS
    lock.write_text(yaml.safe_dump(body))
    kpi_path = run_copy / "verify" / "kpi.json"
    kpi = json.loads(kpi_path.read_text())
    kpi["misclassified"] = [{"path": str(run_copy / "missing.png"), "label": XSS, "predicted": "ok", "confidence": 0.9}]
    kpi_path.write_text(json.dumps(kpi))
    html = render_html(run_copy, "en")
    assert XSS not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # the description and the error caption


def test_no_go_names_the_missed_target(run_copy):
    kpi_path = run_copy / "verify" / "kpi.json"
    kpi = json.loads(kpi_path.read_text())
    for c in kpi["gate"]["checks"]:
        if c["target"] == "kpi.min_automation_rate":
            c.update(limit=0.99, gated=True, passed=False)
    kpi["gate"]["passed"] = False
    kpi_path.write_text(json.dumps(kpi))
    html = render_html(run_copy, "en")
    assert 'class="verdict nogo"' in html and "Missed: Automation rate." in html


def test_economics_turn_automation_into_hours_and_money():
    econ = EconomicsConfig(parts_per_day=10_000, manual_seconds_per_part=3.6, labour_cost_per_hour=40, working_days_per_month=20)
    s = savings(0.9, econ)
    assert s["computed"] and s["hours_saved_per_day"] == pytest.approx(9.0)
    assert s["hours_saved_per_month"] == pytest.approx(180.0) and s["cost_saved_per_month"] == pytest.approx(7200.0)
    partial = savings(0.9, EconomicsConfig(parts_per_day=10_000))
    assert not partial["computed"] and partial["missing"] == ["manual_seconds_per_part", "labour_cost_per_hour"]


def test_both_languages_have_the_same_phrases():
    assert set(STRINGS["en"]) == set(STRINGS["ja"])
    for key, text in STRINGS["en"].items():
        assert re.findall(r"{(\w+)}", text) == re.findall(r"{(\w+)}", STRINGS["ja"][key]) or \
            sorted(re.findall(r"{(\w+)}", text)) == sorted(re.findall(r"{(\w+)}", STRINGS["ja"][key])), key


def test_missing_cjk_font_is_one_clear_line(run_copy, monkeypatch):
    import kit.report.fonts as fonts

    monkeypatch.setattr(fonts, "CJK_FAMILIES", ("No Such Font JP",))
    result = CliRunner().invoke(app, ["report", str(run_copy), "--lang", "ja"])
    assert result.exit_code == 1
    assert "no Japanese-capable font found" in result.output and "fonts-noto-cjk" in result.output


def test_report_needs_verification(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    shutil.rmtree(run_dir / "verify")
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 1 and "run `kit verify" in result.output


def _weasyprint_missing() -> str | None:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"PDF renderer unavailable: {exc}"
    return None


@pytest.mark.skipif(_weasyprint_missing() is not None, reason=str(_weasyprint_missing()))
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_pdf_page_one(run_copy, lang):
    pypdf = pytest.importorskip("pypdf")
    result = build_report(run_copy, lang=lang, pdf=True, log=lambda m: None)
    reader = pypdf.PdfReader(str(result.pdf))
    assert len(reader.pages) >= 3
    first = reader.pages[0]
    if lang == "en":
        text = first.extract_text()
        assert "Release report: inspection model for line tiny_line" in text and "Release targets" in text
    else:  # Japanese glyphs come from the embedded CJK font
        fonts = {str(f["/BaseFont"]) for f in (first["/Resources"]["/Font"][k].get_object() for k in first["/Resources"]["/Font"])}
        assert any("IPA" in f or "CJK" in f or "Gothic" in f or "KitCJK" in f for f in fonts), fonts
