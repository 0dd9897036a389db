"""The interactive HTML feature browser of a run directory, and readers of run directories."""

from __future__ import annotations

from autointerp.report.report import (
    build_report,
    feature_card,
    json_for_html,
    read_run,
    render_html,
    report_data,
    write_report,
)
from autointerp.report.rundata import ExplanationRow, RunData, load_run

__all__ = [
    "ExplanationRow",
    "RunData",
    "build_report",
    "feature_card",
    "json_for_html",
    "load_run",
    "read_run",
    "render_html",
    "report_data",
    "write_report",
]
