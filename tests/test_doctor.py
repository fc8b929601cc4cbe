"""``kit doctor`` reports this machine and flags known-bad combinations."""

from __future__ import annotations

from typer.testing import CliRunner

import kit.doctor as doctor
from kit.cli import app


def test_doctor_reports_the_stack(tmp_path):
    result = CliRunner().invoke(app, ["doctor", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    for topic in ("Python", "torch", "onnxruntime", "TensorRT", "free disk"):
        assert topic in result.output
    assert "inspection-kit[gpu]" in result.output or "TensorRT" in result.output


def test_doctor_flags_both_onnxruntime_wheels(monkeypatch, tmp_path):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: "1.20.0" if d == "onnxruntime-gpu" else real(d))
    findings = doctor.diagnose(tmp_path)
    bad = [f for f in findings if f.topic == "onnxruntime packages"]
    assert bad and bad[0].status == "fail" and "uninstall" in bad[0].hint
    result = CliRunner().invoke(app, ["doctor", "--out", str(tmp_path)])
    assert result.exit_code == 1
