"""Verification of the exported bundle: accuracy and agreement, robustness, calibration,
operating threshold, latency, and the KPI gate (``kit verify`` writes ``verify/kpi.json``)."""

from kit.verify.kpi import VerifyResult, retune_threshold, verify_run

__all__ = ["VerifyResult", "retune_threshold", "verify_run"]
