"""The report's layout and language (issue 28, part B): the conditions that break the model on page one, a footer
with page numbers, run id and kpi hash on every PDF page, both languages side by side, bold and every glyph in the
Japanese PDF, numbers kept with their units, tables inside the page, the mistakes shown once, the label audit."""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from kit.report import build_report, render_html
from kit.report.build import _escapes, mistake_action
from kit.report.i18n import translator
from kit.report.pdf import keep_units_together
from kit.verify.stats import rate
from tests.kpi_records import kpi_record


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir


def _pdf_missing() -> str | None:
    try:
        import pypdf  # noqa: F401
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"PDF renderer or reader unavailable: {exc}"
    return None


needs_pdf = pytest.mark.skipif(_pdf_missing() is not None, reason=str(_pdf_missing()))


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", html)))


def _page_one(html: str) -> str:
    return html[html.index("<body"):html.index("<!-- Robustness -->")]


def _edit_kpi(run_dir: Path, edit) -> dict:
    path = run_dir / "verify" / "kpi.json"
    kpi = json.loads(path.read_text())
    edit(kpi)
    path.write_text(json.dumps(kpi))
    return kpi


def _breaking_cells(kpi: dict) -> None:
    """The sample line's shape (issue 28): brightness lets defects through from +0.3, any shadow rejects good parts."""
    def cell(family, severity, value, esc, fr):
        return {"family": family, "severity": severity, "value": value, "automation_rate": rate(130, 132),
                "escape_rate": rate(esc, 100), "false_reject_rate": rate(fr, 32)}
    cells = [cell("brighter", s, v, e, 0) for s, v, e in ((1, 0.1, 0), (2, 0.2, 2), (3, 0.3, 13), (4, 0.4, 32), (5, 0.5, 51))]
    cells += [cell("shadow", s, v, 0, f) for s, v, f in ((1, 0.15, 25), (2, 0.3, 32), (3, 0.45, 32), (4, 0.6, 32), (5, 0.75, 32))]
    kpi["robustness"]["decisions"] = {"model": kpi["deployed_runtime"], "cells": cells, "worst": None}
    kpi["robustness"]["families"]["shadow"]["coverage"] = "held-out"
    kpi["operating"]["test"]["accepted"] = max(1, kpi["operating"]["test"].get("accepted") or 0)


@pytest.fixture(scope="module")
def rendered(finished_run, tmp_path_factory) -> Path:
    """One copy of the tiny run with the sample line's breaking cells, its report rendered in English then Japanese,
    both with PDFs (the PDF tests read these files: one rendering per language for the whole module)."""
    if _pdf_missing() is not None:
        pytest.skip(str(_pdf_missing()))
    run_dir = tmp_path_factory.mktemp("layout") / "run"
    shutil.copytree(finished_run, run_dir)
    _edit_kpi(run_dir, _breaking_cells)
    build_report(run_dir, lang="en", pdf=True, log=lambda m: None)
    build_report(run_dir, lang="ja", pdf=True, log=lambda m: None)
    return run_dir


def _files(run_dir: Path, lang: str) -> tuple[Path, Path]:
    folder = run_dir / "report"
    return (folder / "report.html", folder / "report.pdf") if lang == "en" else (folder / "report.ja.html", folder / "report.ja.pdf")


def _pdf_pages(path: Path) -> list[str]:
    import pypdf

    return [p.extract_text() for p in pypdf.PdfReader(str(path)).pages]


# -- the conditions that break the model ------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "ja"])
def test_page_one_shows_the_conditions_that_break_the_model_in_physical_units(run_copy, lang):
    _edit_kpi(run_copy, _breaking_cells)
    page = _text(_page_one(render_html(run_copy, lang)))
    if lang == "en":
        assert "Conditions that break the model" in page
        assert "shadow no (never seen in training) a shadow taking 16 % of the light (mid-grey 128 → 108)" in page
        assert "78.1 % of good parts rejected (25 of 32; limit 5 %)" in page
        assert "+76 grey levels (mid-grey 128 → 204) holds up to +51 grey levels (mid-grey 128 → 179)" in page
        assert "13.0 % of defective parts accepted (13 of 100; limit 5 %)" in page
        assert "add RandomShadow to the training views" in page and "5 % is used" in page
        assert "Pixels are those of the 32 × 32 px image the model sees" in page
        assert "Line conditions that break the model: brighter; shadow" in page  # named in the verdict box too
        assert "severity 5" not in page
    else:
        assert "モデルが破綻する条件" in page and "光を 16 % 遮る影（中間グレー 128 → 108）" in page
        assert "+76 階調（中間グレー 128 → 204）" in page and "良品の 78.1 % が不合格（32 個中 25 個、上限 5 %）" in page


def test_verify_records_held_out_robustness_per_family(finished_run):
    kpi = json.loads((finished_run / "verify" / "kpi.json").read_text())
    held_out = [f for f, v in kpi["robustness"]["families"].items() if v["coverage"] == "held-out"]
    summary = kpi["robustness"]["summary"][kpi["deployed_runtime"]]
    assert held_out
    for family in held_out:
        expected = summary["per_family"][family] / summary["clean_accuracy"]
        assert kpi["measured"][f"heldout_relative_robustness[{family}]"] == pytest.approx(expected)


# -- footer, both languages, bold and glyphs ------------------------------------------------------------------

@needs_pdf
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_pdf_page_has_its_number_run_id_and_kpi_hash_and_page_one_the_breaking_conditions(rendered, lang):
    sha12 = hashlib.sha256((rendered / "verify" / "kpi.json").read_bytes()).hexdigest()[:12]
    run_id = json.loads((rendered / "verify" / "kpi.json").read_text())["run_id"]
    pages = _pdf_pages(_files(rendered, lang)[1])
    assert len(pages) >= 3
    for number, text in enumerate(pages, start=1):
        flat = re.sub(r"\s+", " ", text)
        assert sha12 in flat and run_id in flat, (number, flat[-200:])
        page = f"Page {number} / {len(pages)}" if lang == "en" else f"{number} / {len(pages)} ページ"
        assert page in flat, (number, flat[-200:])
    first = re.sub(r"\s+", "", pages[0])  # the PDF's text breaks lines anywhere
    for phrase in (["Conditions that break the model", "+76 grey levels", "25 of 32; limit 5 %"] if lang == "en" else
                   ["モデルが破綻する条件", "+76階調", "32個中25個"]):
        assert re.sub(r"\s+", "", phrase) in first, phrase


@needs_pdf
def test_rendering_japanese_keeps_the_english_report(rendered):
    folder = rendered / "report"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.ja.html", "report.ja.pdf", "report.pdf"]
    assert '<html lang="en">' in (folder / "report.html").read_text(encoding="utf-8")
    assert '<html lang="ja">' in (folder / "report.ja.html").read_text(encoding="utf-8")


@needs_pdf
def test_the_japanese_pdf_prints_bold_and_every_glyph_it_uses(rendered):
    import pypdf
    from fontTools.ttLib import TTFont

    html_file, pdf_file = _files(rendered, "ja")
    html = html_file.read_text(encoding="utf-8")
    assert "≤" not in html and "≥" not in html and "≦" in html  # IPAexGothic has ≦ ≧, not ≤ ≥
    woff = re.search(r"url\(data:font/woff;base64,([A-Za-z0-9+/=]+)\)", html).group(1)
    cmap = TTFont(io.BytesIO(base64.b64decode(woff))).getBestCmap()
    visible = _text(html[html.index("<body"):])
    assert {c for c in visible if not c.isspace() and ord(c) not in cmap} == set()
    first = pypdf.PdfReader(str(pdf_file)).pages[0]
    assert b"2 Tr" in first.get_contents().get_data()  # bold drawn filled and stroked: the face has no bold


@needs_pdf
def test_numbers_stay_with_their_units_in_the_pdf(rendered):
    for text in _pdf_pages(_files(rendered, "en")[1]):
        assert not re.search(r"\d[ \u00a0]?\n\s*(%|ms|ppm|px)(?![A-Za-z])", text), text
    assert keep_units_together('<body class="a 1 px"><p>97.7 % in 12.65 ms, n = 132</p><p>3 parts</p></body>') == (
        '<body class="a 1 px"><p>97.7\u00a0% in 12.65\u00a0ms, n\u00a0=\u00a0132</p><p>3 parts</p></body>')


@needs_pdf
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_no_box_runs_off_the_page(rendered, lang):
    import weasyprint

    document = weasyprint.HTML(string=_files(rendered, lang)[0].read_text(encoding="utf-8")).render()

    def boxes(box):
        yield box
        for child in getattr(box, "children", None) or []:
            yield from boxes(child)

    over = []
    for number, page in enumerate(document.pages, start=1):
        right = page._page_box.margin_width() - page._page_box.margin_right  # the right edge of the page's content
        for box in boxes(page._page_box):
            if getattr(box, "element_tag", None) in ("table", "img", "pre", "div") and \
                    box.border_box_x() + box.border_width() > right + 0.5:
                over.append((number, box.element_tag, box.element.get("id")))
    assert not over, over


# -- the appendix, the mistakes, the escapes sentence ----------------------------------------------------------

def test_the_yaml_appendix_is_monospace_and_the_stages_show_this_report(run_copy):
    state_file = run_copy / "state.json"
    state = json.loads(state_file.read_text())
    state["stages"]["report"]["finished_at"] = "2000-01-01T00:00:00+00:00"  # the previous report run
    state_file.write_text(json.dumps(state))
    html = render_html(run_copy, "ja")
    assert '<pre class="yaml">' in html and re.search(r'pre\.yaml \{ font-family: "DejaVu Sans Mono"', html)
    stages = html[html.index(translator("ja")("dates")):html.index('<pre class="yaml">')]
    row = re.search(r"<tr><td>report</td><td>([^<]*)</td><td>([^<]*)</td>", stages)
    assert row and row.group(1) == "このレポート" and row.group(2).startswith("20") and "2000-01-01" not in stages


def test_the_mistakes_are_shown_once_saying_which_went_to_a_person(rendered):
    html = _files(rendered, "en")[0].read_text(encoding="utf-8")
    kpi = json.loads((rendered / "verify" / "kpi.json").read_text())
    heatmaps = 'id="heatmaps"' in html and "The most confident mistakes" in html
    assert ('id="errors"' in html) != heatmaps or not kpi["misclassified"]
    shown = html.count("sent to a person</strong>") + html.count("rejected alone (no person saw it)</strong>") + \
        html.count("went out as good, decided alone</strong>")
    assert shown == (min(6, len(kpi["misclassified"])) if heatmaps else len(kpi["misclassified"]))


def test_what_the_rule_did_with_a_mistake():
    kpi = kpi_record({"operating": {"threshold": 0.9, "ok_class": "ok", "class_thresholds": {"crack": 0.97}}})
    assert mistake_action(kpi, {"predicted": "ok", "confidence": 0.95}) == "accept"
    assert mistake_action(kpi, {"predicted": "scratch", "confidence": 0.95}) == "reject"
    assert mistake_action(kpi, {"predicted": "crack", "confidence": 0.95}) == "review"  # below its class threshold
    assert mistake_action(kpi, {"predicted": "ok", "confidence": 0.5}) == "review"


def test_least_tested_class_only_when_the_classes_differ_in_size():
    def table(sizes):
        classes = {c: {"kind": "escape", "k": 0, "n": n, "rate": 0.0, "high": 3.0 / n, "ppm": 0, "ppm_high": 3e6 / n}
                   for c, n in sizes.items()}
        classes["ok"] = {"kind": "false_reject", "k": 0, "n": 32, "rate": 0.0, "high": 0.1, "ppm": 0, "ppm_high": 1e5}
        return kpi_record({"operating": {"ok_class": "ok", "test": {"accepted": 10, "images": 10},
                                         "escapes_test": {"ok_class": "ok", "worst": "crack", "classes": classes}}})

    t = translator("en")
    equal = " ".join(_escapes(table({"crack": 20, "dent": 20}), t)["sentences"])
    assert "least-tested" not in equal and "with 20 test parts per defect class" in equal
    unequal = " ".join(_escapes(table({"crack": 12, "dent": 20}), t)["sentences"])
    assert "the least-tested defect class, crack (n = 12)" in unequal


@pytest.mark.parametrize("flagged", [2, 0])
def test_page_one_says_when_the_audit_flagged_validation_or_test_labels(run_copy, flagged):
    images = [{"rank": 3, "path": "/data/crack/crack_0059.png", "label": "crack", "suggested": "scratch",
               "label_probability": 0.01}, {"rank": 9, "path": "/data/ok/ok_0007.png", "label": "ok", "suggested": "dent",
                                            "label_probability": 0.04}][:flagged]
    audit = {"folds": 3, "by_split": {
        "train": {"images": 30, "flagged": 4, "scored_by": "out of fold", "flagged_images": []},
        "val": {"images": 5, "flagged": flagged, "scored_by": "fold models", "flagged_images": images},
        "test": {"images": 5, "flagged": 0, "scored_by": "fold models", "flagged_images": []}}}
    (run_copy / "audit").mkdir()
    (run_copy / "audit" / "audit.json").write_text(json.dumps(audit))
    page = _text(_page_one(render_html(run_copy, "en")))
    if flagged:
        assert "kit audit flags 2 of 5 validation labels, 0 of 5 test labels as likely wrong" in page
        assert "val: crack_0059.png, labelled crack, looks like scratch" in page and "audit/audit.html" in page
    else:
        assert "kit audit flags none of the validation and test labels as likely wrong" in page
    assert "kit audit flags" in _text(_page_one(render_html(run_copy, "ja"))) or "ラベル監査" in _text(
        _page_one(render_html(run_copy, "ja")))


@needs_pdf
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_plain_words_on_page_one_and_the_jargon_in_a_glossary(rendered, lang):
    t = translator(lang)
    html_file, pdf_file = _files(rendered, lang)
    html = html_file.read_text(encoding="utf-8")
    page = _text(_page_one(html))
    for jargon in ("p95, end to end, batch 1", "paired bootstrap", "held-out corruptions", "macro-F1 is"):
        assert jargon not in page, jargon
    glossary = _text(html[html.index('id="glossary"'):])
    for term in ("escape", "p95", "macro_f1", "held_out", "strong_view", "interval", "paired"):
        assert t("gl_t_" + term) in glossary and t("gl_d_" + term) in glossary, term
    last = re.sub(r"\s+", "", "".join(_pdf_pages(pdf_file)[-2:]))  # the glossary ends the PDF; line breaks anywhere
    assert re.sub(r"\s+", "", t("gl_title")) in last and re.sub(r"\s+", "", t("gl_t_ppm")) in last


def test_the_training_views_print_at_their_own_size(rendered):
    """views.png has two images per class; scaled to a page its 8 pt labels printed at 4 pt. The report draws one per
    class, short enough (at matplotlib's 90 dpi) for the 245 mm the page gives it, so nothing is scaled down."""
    import cv2
    import numpy as np

    html = _files(rendered, "en")[0].read_text(encoding="utf-8")
    section = html[html.index('id="views"'):]
    uri = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', section).group(1)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_UNCHANGED)
    classes = json.loads((rendered / "verify" / "kpi.json").read_text())["classes"]
    assert image.shape[0] / 90 * 25.4 <= 245  # mm at the figure's own scale
    assert image.shape[0] < 1.6 * 90 * (len(classes) + 1)  # one row per class (the stored grid has two)


def test_the_footer_text_cannot_leave_its_css_string():
    from kit.report.build import css_string

    assert css_string('line"</style><script>') == '"line\\22 \\3c /style\\3e \\3c script\\3e "'
    assert css_string("run 20261206 · kpi.json sha256 82039f9e9800") == '"run 20261206 · kpi.json sha256 82039f9e9800"'
