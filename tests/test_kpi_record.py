"""``verify/kpi.json`` as ``KpiRecord`` (``kit.verify.record``): written and read back unchanged, refused with one
line when this kit cannot read it, an old file without ``schema_version`` still read, and no module of the kit
reading it by string keys."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from kit.errors import RunDirError
from kit.verdict import Verdict, check, verdict
from kit.verify.record import KPI_SCHEMA_VERSION, KpiRecord, read_kpi, write_kpi
from kit.verify.stats import rate
from tests.kpi_records import kpi_record, minimal_kpi

ROOT = Path(__file__).resolve().parents[1]


def _rich() -> dict:
    """A record with the parts whose JSON shape is easiest to lose: per-class escape rates (flat keys), checks with
    and without an interval, an absent certificate, ints and floats, a previous model."""
    checks = [check("kpi.max_class_escape_rate[crack]", "escape_rate[crack]", "crack: share accepted as good", 0, 0.05, "<=",
                    point=0, bound=0.168, gated_on="bound"),
              check("line takt", "latency_p95_ms", "p95 within the time per part", 2.5, 1000, "<=")]
    return {
        "test_images": 20, "val_images": 5, "skipped_runtimes": {"tensorrt-fp16": "no CUDA"},
        "operating": {"class_thresholds": {"crack": 0.9}, "ok_class": "ok", "threshold": 0.5, "test": {"accepted": 3}},
        "measured": {"accuracy": 0.75, "accuracy_gap": 0.0, "max_class_escape_rate": 0.0, "worst_escape_class": "crack",
                     "escape_rate[crack]": 0.0, "escape_rate[scratch]": None, "operating_target": None},
        "intervals": {"escape_rate": rate(0, 10)},
        "gate": {**verdict(checks), "gate_on": "bound"},
        "previous": {"confidence": 0.95, "n_boot": 2000,
                     "per_class": [{"class": "crack", "n": 4, "old": 1.0, "new": 0.5, "old_correct": 4, "new_correct": 2,
                                    "diff": -0.5, "low": -1.0, "high": 0.0, "verdict": "same"}],
                     "overall": {"n": 20, "old": 0.8, "new": 0.75, "diff": -0.05, "low": -0.2, "high": 0.1, "verdict": "same"},
                     "excluded_seen_by_previous": 0, "run_dir": "runs/tiny_line/r0", "bundle": "runs/tiny_line/r0/bundle",
                     "runtime": "onnx", "gated": True, "model_id": None},
        "differences": [{"name": "deployed_vs_teacher", "a": "onnx", "b": "teacher", "diff": 0.0, "low": 0.0, "high": 0.0, "n": 4}],
    }


def _write(run_dir: Path, data: dict) -> Path:
    path = run_dir / "verify" / "kpi.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def test_a_record_is_written_and_read_back_equal(tmp_path):
    record = kpi_record(_rich())
    path = write_kpi(tmp_path, record)
    assert path == tmp_path / "verify" / "kpi.json"
    again = read_kpi(tmp_path)
    assert again == record and read_kpi(path) == record
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == KPI_SCHEMA_VERSION and list(raw)[0] == "schema_version"
    assert raw["measured"]["escape_rate[crack]"] == 0.0 and "escape_rates" not in raw["measured"]
    assert again.measured.escape_rates == {"crack": 0.0, "scratch": None}
    assert again.gate.checks[0].bound == 0.168 and again.gate.checks[1].gated_on is None
    assert again.previous.per_class[0].class_ == "crack" and again.previous.worse == []
    assert again.operating.certificate is None and "certificate" not in raw["operating"]  # absent stays absent
    assert isinstance(raw["gate"]["checks"][0]["value"], int) and isinstance(raw["operating"]["threshold"], float)


def test_the_file_is_the_dict_it_was_made_from(tmp_path):
    """Only ``schema_version`` is added: no key invented, renamed, reordered, or a number retyped."""
    data = kpi_record(_rich()).to_dict()
    path = _write(tmp_path, data)
    write_kpi(path, read_kpi(path))
    assert json.dumps(json.loads(path.read_text())) == json.dumps(data)


def test_a_newer_schema_version_is_refused_with_one_line(tmp_path):
    path = _write(tmp_path, {**minimal_kpi(), "schema_version": 2})
    with pytest.raises(RunDirError) as exc:
        read_kpi(tmp_path)
    assert _one_line(exc, path) == (f"{path}: schema_version 2 is not supported (this kit reads 1); read it with the kit "
                                    f"that wrote it, or run `kit verify {tmp_path}` again")


def test_a_missing_field_is_refused_with_one_line(tmp_path):
    data = minimal_kpi()
    del data["measured"]
    del data["operating"]["threshold"]
    path = _write(tmp_path, data)
    with pytest.raises(RunDirError) as exc:
        read_kpi(tmp_path)
    assert _one_line(exc, path) == (f"{path} was written by an older `kit verify` (no operating.threshold, measured); "
                                    f"run `kit verify {tmp_path}` again")


def test_a_wrong_type_or_an_unknown_key_is_refused_with_one_line(tmp_path):
    path = _write(tmp_path, {**minimal_kpi(), "test_images": "many"})
    with pytest.raises(RunDirError) as exc:
        read_kpi(path)
    assert _one_line(exc, path).startswith(f"{path}: test_images: Input should be a valid integer")
    path = _write(tmp_path, {**minimal_kpi(), "measured": {**minimal_kpi()["measured"], "accuracy": True}})
    with pytest.raises(RunDirError) as exc:
        read_kpi(path)
    assert "measured.accuracy" in _one_line(exc, path)
    path = _write(tmp_path, {**minimal_kpi(), "figure_from_the_future": 1})
    with pytest.raises(RunDirError) as exc:
        read_kpi(path)
    assert "figure_from_the_future: Extra inputs are not permitted" in _one_line(exc, path)


def test_a_file_that_is_not_json_or_missing_is_refused_with_one_line(tmp_path):
    path = tmp_path / "verify" / "kpi.json"
    path.parent.mkdir()
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(RunDirError) as exc:
        read_kpi(tmp_path)
    assert _one_line(exc, path).startswith(f"{path}: not valid JSON (")
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(RunDirError) as exc:
        read_kpi(tmp_path)
    assert "not a kpi record (a JSON list" in _one_line(exc, path)
    with pytest.raises(RunDirError, match=r"no verify/kpi.json; run `kit verify .*` first$"):
        read_kpi(tmp_path / "elsewhere")


def test_a_file_from_before_the_version_is_read_as_version_1(tmp_path):
    old = {k: v for k, v in kpi_record(_rich()).to_dict().items() if k != "schema_version"}
    for key in ("skipped_runtimes", "machine", "localisation", "differences"):  # later additions an old file lacks
        old.pop(key, None)
    path = _write(tmp_path, old)
    record = read_kpi(tmp_path)
    assert record.schema_version == 1 and record.skipped_runtimes == {} and record.machine is None
    write_kpi(path, record)  # rewritten (``kit threshold``): it gains the version, nothing else
    assert json.loads(path.read_text()) == {"schema_version": 1, **old}


def test_an_old_file_whose_fields_do_not_fit_is_refused_with_one_line(tmp_path):
    old = {k: v for k, v in minimal_kpi().items() if k not in ("schema_version", "intervals")}
    path = _write(tmp_path, old)
    with pytest.raises(RunDirError) as exc:
        read_kpi(tmp_path)
    assert _one_line(exc, path) == f"{path} was written by an older `kit verify` (no intervals); run `kit verify {tmp_path}` again"


def test_the_parity_verdict_reads_as_the_same_typed_verdict():
    """``kit.verdict`` serves the parity ladder too: its checks (with ``rung``) read and dump unchanged."""
    parity = verdict([check("export.parity.int8_min_agreement", "agreement", "INT8 agrees with FP32", 0.9, 0.99, ">=",
                            rung="onnx-int8")])
    typed = Verdict.model_validate(parity)
    assert not typed.passed and typed.checks[0].rung == "onnx-int8" and typed.to_dict() == parity


def _string_key_reads(tree: ast.AST) -> list[int]:
    """Lines that index a kpi record by string: ``kpi[...]``, ``x.kpi[...]``, ``kpi.get(...)``, ``x.kpi.get(...)``."""
    def is_kpi(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "kpi") or (isinstance(node, ast.Attribute) and node.attr == "kpi")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_kpi(node.value):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "setdefault")
              and is_kpi(node.func.value)):
            lines.append(node.lineno)
    return lines


def test_no_module_reads_kpi_by_string_keys():
    """A new figure is a field of ``KpiRecord`` and read as an attribute, never ``kpi["..."]`` again."""
    found = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / "kit").rglob("*.py"))
             for line in _string_key_reads(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "read kpi.json through KpiRecord attributes (kit.verify.record), not string keys: " + ", ".join(found)


def test_the_guard_sees_string_key_reads():
    tree = ast.parse('a = kpi["measured"]["accuracy"]\nb = result.kpi.get("previous")\nc = kpi.measured.accuracy\n')
    assert sorted(_string_key_reads(tree)) == [1, 2]


def test_a_verified_run_reads_back_to_its_own_file(finished_run):
    """The file ``kit verify`` wrote: the record dumps to it exactly (key order and number types included)."""
    raw = (finished_run / "verify" / "kpi.json").read_text(encoding="utf-8")
    record = read_kpi(finished_run)
    assert isinstance(record, KpiRecord) and json.loads(raw)["schema_version"] == KPI_SCHEMA_VERSION
    assert json.dumps(record.to_dict()) == json.dumps(json.loads(raw))
