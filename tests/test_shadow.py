"""kit shadow: the model's decision log joined with the inspectors' decisions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.decision_log import DecisionLog, DecisionRecord
from kit.cli import app
from kit.recipe.schema import ThresholdTarget
from kit.report.i18n import translator
from kit.report.after_golive import render_shadow_page, shadow_section
from kit.feedback.shadow import ShadowError, defective_parts_needed, shadow_period, write_shadow
from kit.verify.stats import clopper_pearson_upper, zero_failure_sample_size

CLASSES = ["crack", "ok", "scratch"]


def _record(i: int, label: str, confidence: float, abstain: bool = False, day: int = 1) -> DecisionRecord:
    others = [c for c in CLASSES if c != label]
    probs = {label: confidence, others[0]: (1 - confidence) / 2, others[1]: (1 - confidence) / 2}
    action = "review" if abstain else ("accept" if label == "ok" else "reject")
    return DecisionRecord(time=f"2026-12-0{day}T08:00:{i % 60:02d}.{i:03d}+00:00", part_id=f"p{i:04d}", image_sha256=f"{i:064x}",
                          label=label, confidence=confidence, probabilities={c: probs[c] for c in CLASSES}, abstain=abstain,
                          action=action, model_id="m1", runtime="onnx", source="test", image=f"p{i:04d}.png")


def _write(tmp: Path, records: list[DecisionRecord], inspector: list[dict]) -> tuple[Path, Path]:
    logs = tmp / "logs"
    with DecisionLog(logs, durable=False) as log:
        for r in records:
            log.append(r)
    csv_path = tmp / "inspectors.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["part_id", "image_sha256", "label", "time"])
        w.writeheader()
        w.writerows(inspector)
    return logs, csv_path


@pytest.fixture
def period(tmp_path):
    """40 parts: 20 ok, 20 crack. The model: 2 escapes (crack accepted as ok), 1 false reject, 3 sent to a person.
    The inspectors: one part missing, two rows for unknown parts, one unknown word, one repeated row, one by sha256 only."""
    records = []
    inspector = []
    for i in range(40):
        truth = "ok" if i < 20 else "crack"
        label, abstain = truth, False
        if i in (20, 21):
            label = "ok"  # escapes
        if i == 5:
            label = "crack"  # false reject
        if i in (30, 31, 32):
            abstain = True
        records.append(_record(i, label, 0.6 if abstain else 0.99, abstain))
        if i == 39:
            continue  # no inspector row
        row = {"part_id": f"p{i:04d}", "image_sha256": "", "label": truth, "time": "2026-12-01T09:00:00"}
        if i == 38:
            row = {"part_id": "", "image_sha256": f"{i:064x}", "label": "ng", "time": "2026-12-01T09:00:00"}
        inspector.append(row)
    inspector.append({"part_id": "p9998", "image_sha256": "", "label": "ok", "time": ""})
    inspector.append({"part_id": "p9999", "image_sha256": "", "label": "crack", "time": ""})
    inspector.append({"part_id": "p0001", "image_sha256": "", "label": "smudge", "time": ""})
    inspector.append({"part_id": "p0002", "image_sha256": "", "label": "ok", "time": "2026-12-01T10:00:00"})  # repeated
    return _write(tmp_path, records, inspector)


def test_counts_agreement_escapes_and_false_rejects(period):
    logs, csv_path = period
    result = shadow_period([logs], csv_path, ThresholdTarget(max_escape_rate=0.05))
    s, c = result["summary"], result["counts"]
    assert c["matched"] == 39 and c["decisions"] == 40 and c["inspector_rows"] == 43
    assert s["defective"] == 19 and s["good"] == 20
    assert (s["automated"]["k"], s["automated"]["n"]) == (36, 39)
    assert (s["escapes"]["k"], s["escapes"]["n"]) == (2, 19)
    assert (s["false_rejects"]["k"], s["false_rejects"]["n"]) == (1, 20)
    # the row with only "ng" agrees ok/ng but names no class
    assert (s["agreement"]["k"], s["agreement"]["n"]) == (35, 38)
    assert (s["agreement_ok_ng"]["k"], s["agreement_ok_ng"]["n"]) == (36, 39)
    assert s["escapes"]["high"] == pytest.approx(0.331, abs=1e-3)  # Clopper-Pearson 2/19 at 95 %
    per = {r["class"]: r for r in result["per_class"]}
    assert per["crack"]["escapes"]["k"] == 2 and per["crack"]["parts"] == 18
    assert per["ok"]["false_rejects"]["k"] == 1 and per["ng (no class)"]["parts"] == 1


def test_mismatched_ids_are_counted_and_listed(period):
    logs, csv_path = period
    result = shadow_period([logs], csv_path, ThresholdTarget(max_escape_rate=0.05))
    c, m = result["counts"], result["mismatches"]
    assert c["inspector_without_decision"] == 2 and m["inspector_without_decision"] == ["part:p9998", "part:p9999"]
    assert c["decision_without_inspector"] == 1 and m["decision_without_inspector"] == ["part:p0039"]
    assert c["unknown_labels"] == 1 and m["unknown_labels"] == ["line 43: 'smudge'"]
    assert c["repeated_inspector_rows"] == 1 and m["repeated_inspector_rows"] == ["line 44: part:p0002"]


def _clean_period(tmp_path: Path, defective: int, escapes: int = 0) -> tuple[Path, Path]:
    records, inspector = [], []
    for i in range(defective + 10):
        truth = "crack" if i < defective else "ok"
        label = "ok" if i < escapes else truth
        records.append(_record(i, label, 0.99))
        inspector.append({"part_id": f"p{i:04d}", "image_sha256": "", "label": truth, "time": ""})
    return _write(tmp_path, records, inspector)


def test_recommendation_flips_at_the_zero_failure_sample_size(tmp_path):
    needed = zero_failure_sample_size(0.05)  # 59 defective parts without an escape bound the rate at 5 %
    assert needed == 59
    few = shadow_period(*[[p] if i == 0 else p for i, p in enumerate(_clean_period(tmp_path / "a", needed - 1))],
                        ThresholdTarget(max_escape_rate=0.05))["recommendation"]
    enough = shadow_period(*[[p] if i == 0 else p for i, p in enumerate(_clean_period(tmp_path / "b", needed))],
                           ThresholdTarget(max_escape_rate=0.05))["recommendation"]
    assert few["decision"] == "keep_shadowing" and few["needed"] == 59 and few["more"] == 1
    assert few["message"].startswith("keep shadowing: 58 defective parts are too few")
    # just below the lowest accepted confidence (certify_threshold keeps a float-noise margin)
    assert enough["decision"] == "automate" and 0.99 - 1e-5 < enough["threshold"] < 0.99
    assert enough["upper"] == pytest.approx(clopper_pearson_upper(0, 59)) and enough["upper"] <= 0.05
    assert enough["message"].startswith("automate at threshold 0.99: over the 59 shadowed defective parts")


def test_escapes_raise_the_parts_needed(tmp_path):
    rec = shadow_period(*[[p] if i == 0 else p for i, p in enumerate(_clean_period(tmp_path, 80, escapes=1))],
                        ThresholdTarget(max_escape_rate=0.05))["recommendation"]
    assert rec["decision"] == "keep_shadowing"
    assert rec["needed"] == defective_parts_needed(1, 0.05, 0.95) == 93
    assert clopper_pearson_upper(1, 93) <= 0.05 < clopper_pearson_upper(1, 92)
    assert rec["more"] == 13 and rec["stopped_at"]["k"] == 1


def test_outputs_escape_user_strings_and_read_in_japanese(tmp_path):
    logs, csv_path = _write(tmp_path, [_record(0, "ok", 0.99)],
                            [{"part_id": "p0000", "image_sha256": "", "label": "ok", "time": ""},
                             {"part_id": "<script>x</script>", "image_sha256": "", "label": "ok", "time": ""}])
    result = shadow_period([logs], csv_path)
    files = write_shadow(result, tmp_path / "out")
    html = files.html.read_text()
    assert "<script>x" not in html and "&lt;script&gt;x" in html
    assert json.loads(files.json.read_text())["counts"]["inspector_without_decision"] == 1
    assert list(csv.DictReader(files.parts_csv.open()))[0]["outcome"] == "agree"
    ja = render_shadow_page(result, "ja")
    assert "シャドー運用" in ja and "検査員" in ja
    section = shadow_section(result, translator("en"))
    assert section["decision"] == "keep_shadowing" and section["mismatch_total"] == 1


def test_cli_writes_and_words_errors(period, tmp_path):
    logs, csv_path = period
    result = CliRunner().invoke(app, ["shadow", "--log", str(logs), "--inspector", str(csv_path), "--out", str(tmp_path / "s"),
                                      "--target", "max_escape_rate=0.05"])
    assert result.exit_code == 0, result.output
    assert "39 parts joined of 43 inspector rows and 40 decisions" in result.output
    assert (tmp_path / "s" / "shadow.html").is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text("serial,label\n1,ok\n")
    result = CliRunner().invoke(app, ["shadow", "--log", str(logs), "--inspector", str(bad)])
    assert result.exit_code == 1
    assert "needs a part_id or an image_sha256 column to join on (columns: serial, label)" in result.output


def test_accepted_accuracy_needs_classes(period):
    logs, csv_path = period
    with pytest.raises(ShadowError, match="some rows only say ng"):
        shadow_period([logs], csv_path, ThresholdTarget(accepted_accuracy=0.99))


def _anomaly_period(tmp: Path, defective: int, escapes: int = 0) -> tuple[list[Path], Path]:
    """An anomaly bundle's log (scores, no probabilities): defective parts scored high, except ``escapes`` of them;
    the inspectors name the kind they saw ("scratch") or say ok."""
    records, inspector = [], []
    for i in range(defective + 10):
        bad = i < defective
        score = 0.4 if (not bad or i < escapes) else 3.0
        action, label = ("accept", "ok") if score < 1 else ("reject", "defect")
        records.append(DecisionRecord(time=f"2026-12-01T08:00:{i % 60:02d}.{i:03d}+00:00", part_id=f"p{i:04d}",
                                      image_sha256=f"{i:064x}", label=label, confidence=0.9, probabilities={},
                                      abstain=False, action=action, model_id="m1", runtime="onnx", source="test",
                                      score=score))
        inspector.append({"part_id": f"p{i:04d}", "image_sha256": "", "label": "scratch" if bad else "ok", "time": ""})
    logs, csv_path = _write(tmp, records, inspector)
    return [logs], csv_path


def test_an_anomaly_log_is_shadowed_and_its_escapes_certified(tmp_path):
    few = shadow_period(*_anomaly_period(tmp_path / "a", 58), ThresholdTarget(max_escape_rate=0.05))
    enough = shadow_period(*_anomaly_period(tmp_path / "b", 59), ThresholdTarget(max_escape_rate=0.05))
    assert few["classes"] == ["ok", "defect"] and few["counts"]["unknown_labels"] == 0
    assert few["recommendation"]["decision"] == "keep_shadowing" and few["recommendation"]["needed"] == 59
    assert few["recommendation"]["more"] == 1
    assert enough["recommendation"]["decision"] == "automate"
    assert enough["recommendation"]["upper"] == pytest.approx(clopper_pearson_upper(0, 59))
    scratch = next(r for r in enough["per_class"] if r["class"] == "scratch")
    assert scratch["escapes"]["k"] == 0 and scratch["parts"] == 59


def test_an_anomaly_escape_raises_the_parts_needed(tmp_path):
    result = shadow_period(*_anomaly_period(tmp_path, 80, escapes=1), ThresholdTarget(max_escape_rate=0.05))
    assert result["summary"]["escapes"]["k"] == 1
    assert result["recommendation"]["needed"] == 93 and result["recommendation"]["more"] == 13
