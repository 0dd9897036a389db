"""The interactive HTML report of a run directory, and readers of run directories."""

from __future__ import annotations

from autointerp.report.report import build_report, json_for_html, render_html, report_data
from autointerp.report.rundata import ExplanationRow, RunData, load_run

__all__ = ["ExplanationRow", "RunData", "build_report", "json_for_html", "load_run", "render_html", "report_data"]
