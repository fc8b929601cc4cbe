"""Issue 28, part A: one verdict everywhere, a certificate on images that chose nothing, integrity (TAMPERED), the
quality engineer's box, the shadow period's exit criteria. Report tests read the rendered HTML and PDF text."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kit.cli import app
from kit.recipe.schema import KpiTargets
from kit.report.i18n import translator
from kit.verdict import EXIT_CODES, TAMPERED_EXIT
from kit.verify.gate import evaluate_gate
from kit.verify.release import release_verdict
from kit.verify.stats import rate
from tests.kpi_records import kpi_record


def _can_render_pdf() -> bool:
    try:
        import pypdf  # noqa: F401
        import weasyprint  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", html)))


def _page_one(html: str) -> str:
    return _text(html[html.index("<body"):html.index("<!-- Robustness -->")])


# -- one verdict ------------------------------------------------------------------------------------

def test_the_verdict_never_reads_go_on_a_value_alone():
    targets = KpiTargets(max_class_escape_rate=0.05, min_accuracy=0.9)
    measured = {"accuracy": 0.95, "max_class_escape_rate": 0.0}
    wide = {"max_class_escape_rate": rate(0, 20), "accuracy": rate(99, 100)}  # 0 of 20: upper end 16.8 %
    shadow = release_verdict(evaluate_gate(measured, targets, None, wide))
    assert shadow["verdict"] == "shadow" and shadow["label"] == "GO AFTER A SHADOW PERIOD"
    assert shadow["reasons"] == ["kpi.max_class_escape_rate"] and EXIT_CODES["shadow"] == 3
    go = release_verdict(evaluate_gate(measured, targets, None, {"max_class_escape_rate": rate(0, 100), "accuracy": rate(99, 100)}))
    assert go["verdict"] == "go" and EXIT_CODES["go"] == 0
    no_go = release_verdict(evaluate_gate({**measured, "accuracy": 0.85}, targets, None, wide))
    assert no_go == {"verdict": "no_go", "label": "NO-GO", "reasons": ["kpi.min_accuracy"],
                     "notes": ["missed: kpi.min_accuracy (deployed student test accuracy)"]}
    assert release_verdict(evaluate_gate({}, KpiTargets(), None))["label"] == "NO VERDICT"


def test_a_certificate_the_test_split_does_not_confirm_is_never_go():
    """The audit's case: certified on validation, 3.1 % accepted error on test, one-sided upper end 7.7 % > 5 %."""
    measured = {"operating_target": "accepted_accuracy >= 0.95", "operating_risk_upper": 0.0469, "operating_risk_limit": 0.05,
                "operating_test_risk": 0.031, "operating_test_risk_upper": 0.077}
    gate = evaluate_gate(measured, KpiTargets(), None)
    test = next(c for c in gate["checks"] if c["target"] == "verify.threshold.test")
    assert gate["passed"] and test["passed"] and test["bound"] == 0.077 and "one-sided 95 %" in test["description"]
    assert release_verdict(gate)["verdict"] == "shadow" and release_verdict(gate)["reasons"] == ["verify.threshold.test"]
    contradicted = evaluate_gate({**measured, "operating_test_risk": 0.06}, KpiTargets(), None)
    assert release_verdict(contradicted)["verdict"] == "no_go"
    confirmed = evaluate_gate({**measured, "operating_test_risk_upper": 0.04}, KpiTargets(), None)
    assert release_verdict(confirmed)["verdict"] == "go"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir


def test_every_command_prints_the_same_verdict(run_copy):
    verified = CliRunner().invoke(app, ["verify", str(run_copy)])
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    label = kpi["release"]["label"]
    assert verified.exit_code == EXIT_CODES[kpi["release"]["verdict"]], verified.output
    assert f"verdict: {label}" in verified.output and "KPI gate passed" not in verified.output
    reported = CliRunner().invoke(app, ["report", str(run_copy)])
    assert reported.exit_code == EXIT_CODES[kpi["release"]["verdict"]], reported.output
    assert f"verdict: {label}" in reported.output and f"(en; {label}" in reported.output
    log = (run_copy / "run.log").read_text()  # kit run's own log, from the fixture's run
    assert f"verify: verdict {label}" in log and f"(en; {label}" in log
    state = json.loads((run_copy / "state.json").read_text())
    assert state["stages"]["verify"]["verdict"] == label and state["stages"]["report"]["verdict"] == label
    html = (run_copy / "report" / "report.html").read_text(encoding="utf-8")
    assert f'class="verdict {"go" if label == "GO" else "nogo" if label == "NO-GO" else "shadow"}"' in html
    from kit.report import build_report

    result = build_report(run_copy, log=lambda m: None)
    assert result.verdict.label == label and result.go is (label == "GO") and result.exit_code == EXIT_CODES[result.verdict.verdict]


# -- integrity ----------------------------------------------------------------------------------------

def _edit_kpi(run_dir: Path, edit) -> None:
    path = run_dir / "verify" / "kpi.json"
    kpi = json.loads(path.read_text())
    edit(kpi)
    path.write_text(json.dumps(kpi))


def _reseal(run_dir: Path) -> None:
    """What someone covering an edit would do: record the edited files' hashes in state.json."""
    from kit.rundir import record_hashes

    record_hashes(run_dir)


def test_an_edited_kpi_json_reads_tampered_in_the_cli_the_html_and_the_pdf(run_copy):
    pypdf = pytest.importorskip("pypdf")
    pytest.importorskip("weasyprint")
    _edit_kpi(run_copy, lambda k: k["measured"].update(accuracy=0.989))
    result = CliRunner().invoke(app, ["report", str(run_copy), "--pdf"])
    assert result.exit_code == TAMPERED_EXIT, result.output
    assert "TAMPERED: verify/kpi.json changed after `kit verify`" in result.output
    assert "measured.accuracy 0.989 is not its interval's rate" in result.output
    page = _page_one((run_copy / "report" / "report.html").read_text(encoding="utf-8"))
    assert "TAMPERED: not a release decision" in page and "verify/kpi.json changed after `kit verify`" in page
    assert not re.search(r"\b(GO AFTER A SHADOW PERIOD|NO-GO)\b", page.split("What disagrees")[0])
    pdf = re.sub(r"\s+", " ", pypdf.PdfReader(str(run_copy / "report" / "report.pdf")).pages[0].extract_text())
    assert "TAMPERED" in pdf and "kpi.json changed after" in pdf
    state = json.loads((run_copy / "state.json").read_text())
    assert state["stages"]["report"]["verdict"] == "TAMPERED"


def test_an_edited_recipe_lock_is_named(run_copy):
    lock = run_copy / "recipe.lock.yaml"
    body = yaml.safe_load(lock.read_text())
    body["recipe"].setdefault("economics", {})["labour_cost_per_hour"] = 99
    lock.write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(app, ["report", str(run_copy)])
    assert result.exit_code == TAMPERED_EXIT
    assert "TAMPERED: recipe.lock.yaml changed after `kit verify` (its recipe, the money and the targets are read from it)" \
        in result.output


def test_edited_bounds_and_verdict_do_not_flip_anything_even_with_hashes_recomputed(run_copy):
    def flip(kpi):
        for c in kpi["gate"]["checks"]:
            if c["target"] == "line takt":
                c.update(limit=1e-9, bound=0.0)
        kpi["release"] = {"verdict": "go", "label": "GO", "reasons": [], "notes": []}
        kpi["intervals"]["accuracy"]["k"] = kpi["intervals"]["accuracy"]["n"]  # "every test part right"

    _edit_kpi(run_copy, flip)
    _reseal(run_copy)
    result = CliRunner().invoke(app, ["report", str(run_copy)])
    assert result.exit_code == TAMPERED_EXIT
    assert "changed after `kit verify`" not in result.output  # the hashes were covered up ...
    assert "gate check line takt: limit" in result.output  # ... the recomputed gate is not
    assert "intervals.accuracy: rate" in result.output and "is not k / n" in result.output


def test_kit_threshold_records_what_it_rewrote(run_copy):
    result = CliRunner().invoke(app, ["threshold", str(run_copy), "--target", "accepted_accuracy=0.3"])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(app, ["report", str(run_copy)])
    assert "TAMPERED" not in report.output and report.exit_code in EXIT_CODES.values()


def test_rate_problems_recompute_k_over_n_and_the_interval():
    from kit.verify.integrity import rate_problems

    good = {"a": rate(3, 20), "b": [{"x": {**rate(0, 7), "ppm": 0.0, "ppm_high": rate(0, 7)["high"] * 1e6}}]}
    assert rate_problems(good, "f.json") == []
    bad = {"a": {**rate(3, 20), "rate": 0.1}, "b": {**rate(0, 7), "high": 0.1}}
    problems = rate_problems(bad, "f.json")
    assert problems[0] == "f.json: a: rate 0.1 is not k / n = 3 / 20"
    assert problems[1].startswith("f.json: b: interval 0-0.1 is not the one 0 of 7 give (0-0.4")


# -- the certificate on images that chose nothing ------------------------------------------------------

def test_validation_is_split_per_class_into_choose_and_certify():
    from kit.data.index import carve_certify

    labels = [0] * 10 + [1] * 3 + [2] * 1
    splits = ["val"] * 14
    out = carve_certify(labels, splits, 0.5, seed=0)
    assert out == carve_certify(labels, splits, 0.5, seed=0)  # deterministic
    # half rounded up, at least one left to choose with: 10 -> 5, 3 -> 2, 1 -> 0
    assert [out[:10].count("certify"), out[10:13].count("certify"), out[13:].count("certify")] == [5, 2, 0]
    assert carve_certify(labels, splits, 0.0, seed=0) == splits
    assert carve_certify(labels, ["train"] * 14, 0.5, seed=0) == ["train"] * 14


def test_the_run_certifies_on_images_that_chose_nothing(run_copy):
    from kit.recipe.schema import ThresholdTarget
    from kit.report import build_report
    from kit.rundir import read_split_rows
    from kit.verify.kpi import retune_threshold

    rows = read_split_rows(run_copy)
    val = {p for p, _, s in rows if s == "val"}
    certify = {p for p, _, s in rows if s == "certify"}
    assert certify and val and not certify & val
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    on = kpi["operating"]["certified_on"]
    assert on["independent"] and on["images"] == len(certify) == kpi["certify_images"] and on["chose_images"] == len(val)
    assert kpi["calibration"]["fitted_on"] == "val" and kpi["val_images"] == len(val)
    retune_threshold(run_copy, ThresholdTarget(accepted_accuracy=0.3), log=lambda m: None)
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    risks = kpi["operating"]["certificate"]["line_risks"]
    assert sum(r["n"] for r in risks.values()) == len(certify) and risks["ok"]["kind"] == "false_reject"
    assert all(r["sided"] == "one-sided" for r in risks.values())
    html = build_report(run_copy, log=lambda m: None).html.read_text(encoding="utf-8")
    page_two = _text(html[html.index('id="certificate"'):])
    assert (f"certified on {len(certify)} validation images held out of every choice: the checkpoint, the temperature and "
            f"the teacher check used the other {len(val)}") in page_two
    assert "one-sided 95 % upper bounds; the test figures on page one are two-sided 95 % intervals" in page_two


def test_line_risks_bound_escapes_and_false_rejects_whatever_the_threshold():
    from kit.verify.certification import line_risk_bounds
    from kit.verify.stats import clopper_pearson_upper

    classes = ["crack", "ok"]
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1, 1])
    risks = line_risk_bounds(p, labels, classes, ok_index=1, confidence=0.95)
    assert (risks["crack"]["k"], risks["crack"]["n"]) == (1, 2) and (risks["ok"]["k"], risks["ok"]["n"]) == (1, 3)
    assert risks["crack"]["upper"] == pytest.approx(clopper_pearson_upper(1, 2, 0.95))


# -- the quality engineer's box ----------------------------------------------------------------------

def test_the_appraiser_counts_review_as_no_miss_but_a_false_alarm():
    from kit.verify.appraiser import appraiser_section

    classes = ["crack", "ok", "scratch"]
    p = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.4, 0.3, 0.3], [0.05, 0.9, 0.05], [0.3, 0.4, 0.3], [0.05, 0.05, 0.9]])
    labels = np.array([0, 0, 0, 1, 1, 2])  # a crack called ok (miss), a crack reviewed, a good part reviewed
    box = appraiser_section(p, labels, classes, ok_index=1, threshold=0.5, floors=None)
    assert (box["miss_rate"]["k"], box["miss_rate"]["n"]) == (1, 4)
    assert (box["false_alarm_rate"]["k"], box["false_alarm_rate"]["n"]) == (1, 2)
    assert (box["effectiveness"]["k"], box["effectiveness"]["n"]) == (3, 6)
    assert box["parts_needed"]["miss_rate"]["acceptable"] == 149 and box["split"] == "test"


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_the_quality_box_is_on_page_two_in_html_and_pdf(run_copy, lang):
    from kit.report import build_report

    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    box = kpi["operating"]["appraiser"]
    result = build_report(run_copy, lang=lang, pdf=lang == "en" and _can_render_pdf(), log=lambda m: None)
    html = result.html.read_text(encoding="utf-8")
    section = _text(html[html.index('id="quality-box"'):html.index('id="quality-box"') + 6000])
    if result.pdf is not None:
        import pypdf

        pdf = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in pypdf.PdfReader(str(result.pdf)).pages))
        assert "For the quality engineer: the model as an appraiser" in pdf and "AIAG acceptable" in pdf
        assert f"{box['miss_rate']['k']} / {box['miss_rate']['n']}" in pdf and "Cohen's kappa against the reference" in pdf
    t = translator(lang)
    for measure in ("effectiveness", "miss_rate", "false_alarm_rate"):
        r = box[measure]
        assert f"{t('qe_' + measure)} {r['k']} / {r['n']} {100 * r['rate']:.1f} %" in section, measure
    at_most, at_least = ("≦", "≧") if lang == "ja" else ("≤", "≥")  # IPAexGothic has no ≤ ≥: the Japanese page prints ≦ ≧
    assert f"{at_most} 2 %" in section and f"{at_least} 90 %" in section and t("qe_kappa") in section
    assert "AIAG Measurement Systems Analysis, 4th ed." in section
    if lang == "en":
        assert f"on the test split's {box['parts']} parts ({box['defective']} defective, {box['good']} good" in section
        assert "Agreement with the large model" not in html and "Fidelity to the large model" in html


def test_the_quality_box_says_how_aiag_compares_with_the_recipe():
    from kit.report.quality import quality_box
    from kit.verify.appraiser import appraiser_section

    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    box = appraiser_section(p, np.array([0, 1]), ["crack", "ok"], 1, 0.5, None)
    checks = evaluate_gate({"max_class_escape_rate": 0.0}, KpiTargets(max_class_escape_rate=0.05), None)["checks"]
    kpi = kpi_record({"operating": {"appraiser": box, "ok_class": "ok"}, "gate": {"checks": checks}})
    text = " ".join(quality_box(kpi, translator("en"))["sentences"])
    assert "AIAG's acceptable miss rate (2 %) is 2.5× stricter than the recipe's escape limit (5 % per defect class" in text


# -- the shadow period's exit criteria and the mix ----------------------------------------------------

def _shadow_kpi(defect_rate_weights=None):
    checks = evaluate_gate({"max_class_escape_rate": 0.0, "false_reject_rate": 0.0},
                           KpiTargets(max_class_escape_rate=0.05, max_false_reject_rate=0.05), None,
                           {"max_class_escape_rate": rate(0, 20), "false_reject_rate": rate(0, 32)})
    weights = defect_rate_weights or {"crack": 0.015, "dent": 0.015, "ok": 0.97}
    return kpi_record({"gate": checks, "release": release_verdict(checks),
                       "operating": {"ok_class": "ok", "escapes_test": {"classes": {"crack": {}, "dent": {}, "ok": {}}},
                                     "production": {"weights": weights}}})


def test_the_shadow_period_has_exit_criteria():
    from kit.recipe import parse_recipe
    from kit.report.shadow_exit import exit_criteria, mix_assumption

    kpi = _shadow_kpi()
    recipe = parse_recipe(yaml.safe_dump({"schema_version": 1, "line": {"name": "l", "parts_per_minute": 120, "ok_class": "ok",
                                                                       "defect_rate": 0.03},
                                         "data": {"root": "."}, "economics": {"parts_per_day": 115200}}), check=False)
    text = exit_criteria(kpi, recipe, translator("en"))
    assert text[0] == ("each of crack, dent: at least 72 defective parts inspected with no escape (then the upper end of its "
                       "95 % interval is below 5 %); at 1.50 % of production that is about 4,800 parts produced, 0.7 hours "
                       "at the line's rate")
    assert text[1].startswith("at least 72 good parts (ok) with no false reject")
    assert text[2].startswith("and whichever is longer: at least 1 full production day(s) (115,200 parts a day), every shift "
                              "and every lighting state")
    assert text[3].startswith("an escape during the shadow period (a defective part the model would have accepted as ok) "
                              "stops it: the verdict is NO-GO until the model is retrained")
    assert mix_assumption(kpi, recipe, translator("en")).startswith(
        "Assumed: the recipe gives one defect rate (3.00 %) and no per-class mix, so it is split equally over the 2 defect "
        "classes (crack 1.50 %, dent 1.50 %)")


def test_a_loss_at_the_pessimistic_end_is_said_next_to_the_savings():
    from kit.report.shadow_exit import net_downside

    net = {"currency": "EUR", "point": {"net": 38_293.0}, "low": {"net": -1_093_680.0}}
    assert net_downside(net, translator("en")) == (
        "At the pessimistic end (escapes and false rejects at the upper ends of their intervals) the line loses 1,093,680 "
        "EUR a month, 29× the gain at the measured rates: the savings are not shown until the shadow period bounds the "
        "escapes.")
    assert net_downside({**net, "low": {"net": 5.0}}, translator("en")) is None


def test_the_unconfirmed_certificate_says_how_many_checked_parts_would_confirm_it():
    from kit.report.recommendation import _confirmation_parts
    from kit.verify.stats import clopper_pearson_upper

    zero, at_rate = _confirmation_parts(0.0229, 0.05)
    assert zero == 59 and clopper_pearson_upper(0, 59) <= 0.05 < clopper_pearson_upper(0, 58)
    assert clopper_pearson_upper(int(np.ceil(0.0229 * at_rate)), at_rate) <= 0.05 and 150 < at_rate < 300
    assert _confirmation_parts(0.06, 0.05) == (59, None)  # the test rate itself is past the limit: a miss, not a wait
