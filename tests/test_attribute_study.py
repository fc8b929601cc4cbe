"""kit shadow --study: an attribute agreement study on a planted study equals an independent computation.

The planted study: 60 parts of the sample line (20 good, 40 defective, the folder is the reference), the edge
bundle's decisions on them (the model as one more appraiser), and three simulated inspectors, 2 trials each,
with planted miss and false-alarm counts (where they fall is drawn at random, how many is fixed):

    inspector   misses (of 80 defective decisions)   false alarms (of 40 good decisions)   AIAG verdict
    Aiko        1 (1.25 %)                           1 (2.5 %)                             acceptable
    Ben         6 (7.5 %)                            3 (7.5 %)                             unacceptable
    Chiara      0                                    4 (10 %)                              marginal

Independent computation: statsmodels' cohens_kappa / fleiss_kappa, our own Clopper-Pearson from scipy's beta
quantiles, plain counts for the rest.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import cohens_kappa as sm_cohen
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss
from typer.testing import CliRunner

from deploy.predictor import Predictor
from deploy.replay import replay_images
from kit.cli import app
from kit.feedback.attribute_study import StudyError, attribute_study, read_study
from kit.feedback.shadow import shadow_period
from kit.report.after_golive import render_shadow_page
from tests.edge_bundle import make_bundle, sample_images

PLANTED = {"Aiko": (1, 1), "Ben": (6, 3), "Chiara": (0, 4)}  # (misses, false alarms) over both trials
VERDICT = {"Aiko": "acceptable", "Ben": "unacceptable", "Chiara": "marginal"}


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    a = 1 - confidence
    return (0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1)),
            1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k)))


def plant(parts: list[tuple[str, str]], seed: int = 7) -> list[dict]:
    """Rows of the study CSV: each inspector's two trials with exactly the planted misses and false alarms."""
    rng = np.random.default_rng(seed)
    rows = []
    for who, (misses, alarms) in PLANTED.items():
        decisions = [(p, t, ref) for p, ref in parts for t in (1, 2)]
        defective = [i for i, d in enumerate(decisions) if d[2] == "ng"]
        good = [i for i, d in enumerate(decisions) if d[2] == "ok"]
        wrong = set(rng.choice(defective, misses, replace=False).tolist()) | set(rng.choice(good, alarms, replace=False).tolist())
        for i, (part, trial, ref) in enumerate(decisions):
            call = ({"ok": "ng", "ng": "ok"}[ref]) if i in wrong else ref
            rows.append({"part": part, "appraiser": who, "trial": trial, "call": call, "reference": ref})
    return rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    bundle = make_bundle(folder / "bundle")
    images = sample_images(20, ("ok", "scratch", "dent"))
    replay_images(Predictor.from_bundle(bundle), images, folder / "logs",
                  start=datetime(2026, 12, 1, 8, tzinfo=timezone.utc))
    parts = [(p.stem, "ok" if p.parent.name == "ok" else "ng") for p in images]
    rows = plant(parts)
    study = folder / "study.csv"
    with study.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["part", "appraiser", "trial", "call", "reference"])
        writer.writeheader()
        writer.writerows(rows)
    from deploy.decision_log import read_records

    # the model's call in a pass/fail study: accepted (passes unseen) or not (rejected, or sent to a person)
    model = {r.part_id: ("ok" if r.action == "accept" else "ng") for r in read_records([folder / "logs"]).records}
    return folder, study, rows, dict(parts), model


def test_each_appraiser_against_the_reference_equals_counts_and_our_own_clopper_pearson(planted):
    folder, study_csv, rows, reference, model = planted
    study = attribute_study(study_csv, [folder / "logs"])
    assert study["pass_fail"] and [a["appraiser"] for a in study["appraisers"]] == ["Aiko", "Ben", "Chiara", "model"]
    calls = {who: [(r["call"], r["reference"]) for r in rows if r["appraiser"] == who] for who in PLANTED}
    calls["model"] = [(model[p], reference[p]) for p in reference]
    for a in study["appraisers"]:
        pairs = calls[a["appraiser"]]
        expected = {"effectiveness": (sum(c == r for c, r in pairs), len(pairs)),
                    "miss_rate": (sum(c == "ok" and r == "ng" for c, r in pairs), sum(r == "ng" for _, r in pairs)),
                    "false_alarm_rate": (sum(c == "ng" and r == "ok" for c, r in pairs), sum(r == "ok" for _, r in pairs))}
        for measure, (k, n) in expected.items():
            got = a["versus_reference"][measure]
            assert (got["k"], got["n"]) == (k, n), (a["appraiser"], measure)
            assert (got["low"], got["high"]) == pytest.approx(clopper_pearson(k, n), abs=1e-9)
        if a["appraiser"] in PLANTED:
            misses, alarms = PLANTED[a["appraiser"]]
            assert (a["versus_reference"]["miss_rate"]["k"], a["versus_reference"]["false_alarm_rate"]["k"]) == (misses, alarms)
            assert a["aiag"] == VERDICT[a["appraiser"]] and a["decisions"] == 120
        # Cohen's kappa against the reference: statsmodels on the same decisions
        table = np.zeros((2, 2))
        for c, r in pairs:
            table[["ng", "ok"].index(c), ["ng", "ok"].index(r)] += 1
        theirs = sm_cohen(table)
        assert a["kappa_reference"]["kappa"] == pytest.approx(theirs.kappa, abs=1e-12)
        assert (a["kappa_reference"]["low"], a["kappa_reference"]["high"]) == pytest.approx(
            (max(-1.0, theirs.kappa_low), min(1.0, theirs.kappa_upp)), abs=1e-12)  # cut to kappa's range


def test_within_and_between_appraisers_equal_counts_and_statsmodels(planted):
    folder, study_csv, rows, reference, model = planted
    study = attribute_study(study_csv, [folder / "logs"])
    by = {(r["appraiser"], r["part"], r["trial"]): r["call"] for r in rows}
    parts = list(reference)
    for a in study["appraisers"][:3]:
        who = a["appraiser"]
        same = sum(by[(who, p, 1)] == by[(who, p, 2)] for p in parts)
        assert (a["within"]["k"], a["within"]["n"]) == (same, 60)
        assert (a["within"]["low"], a["within"]["high"]) == pytest.approx(clopper_pearson(same, 60), abs=1e-9)
        counts, _ = aggregate_raters(np.array([[by[(who, p, 1)], by[(who, p, 2)]] for p in parts]))
        assert a["within_kappa"]["kappa"] == pytest.approx(sm_fleiss(counts), abs=1e-12)
    assert study["appraisers"][3]["within"] is None  # the model decided each part once

    everyone = np.array([[by[(w, p, t)] for w in PLANTED for t in (1, 2)] for p in parts])
    b = study["between"]
    assert (b["agreement"]["k"], b["agreement"]["n"]) == (sum(len(set(r)) == 1 for r in everyone), 60)
    assert b["fleiss"]["kappa"] == pytest.approx(sm_fleiss(aggregate_raters(everyone)[0]), abs=1e-12)
    assert b["fleiss"]["low"] < b["fleiss"]["kappa"] < b["fleiss"]["high"]
    assert b["all_match_reference"]["k"] == sum(all(c == reference[p] for c in r) for p, r in zip(parts, everyone))

    firsts = np.array([[by[(w, p, 1)] for w in PLANTED] + [model[p]] for p in parts])
    m = study["between_with_model"]
    assert m["parts"] == 60 and m["fleiss"]["kappa"] == pytest.approx(sm_fleiss(aggregate_raters(firsts)[0]), abs=1e-12)
    names = [*PLANTED, "model"]
    assert [(p["a"], p["b"]) for p in study["pairs"]] == [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for pair in study["pairs"]:
        i, j = names.index(pair["a"]), names.index(pair["b"])
        table = np.zeros((2, 2))
        for x, y in zip(firsts[:, i], firsts[:, j]):
            table[["ng", "ok"].index(x), ["ng", "ok"].index(y)] += 1
        assert pair["kappa"] == pytest.approx(sm_cohen(table).kappa, abs=1e-12)
    assert study["parts_needed"]["miss_rate"]["acceptable"] == 149
    wanted = {"parts": 60, "defective": 40, "good": 20, "model_parts": 60, "model_without_decision": 0}
    assert {k: study["counts"][k] for k in wanted} == wanted


def test_kit_shadow_prints_writes_and_renders_the_study_in_english_and_japanese(planted, tmp_path):
    folder, study_csv, rows, reference, model = planted
    out = tmp_path / "shadow"
    result = CliRunner().invoke(app, ["shadow", "--log", str(folder / "logs"), "--study", str(study_csv),
                                      "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Attribute agreement study" in result.output and "unacceptable" in result.output
    assert ("sample size: a miss rate <= 2% at 95% confidence needs 149 defective parts with no miss (5%: 59); this "
            "study has 40 defective parts") in result.output
    saved = json.loads((out / "shadow.json").read_text())
    assert saved["study"]["appraisers"][0]["aiag"] == "acceptable"
    assert saved["counts"]["matched"] == 60  # without --inspector the reference calls are the inspectors' decisions
    model = next(a for a in saved["study"]["appraisers"] if a["appraiser"] == "model")
    escapes = saved["summary"]["escapes"]  # the kit's own words, over the same parts: the same count
    assert (model["versus_reference"]["miss_rate"]["k"], model["versus_reference"]["miss_rate"]["n"]) == (escapes["k"], escapes["n"])
    assert (out / "attribute_study.csv").read_text().startswith("appraiser,parts,decisions,trials,within_k")
    html = (out / "shadow.html").read_text()
    for words in ("Attribute agreement study", "Miss rate (the kit: escapes)", "False-alarm rate (the kit: false rejects)",
                  "Fleiss&#39; kappa", "needs 149 defective parts with no miss", "marginal", "model (this kit)"):
        assert words in html, words
    ja = render_shadow_page(saved, "ja")
    for words in ("計数値 MSA", "見逃し率（本キットの用語：流出）", "不合格", "条件付き合格", "見逃しのない不良品が 149 個"):
        assert words in ja, words


def test_appraiser_names_and_parts_from_the_line_are_escaped(planted, tmp_path):
    folder, study_csv, rows, reference, model = planted
    hostile = tmp_path / "study.csv"
    text = study_csv.read_text().replace("Aiko", "<script>alert(1)</script>")
    hostile.write_text(text)
    result = shadow_period([folder / "logs"], None, study_csv=hostile)
    html = render_shadow_page(result)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("csv_text, message", [
    ("part,who,trial,call\nP1,A,1,ok\n", "{path}: needs the columns part, appraiser, trial, call (and reference where "
                                          "known); missing appraiser (columns: part, who, trial, call)"),
    ("part,appraiser,trial,call\nP1,A,one,ok\n", "{path}:2: trial 'one' is not a whole number from 1"),
    ("part,appraiser,trial,call\nP1,A,1,ok\nP1,A,1,ng\n", "{path}:3: appraiser 'A' has trial 1 of part 'P1' twice"),
    ("part,appraiser,trial,call,reference\nP1,A,1,ok,ok\nP1,B,1,ok,ng\n",
     "{path}:3: reference 'ng' of part 'P1' differs from 'ok' on row 2"),
    ("part,appraiser,trial,call\nP1,,1,ok\n", "{path}:2: appraiser is empty"),
    ("part,appraiser,trial,call\nP1,model,1,ok\n", "{path}:2: appraiser 'model' is the model's name in the study (its "
                                                    "calls come from the decision logs); rename this appraiser"),
])
def test_a_study_csv_that_cannot_be_read_is_one_line_naming_file_row_and_field(tmp_path, csv_text, message):
    path = tmp_path / "study.csv"
    path.write_text(csv_text)
    with pytest.raises(StudyError) as err:
        read_study(path)
    assert str(err.value) == message.format(path=path)


def test_kit_shadow_needs_inspectors_or_a_study(planted):
    folder = planted[0]
    result = CliRunner().invoke(app, ["shadow", "--log", str(folder / "logs")])
    assert result.exit_code == 1
    assert result.output.strip().endswith("give the inspectors' decisions (--inspector CSV), an attribute study "
                                          "(--study CSV), or both")
