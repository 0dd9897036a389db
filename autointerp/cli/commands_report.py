"""CLI commands: ``report`` (HTML page of a run), ``sweep`` (grid of explain configs), ``plot``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from autointerp.cli.app import app

console = Console()


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `autointerp explain`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the page (default RUN_DIR/report.html)."),
    max_examples: int = typer.Option(20, help="Examples shown per split and feature."),
) -> None:
    """Write a self-contained interactive HTML report of a run (opens from file://, no network)."""
    from autointerp.report import build_report

    path = build_report(run_dir, out, max_examples=max_examples)
    console.print(f"report written to [bold]{path}[/]", highlight=False)
