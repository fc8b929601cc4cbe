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
from tests.kpi_records import kpi_record, operating_record

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
    html = (run_copy / "report" / "report.ja.html").read_text(encoding="utf-8")
    _self_contained(html)
    assert '<html lang="ja">' in html
    assert '<html lang="en">' in (run_copy / "report" / "report.html").read_text(encoding="utf-8")  # English kept
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
    """A target the lock sets and `kit threshold` re-gates (an edit of kpi.json alone reads as TAMPERED instead)."""
    from kit.recipe.schema import ThresholdTarget
    from kit.verify.kpi import retune_threshold

    _set_recipe(run_copy, "kpi", {"max_latency_p95_ms": 1e-6})
    retune_threshold(run_copy, ThresholdTarget(accepted_accuracy=0.3), log=lambda m: None)
    html = render_html(run_copy, "en")
    assert 'class="verdict nogo"' in html and "Missed: " in html and "TAMPERED" not in html
    assert json.loads((run_copy / "verify" / "kpi.json").read_text())["release"]["label"] == "NO-GO"


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


def test_a_kpi_json_without_intervals_asks_for_a_new_verification(run_copy):
    _edit_kpi(run_copy, lambda kpi: kpi.pop("intervals"))
    result = CliRunner().invoke(app, ["report", str(run_copy)])
    assert result.exit_code == 1
    assert f"was written by an older `kit verify` (no intervals); run `kit verify {run_copy}` again" in result.output


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
        assert "Release report: inspection model for line tiny_line" in text and "Test set" in text
    else:  # Japanese glyphs come from the embedded CJK font
        fonts = {str(f["/BaseFont"]) for f in (first["/Resources"]["/Font"][k].get_object() for k in first["/Resources"]["/Font"])}
        assert any("IPA" in f or "CJK" in f or "Gothic" in f or "KitCJK" in f for f in fonts), fonts


# -- page one: figures management can trust (issue 18) -------------------------------------------

def _page_one(html: str) -> str:
    return html[html.index("<body"):html.index("<!-- Robustness -->")]


def _text(html: str) -> str:
    """The visible text, tags dropped and entities decoded, whitespace collapsed."""
    import html as html_lib

    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", html)))


def _edit_kpi(run_dir: Path, edit) -> dict:
    path = run_dir / "verify" / "kpi.json"
    kpi = json.loads(path.read_text())
    edit(kpi)
    path.write_text(json.dumps(kpi))
    return kpi


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_rate_on_page_one_has_its_interval_and_n(run_copy, lang):
    from kit.report.build import format_rate_ci
    from kit.report.i18n import translator

    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    page = _text(_page_one(render_html(run_copy, lang)))
    t = translator(lang)
    for name in ("accuracy", "automation_rate", "accepted_accuracy", "escape_rate"):
        interval = kpi["intervals"][name]
        assert format_rate_ci(interval, t) in page or (
            f"{100 * interval['low']:.1f}–{100 * interval['high']:.1f} %" in page and f"n = {interval['n']}" in page), name
    if lang == "en":
        a = kpi["intervals"]["accuracy"]
        assert f"95 % CI {100 * a['low']:.1f}–{100 * a['high']:.1f} %, n = {a['n']}" in page


def test_ci_reads_like_the_issue_asks():
    from kit.report.build import format_rate_ci
    from kit.report.i18n import translator
    from kit.verify.stats import rate

    assert format_rate_ci(rate(128, 132), translator("en")) == "97.0 % (95 % CI 92.4–99.2 %, n = 132)"
    assert format_rate_ci(rate(0, 0), translator("en")) == "– (95 % CI 0.0–100.0 %, n = 0)"


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_assumptions_are_printed_exactly_as_the_recipe_has_them(run_copy, lang):
    """The issue: page one printed "manual seconds per part 2" for a recipe saying 1.5."""
    econ = {"parts_per_day": 115200, "manual_seconds_per_part": 1.5, "labour_cost_per_hour": 38.25,
            "currency": "EUR", "working_days_per_month": 20.5}
    lock = run_copy / "recipe.lock.yaml"
    body = yaml.safe_load(lock.read_text())
    body["recipe"]["economics"] = econ
    lock.write_text(yaml.safe_dump(body))
    html = render_html(run_copy, lang)
    printed = {k: float(v.replace(",", "")) for k, v in re.findall(r'<span class="assumption" data-key="(\w+)">([^<]*)</span>', html)}
    assert printed == {k: v for k, v in econ.items() if k != "currency"}
    assert 'data-key="manual_seconds_per_part">1.5<' in html and 'data-key="parts_per_day">115,200<' in html


def test_recipe_values_print_exactly():
    from kit.report.build import format_exact

    assert [format_exact(v) for v in (1.5, 2.0, 115200.0, 1234567.0, 0.25, 38, 1e-05)] == [
        "1.5", "2", "115,200", "1,234,567", "0.25", "38", "1e-05"]


def _certificate_cases():
    from kit.recipe.schema import ThresholdTarget

    acc, esc = ThresholdTarget(accepted_accuracy=0.95), ThresholdTarget(max_escape_rate=0.01, ok_class="ok")
    val = {"automation_rate": 0.946969, "escapes": 0, "defective_parts": 100, "risk_upper": 0.04123}
    stop = {"threshold": 0.97123456, "k": 3, "n": 200, "risk_upper": 0.0391}
    base = {"confidence": 0.95, "tested": 5, "stopped_at": None, "val": {**val, "risk_upper": None}, "threshold": 1.0000000000000002}
    return [
        ("certified-acc", acc, {**base, "certified": True, "risk": "accepted_error_rate", "limit": 0.05, "needed_images": 59,
                                "threshold": 0.9253912568, "val": val}),
        ("certified-esc", esc, {**base, "certified": True, "risk": "escape_rate", "limit": 0.01, "needed_images": 299,
                                "threshold": 0.81, "val": {**val, "escapes": 1}}),
        ("zero-acc", ThresholdTarget(accepted_accuracy=1.0), {**base, "certified": False, "risk": "accepted_error_rate",
                                                              "limit": 0.0, "needed_images": None}),
        ("zero-esc", ThresholdTarget(max_escape_rate=0.0, ok_class="ok"), {**base, "certified": False, "risk": "escape_rate",
                                                                          "limit": 0.0, "needed_images": None}),
        ("needs-acc", ThresholdTarget(accepted_accuracy=0.99), {**base, "certified": False, "risk": "accepted_error_rate",
                                                                "limit": 0.01, "needed_images": 299}),
        ("needs-esc", esc, {**base, "certified": False, "risk": "escape_rate", "limit": 0.01, "needed_images": 299}),
        ("failed-acc", acc, {**base, "certified": False, "risk": "accepted_error_rate", "limit": 0.05, "needed_images": 59,
                             "stopped_at": stop}),
        ("failed-esc", esc, {**base, "certified": False, "risk": "escape_rate", "limit": 0.01, "needed_images": 299,
                             "stopped_at": stop}),
    ]


@pytest.mark.parametrize("case", _certificate_cases(), ids=lambda c: c[0])
def test_the_certificate_on_page_one_is_the_one_verify_wrote(case):
    """The report rebuilds the certificate in its own language from kpi.json's fields; in English it must say
    exactly what `kit verify` said (kit.verify.threshold writes the message)."""
    from kit.report.build import certificate_message
    from kit.report.i18n import translator
    from kit.verify.threshold import _certify_message

    _, target, out = case
    val_images = 132
    parts = val_images if target.accepted_accuracy is not None else out["val"]["defective_parts"]
    message = _certify_message(out, target, parts)
    op = {"certified": out["certified"], "confidence": out["confidence"], "threshold": out["threshold"], "val": out["val"],
          "certificate": {k: out[k] for k in ("risk", "limit", "tested", "stopped_at", "needed_images")} | {"message": message}}
    assert certificate_message(operating_record(op), val_images, translator("en")) == message
    japanese = certificate_message(operating_record(op), val_images, translator("ja"))
    assert re.search(r"[\u3040-\u30ff]", japanese) and not re.search(r"\b(certified|accepted|validation)\b", japanese)


def _operating_kpi(k: int, n: int, threshold, certificate=None, certified=None):
    from kit.verify.stats import rate

    return kpi_record({"val_images": 132, "operating": {"threshold": threshold, "certified": certified, "confidence": 0.95,
                                             "certificate": certificate, "val": {"automation_rate": 0.9, "risk_upper": 0.04}},
            "intervals": {"automation_rate": rate(k, n), "accepted_accuracy": rate(k, k)}})


def test_the_operating_point_says_what_actually_happens():
    from kit.report.build import operating_sentences
    from kit.report.i18n import translator

    t = translator("en")
    everything = " ".join(operating_sentences(_operating_kpi(132, 132, 0.2), t))
    assert "decides all 132 parts itself" in everything and "no part goes to a person" in everything
    assert "below the confidence threshold" not in everything and "not certified" in everything
    nothing = " ".join(operating_sentences(_operating_kpi(0, 132, None), t))
    assert "No operating target or confidence threshold is set" in nothing and "none of the 132 parts" in nothing
    assert "below the confidence threshold" not in nothing
    some = " ".join(operating_sentences(_operating_kpi(120, 132, 0.93), t))
    assert "decides 120 of 132 parts" in some and "the other 12, below the confidence threshold 0.93, go to a person" in some
    certificate = {"risk": "accepted_error_rate", "limit": 0.05, "tested": 1, "stopped_at": None, "needed_images": 59}
    certified = operating_sentences(_operating_kpi(120, 132, 0.93, certificate, True), t)
    assert certified[0].startswith("The operating target was certified on validation: certified with 132 validation images: "
                                   "95 % accepted accuracy at 95 % confidence at threshold 0.93 (90.0% automated; ")


def test_an_uncertified_target_says_every_part_goes_to_a_person(run_copy):
    def uncertified(kpi):
        op = kpi["operating"]
        op.update(certified=False, reached=False, confidence=0.95, threshold=1.0000000000000002, target="accepted_accuracy >= 0.99",
                  certificate={"risk": "accepted_error_rate", "limit": 0.01, "tested": 0, "stopped_at": None,
                               "needed_images": 299, "message": "..."})
        kpi["intervals"]["automation_rate"].update(k=0, rate=0.0)

    kpi = _edit_kpi(run_copy, uncertified)
    page = _text(_page_one(render_html(run_copy, "en")))
    assert (f"The operating target was not certified on validation: not certifiable with {kpi['val_images']} validation images: "
            "99 % accepted accuracy at 95 % confidence needs about 299 accepted validation images with no error.") in page
    assert f"the model decides none of the {kpi['test_images']} parts: a person inspects all of them" in page


def test_escapes_per_class_and_the_worst_class_on_page_one(run_copy):
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    html = render_html(run_copy, "en")
    table = html[html.index('id="escapes"'):html.index('id="kpi-table"')]
    escapes = kpi["operating"]["escapes_test"]
    for name, row in escapes["classes"].items():
        kind = "escape" if row["kind"] == "escape" else "false reject"
        assert re.search(rf"<td>{name}</td><td>{kind}</td><td class=\"num\">{row['k']} / {row['n']}</td>", table), name
        assert f"{row['ppm_high']:,.0f}" in table
    sizes = {row["n"] for row in escapes["classes"].values() if row["kind"] == "escape"}
    assert (f"class, {escapes['worst']} (n = " in _text(table) or f"Worst defect class: {escapes['worst']}," in _text(table)
            or (len(sizes) == 1 and f"with {sizes.pop()} test parts per defect class" in _text(table)))


def test_a_line_of_defect_types_only_has_no_escapes(run_copy):
    def no_ok_class(kpi):
        kpi["operating"].update(escapes_test=None, ok_class=None)
        kpi["intervals"].pop("escape_rate")

    _edit_kpi(run_copy, no_ok_class)
    page = _text(_page_one(render_html(run_copy, "en")))
    assert "Escapes are not defined for a line of defect types only" in page
    assert "test images of defect types only (no good-part class)" in page
    assert STRINGS["ja"]["escapes_none"][:10] in _text(_page_one(render_html(run_copy, "ja")))


def test_the_test_mix_is_on_page_one(run_copy):
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    cm = kpi["models"][kpi["deployed_runtime"]]["confusion_matrix"]
    counts = dict(zip(kpi["classes"], map(sum, cm)))
    n, good = sum(counts.values()), counts["ok"]
    page = _text(_page_one(render_html(run_copy, "en")))
    assert (f"{n} test images: {n - good} defective ({100 * (n - good) / n:.0f} %), {good} good (ok, {100 * good / n:.0f} %)."
            in page)
    assert "use this test mix, not the line's production mix" in page


def test_one_name_per_model_and_the_gap_in_words(run_copy):
    html = render_html(run_copy, "en")
    page = _text(_page_one(html))
    assert "small model (ONNX FP32, deployed)" in page
    assert re.search(r"The small model is (\d+\.\d points (better|worse) than|as accurate as) the large model", page)
    assert "gap" not in page.replace("kpi.max_accuracy_gap", "")  # the sign in words, not "gap -3.0 pts"
    assert "across runtimes: the teacher in PyTorch" in page and "Same framework: the small model in PyTorch takes" in page
    tables = html[html.index("<!-- Latency -->"):html.index("<!-- Appendix -->")]  # latency and parity tables
    assert "<td>small model (ONNX FP32, deployed)</td>" in tables and "<td>large model (teacher)</td>" in tables
    assert not re.search(r"<td>(onnx|onnx-int8|student|teacher)</td>", tables)


def test_the_appendix_records_the_measurements_it_was_built_from(run_copy):
    from deploy.manifest import sha256_file

    result = build_report(run_copy, log=lambda m: None)
    html = result.html.read_text(encoding="utf-8")
    sources = html[html.index('id="sources"'):]
    for rel in ("verify/kpi.json", "bundle/model.json", "bundle/parity.json"):
        assert f"<td>{rel}</td><td><code>{sha256_file(run_copy / rel)}</code></td>" in sources, rel
    recorded = json.loads((run_copy / "state.json").read_text())["stages"]["report"]["sources"]
    assert recorded["verify/kpi.json"] == sha256_file(run_copy / "verify" / "kpi.json")


def test_a_repeated_measurement_leaves_a_stale_report_not_a_current_looking_one(run_copy):
    from kit.rundir import mark_report_stale

    assert (run_copy / "report" / "report.html").is_file()
    stale = mark_report_stale(run_copy, f"kit verify {XSS}")
    assert stale == run_copy / "report.stale" and not (run_copy / "report").exists()
    html = (stale / "report.html").read_text(encoding="utf-8")
    body = html[html.index("<body>") + len("<body>"):].lstrip()
    assert body.startswith('<div class="stale-banner"')
    banner = _text(body[:body.index("</div>") + 6]).strip()
    assert re.fullmatch(rf"STALE: made before the measurements were repeated on \d{{4}}-\d\d-\d\d \d\d:\d\d UTC "
                        rf"\(kit verify {re.escape(XSS)}\); run `kit report {re.escape(str(run_copy))}` for a current report\.",
                        banner), banner
    assert XSS not in html  # the reason is escaped like every other string
    assert mark_report_stale(run_copy, "kit export") is None  # nothing current to mark any more

    build_report(run_copy, lang="ja", log=lambda m: None)
    stale = mark_report_stale(run_copy, "kit export")
    assert "古いレポート" in (stale / "report.ja.html").read_text(encoding="utf-8")
    build_report(run_copy, log=lambda m: None)  # a current report supersedes the stale one
    assert (run_copy / "report" / "report.html").is_file() and not (run_copy / "report.stale").exists()


@pytest.mark.skipif(_weasyprint_missing() is not None, reason=str(_weasyprint_missing()))
def test_a_stale_pdf_is_renamed(run_copy):
    from kit.rundir import mark_report_stale

    build_report(run_copy, pdf=True, log=lambda m: None)
    stale = mark_report_stale(run_copy, "kit verify")
    assert (stale / "report.stale.pdf").is_file() and not (stale / "report.pdf").exists()


# -- the line's mix, net economics, recommendation, layout and language (issue 18) ---------------

def _set_recipe(run_dir: Path, section: str, values: dict) -> None:
    lock = run_dir / "recipe.lock.yaml"
    body = yaml.safe_load(lock.read_text())
    body["recipe"].setdefault(section, {}).update(values)
    lock.write_text(yaml.safe_dump(body))


def test_page_one_gives_the_production_mix_and_net_economics(run_copy):
    from kit.recipe.schema import ThresholdTarget
    from kit.verify.kpi import retune_threshold

    _set_recipe(run_copy, "line", {"ok_class": "ok", "defect_rate": 0.02})
    _set_recipe(run_copy, "economics", {"parts_per_day": 10000, "manual_seconds_per_part": 2, "labour_cost_per_hour": 30,
                                        "escape_cost": 500, "false_reject_cost": 3})
    retune_threshold(run_copy, ThresholdTarget(accepted_accuracy=0.3), log=lambda m: None)
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    prod = kpi["operating"]["production"]
    assert prod["weights"]["ok"] == pytest.approx(0.98) and sum(prod["weights"].values()) == pytest.approx(1.0)
    page = _text(_page_one(build_report(run_copy, log=lambda m: None).html.read_text(encoding="utf-8")))
    assert "In the line's production mix (line.defect_rate: 2.00 % defective; ok 98.00 %)" in page
    assert f"{prod['escapes_per_million']['rate']:,.0f} escapes per million parts produced" in page
    assert "Net savings" in page and "in the line's production mix" in page
    assert 'data-key="escape_cost">500<' in render_html(run_copy, "en")


def test_without_a_defect_rate_page_one_says_it_uses_the_test_mix(run_copy):
    page = _text(_page_one(render_html(run_copy, "en")))
    assert "The line's defect rate is not set (line.defect_rate)" in page


def test_the_japanese_page_embeds_its_font_and_no_english_from_the_tables(run_copy):
    from kit.report.i18n import STRINGS

    html = build_report(run_copy, lang="ja", log=lambda m: None).html.read_text(encoding="utf-8")
    font = re.search(r'<style id="embedded-font">@font-face \{ font-family: \'KitCJK\'; src: url\(data:font/woff;base64,([A-Za-z0-9+/=]+)\)', html)
    assert font, "no embedded font"
    assert 2_000 < len(font.group(1)) * 3 / 4 < 400_000  # a subset: a few hundred glyphs, not the whole font
    page = _text(html.split("<body>", 1)[1])
    leaked = []
    for key, text in STRINGS["en"].items():
        if text == STRINGS["ja"][key]:
            continue
        for fragment in re.split(r"\{\w+\}", text):
            words = re.findall(r"[A-Za-z]{3,}", fragment)
            if len(words) >= 3 and fragment.strip() in page:
                leaked.append((key, fragment.strip()))
    assert not leaked, leaked


def test_pdf_headings_stay_on_the_page_of_their_charts(run_copy):
    weasyprint = pytest.importorskip("weasyprint")
    html = render_html(run_copy, "en")
    document = weasyprint.HTML(string=html).render()

    def boxes(box):
        yield box
        for child in getattr(box, "children", None) or []:
            yield from boxes(child)

    heading_page, image_page, lonely = {}, {}, []
    for number, page in enumerate(document.pages):
        tags = []
        for box in boxes(page._page_box):
            element = getattr(box, "element", None)
            if element is None or type(box).__name__ not in ("BlockBox", "BlockReplacedBox", "InlineReplacedBox"):
                continue
            if box.element_tag in ("h2", "h3"):
                heading_page.setdefault("".join(element.itertext()).strip(), number)
                tags.append("h")
            elif box.element_tag == "img":
                image_page.setdefault(element.get("alt"), number)
                tags.append("img")
            elif box.element_tag in ("p", "table", "div", "pre"):
                tags.append("other")
        if tags and set(tags) == {"h"}:
            lonely.append(number)
    charts = {alt: page for alt, page in image_page.items() if alt in heading_page}
    assert len(charts) >= 4, charts  # robustness, speed, confusion matrix, views
    assert all(heading_page[alt] == page for alt, page in charts.items()), (heading_page, image_page)
    assert not lonely, f"pages holding only headings: {lonely}"
