"""CLI commands: ``report`` (HTML page of a run), ``sweep`` (grid of explain configs), ``plot``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from autointerp.cli.app import app

if TYPE_CHECKING:
    import pandas as pd

    from autointerp.sweep import SweepTables

console = Console()


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `autointerp explain`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the page (default RUN_DIR/report.html)."),
    max_examples: int = typer.Option(20, help="Examples shown per split and feature."),
) -> None:
    """Write a self-contained interactive HTML report of a run (opens from file://, no network)."""
    from autointerp.errors import UserError
    from autointerp.report import build_report

    if (run_dir / "sweep.json").exists() and not (run_dir / "manifest.json").exists():
        cells = sorted(p.name for p in (run_dir / "cells").glob("*") if (p / "manifest.json").exists())
        example = run_dir / "cells" / (cells[0] if cells else "<cell>")
        raise UserError(f"{run_dir} is a sweep, not a run; report one of its cells, e.g. autointerp report {example}")
    path = build_report(run_dir, out, max_examples=max_examples)
    console.print(f"report written to [bold]{path}[/]", highlight=False)


def _fmt(v: Any, digits: int = 3) -> str:
    import pandas as pd

    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return "undefined"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _interval(row: pd.Series, mean: str, lo: str, hi: str) -> str:
    text = _fmt(row[mean])
    if text != "undefined" and _fmt(row[lo]) != "undefined":
        text += f" [{_fmt(row[lo])}, {_fmt(row[hi])}]"
    return text


def render_tables(tables: SweepTables) -> None:
    """Print a sweep's aggregate and paired tables with rich."""
    from rich.table import Table

    from autointerp.plots import cell_label

    agg, paired = tables.aggregate, tables.paired
    t = Table(title="Scores per cell (mean [95% bootstrap CI]; undefined scores left out)")
    for col in ("cell", "score", "n", "undefined", "mean", "baseline", "vs baseline (paired)"):
        t.add_column(col, justify="left" if col in ("cell", "score") else "right")
    for _, row in agg.iterrows():
        t.add_row(
            cell_label(str(row["cell"])), str(row["score"]), str(row["n"]), str(row["n_undefined"]),
            _interval(row, "mean", "ci_low", "ci_high"),
            _interval(row, "baseline_mean", "baseline_ci_low", "baseline_ci_high"),
            _interval(row, "vs_baseline", "vs_baseline_ci_low", "vs_baseline_ci_high"),
        )
    console.print(t)
    if len(paired):
        p = Table(title="Paired differences a - b over features scored in both (mean [95% CI])")
        for col in ("score", "a", "b", "n", "mean diff"):
            p.add_column(col, justify="left" if col in ("score", "a", "b") else "right")
        for _, row in paired.iterrows():
            p.add_row(str(row["score"]), cell_label(str(row["cell_a"])), cell_label(str(row["cell_b"])),
                      str(row["n"]), _interval(row, "mean_diff", "ci_low", "ci_high"))
        console.print(p)
    if len(tables.usage):
        u = Table(title="LLM usage per cell (cells share the response cache)")
        for col in ("cell", "requests", "cache hits", "prompt tokens", "completion tokens", "cost (USD)"):
            u.add_column(col, justify="left" if col == "cell" else "right")
        for _, row in tables.usage.iterrows():
            cost = row["cost_usd"]
            u.add_row(
                cell_label(str(row["cell"])), str(row["requests"]), str(row["cache_hits"]), str(row["prompt_tokens"]),
                str(row["completion_tokens"]), "undefined" if cost is None else f"{float(cost):.4f}",
            )
        console.print(u)
        reasons = sorted({str(r) for r in tables.usage["cost_reason"] if r})
        for reason in reasons:
            console.print(f"cost undefined: {reason}", markup=False, highlight=False)


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="A sweep YAML file (see examples/sweep.yaml)."),
    sweep_dir: Path | None = typer.Option(
        None, "--sweep-dir", help="Where the cells and tables go (default: $AUTOINTERP_RUNS/sweep-<name>); "
        "rerun with the same folder to resume."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the plots at the end."),
) -> None:
    """Run a grid of explain configurations on one feature set, then tabulate, compare and plot them."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autointerp.checks import check_run_dir
    from autointerp.paths import runs_root
    from autointerp.plots import cell_label, plot_sweep
    from autointerp.sweep import PipelineRunner, SweepEvent, explain_settings, load_spec, read_tables, run_sweep

    spec = load_spec(sweep_file)
    out = sweep_dir or runs_root() / f"sweep-{spec.name}"
    check_run_dir(out, "--sweep-dir")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        cells_task = bar.add_task("cells", total=None)
        feat_task = bar.add_task("features", total=None)

        def on_event(e: SweepEvent) -> None:
            if e.kind == "start":
                bar.update(cells_task, total=e.n_cells)
                bar.update(feat_task, total=e.n_features)
            elif e.kind in ("cell_done", "cell_skipped"):
                bar.advance(cells_task)
                bar.update(feat_task, completed=e.n_features)
            elif e.kind == "cell_start" and e.cell is not None:
                bar.update(cells_task, description=f"cells (now {cell_label(e.cell.name)})")
                bar.update(feat_task, completed=0)
            elif e.kind == "feature":
                bar.update(feat_task, completed=e.n_features)

        async def go() -> None:
            runner = PipelineRunner(progress=on_event)
            try:
                await run_sweep(spec, out, runner, progress=on_event, allowed=explain_settings())
            finally:
                await runner.aclose()

        asyncio.run(go())
    render_tables(read_tables(out))
    if plots:
        paths = plot_sweep(out)
        console.print(f"{len(paths)} plot files in [bold]{out / 'plots'}[/]", highlight=False)
    console.print(
        f"sweep tables in [bold]{out}[/] (tidy.parquet, aggregate.csv, paired.csv, usage.csv)", highlight=False
    )


@app.command()
def plot(
    sweep_dir: Path = typer.Argument(..., help="A folder written by `autointerp sweep`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the plots (default SWEEP_DIR/plots)."),
    scores: str = typer.Option("", help="Comma list of the scores to plot (default: every score)."),
) -> None:
    """Plot a sweep's results (PNG and SVG): score distributions vs the baseline, score vs firing
    frequency, and a comparison of cells with bootstrap intervals."""
    from autointerp.plots import plot_sweep
    from autointerp.sweep import read_tables

    render_tables(read_tables(sweep_dir))
    names = [s.strip() for s in scores.split(",") if s.strip()] or None
    paths = plot_sweep(sweep_dir, out, names)
    console.print(f"{len(paths)} plot files in [bold]{paths[0].parent if paths else out}[/]", highlight=False)
