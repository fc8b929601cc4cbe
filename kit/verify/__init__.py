"""Verification of the exported bundle: accuracy and agreement, robustness, calibration,
operating threshold, latency, and the KPI gate."""

from kit.verify.pipeline import KPI_NAME, VERIFY_DIR, VerifyResult, retune_threshold, verify_run

__all__ = ["KPI_NAME", "VERIFY_DIR", "VerifyResult", "retune_threshold", "verify_run"]
