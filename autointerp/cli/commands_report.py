"""CLI commands: ``report`` (HTML page of a run), ``sweep`` (grid of explain configs), ``plot``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from autointerp.cli.app import app

if TYPE_CHECKING:
    import pandas as pd

    from autointerp.sweep_tables import SweepTables

console = Console()


def _not_a_sweep(run_dir: Path) -> None:
    from autointerp.errors import UserError

    if (run_dir / "sweep.json").exists() and not (run_dir / "manifest.json").exists():
        cells = sorted(p.name for p in (run_dir / "cells").glob("*") if (p / "manifest.json").exists())
        example = run_dir / "cells" / (cells[0] if cells else "<cell>")
        raise UserError(f"{run_dir} is a sweep, not a run; report one of its cells, e.g. autointerp report {example}")


@app.command()
def report(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by `autointerp explain`, or a file written by `autointerp export` "
        "(.parquet, .jsonl, .csv)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write: the page (file layout, default RUN_DIR/report.html) or the "
        "folder (folder layout, default RUN_DIR/report/)."),
    layout: str = typer.Option(
        "auto", "--layout", help="file: one self-contained page (opens from file://); folder: index.html plus "
        "chunks loaded on demand (open with `autointerp serve`); auto: file up to --single-file-max features."),
    single_file_max: int = typer.Option(1000, "--single-file-max", help="Largest run written as one page by auto."),
    compare: Path | None = typer.Option(
        None, "--compare", help="A second run (or sweep cell) on the same features: paired score differences "
        "and both labels."),
    max_examples: int = typer.Option(20, help="Examples shown per split and feature."),
) -> None:
    """Write the interactive feature browser of a run: overview, feature list, feature cards, compare."""
    from autointerp.report import build_report

    _not_a_sweep(run_dir)
    if compare is not None:
        _not_a_sweep(compare)
    path = build_report(run_dir, out, max_examples=max_examples, layout=layout,  # type: ignore[arg-type]
                        compare=compare, single_file_max=single_file_max)
    console.print(f"report written to [bold]{escape(str(path))}[/]", highlight=False)
    if path.name == "index.html":
        console.print(f"open it with: autointerp serve {escape(str(run_dir))}", highlight=False)


@app.command()
def serve(
    run_dir: Path = typer.Argument(
        ..., help="A run directory (its report/ folder is served; written first when missing), or a folder "
        "written by `autointerp report --layout folder`."),
    port: int = typer.Option(8765, "--port", help="Port on 127.0.0.1 (0: any free port)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rewrite the report folder before serving."),
) -> None:
    """Serve a run's feature browser on 127.0.0.1 and print its URL (Ctrl-C stops)."""
    from autointerp.errors import UserError
    from autointerp.report import build_report
    from autointerp.report.report import default_out
    from autointerp.report.serve import make_server, url_of

    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist; give a run directory or an exported .parquet/.jsonl/.csv file")
    _not_a_sweep(run_dir)
    folder = run_dir if (run_dir / "index.html").is_file() else default_out(run_dir, "folder")
    server = make_server(folder, port)  # bind first: a busy port fails before a long build
    try:
        if folder != run_dir and (rebuild or not (folder / "index.html").is_file()):
            build_report(run_dir, folder, layout="folder")
    except BaseException:
        server.server_close()
        raise
    console.print(f"serving {escape(str(folder))} at [bold]{url_of(server)}[/] (Ctrl-C stops)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


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
    """Run a grid of explain configurations on one feature set, then tabulate, compare and plot them.

    Exit status as `explain`: 0 all done, 1 when a cell has failed features (rerun to retry), 2 bad input."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autointerp.checks import check_run_dir
    from autointerp.paths import runs_root
    from autointerp.plots import cell_label, plot_sweep
    from autointerp.sweep import (
        Cell,
        PipelineRunner,
        SweepEvent,
        cell_dir,
        cell_finished,
        explain_settings,
        load_spec,
        run_sweep,
    )
    from autointerp.sweep_tables import read_tables

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

        async def go() -> list[Cell]:
            runner = PipelineRunner(progress=on_event)
            try:
                return await run_sweep(spec, out, runner, progress=on_event, allowed=explain_settings())
            finally:
                await runner.aclose()

        cells = asyncio.run(go())
    render_tables(read_tables(out))
    if plots:
        paths = plot_sweep(out)
        console.print(f"{len(paths)} plot files in [bold]{out / 'plots'}[/]", highlight=False)
    console.print(
        f"sweep tables in [bold]{out}[/] (tidy.parquet, aggregate.csv, paired.csv, usage.csv)", highlight=False
    )
    unfinished = [c.name for c in cells if not cell_finished(cell_dir(out, c))]
    if unfinished:  # exit status as `explain`: 1 while features failed; a rerun resumes these cells
        console.print(
            f"{len(unfinished)} of {len(cells)} cells have failed features ({', '.join(unfinished)}); rerun the "
            "same command to retry them (their failed features have no scores yet)", highlight=False
        )
        raise typer.Exit(1)


@app.command()
def plot(
    sweep_dir: Path = typer.Argument(..., help="A folder written by `autointerp sweep`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the plots (default SWEEP_DIR/plots)."),
    scores: str = typer.Option("", help="Comma list of the scores to plot (default: every score)."),
) -> None:
    """Plot a sweep's results (PNG and SVG): score distributions vs the baseline, score vs firing
    frequency, and a comparison of cells with bootstrap intervals."""
    from autointerp.plots import plot_sweep
    from autointerp.sweep_tables import read_tables

    render_tables(read_tables(sweep_dir))
    names = [s.strip() for s in scores.split(",") if s.strip()] or None
    paths = plot_sweep(sweep_dir, out, names)
    console.print(f"{len(paths)} plot files in [bold]{paths[0].parent if paths else out}[/]", highlight=False)
