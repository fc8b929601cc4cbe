"""The management report: ``verify/kpi.json`` -> self-contained HTML (and PDF), English or Japanese."""

from kit.report.build import ReportError, ReportResult, build_report, render_html

__all__ = ["ReportError", "ReportResult", "build_report", "render_html"]
