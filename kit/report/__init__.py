"""The management report: ``verify/kpi.json`` -> self-contained HTML (and PDF), English or Japanese."""

from kit.report.build import REPORT_DIR, ReportError, ReportResult, build_report, render_html

__all__ = ["REPORT_DIR", "ReportError", "ReportResult", "build_report", "render_html"]
