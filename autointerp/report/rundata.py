"""Readers of a run directory, for reports, sweeps and notebooks: re-exported from :mod:`autointerp.rundir`,
the one module that reads and writes run directories (its docstring documents the files and the rules)."""

from __future__ import annotations

from autointerp.rundir import ExplanationRow, RunData, ScoreKey, load_run

__all__ = ["ExplanationRow", "RunData", "ScoreKey", "load_run"]
