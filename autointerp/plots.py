"""Plots of a sweep's tables (matplotlib, no pyplot / global state; PNG and SVG).

- ``distributions_<score>``: per cell, the score distribution next to the shuffled baseline's.
- ``frequency_<score>``: score against firing frequency (log x), one colour per cell.
- ``comparison_<score>``: per cell, mean score with its bootstrap interval, and the baseline mean.

Undefined scores are left out of the points and counted in the titles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from autointerp.errors import UserError
from autointerp.sweep_tables import BASELINE_PREFIX, SCORE_PREFIX, read_tables, score_names

log = logging.getLogger(__name__)

FORMATS = ("png", "svg")
_COLORS = ("#2457c5", "#d1495b", "#2a9d8f", "#e9a03b", "#6a4c93", "#3d5a80", "#8ab17d", "#b5838d")


def cell_label(name: str) -> str:
    """A cell's readable part (its directory name without the trailing config hash)."""
    head, sep, tail = str(name).rpartition("-")
    return head if sep and len(tail) == 8 else str(name)


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in FORMATS:
        path = stem.with_name(f"{stem.name}.{ext}")
        fig.savefig(path, dpi=130, bbox_inches="tight")
        out.append(path)
    return out


def _values(s: pd.Series) -> np.ndarray:
    return s.dropna().to_numpy(dtype=np.float64)


def _cells(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["cell"].astype(str).tolist()))


def plot_distributions(tidy: pd.DataFrame, score: str, stem: Path) -> list[Path]:
    """Box plots plus points of ``score`` per cell, each next to its shuffled baseline."""
    cells = _cells(tidy)
    fig = Figure(figsize=(max(5.0, 1.3 * len(cells) + 2), 4.2))
    ax: Axes = fig.add_subplot()
    rng = np.random.default_rng(0)
    n_undef = 0
    for i, cell in enumerate(cells):
        g = tidy[tidy["cell"] == cell]
        n_undef += int(g[SCORE_PREFIX + score].isna().sum())
        for off, col, color, lab in (
            (-0.18, SCORE_PREFIX + score, _COLORS[0], "explanation"),
            (0.18, BASELINE_PREFIX + score, "#9aa0a6", "shuffled baseline"),
        ):
            v = _values(g[col])
            if len(v) == 0:
                continue
            ax.boxplot([v], positions=[i + off], widths=0.3, showfliers=False,
                       medianprops={"color": color}, boxprops={"color": color},
                       whiskerprops={"color": color}, capprops={"color": color})
            ax.scatter(i + off + rng.uniform(-0.08, 0.08, len(v)), v, s=10, color=color, alpha=0.6,
                       label=lab if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(cells)), [cell_label(c) for c in cells], rotation=20, ha="right")
    ax.set_ylabel(score)
    ax.axhline(0, color="#cccccc", lw=0.8, zorder=0)
    title = f"{score} per cell against the shuffled baseline"
    ax.set_title(title + (f" ({n_undef} undefined left out)" if n_undef else ""), fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, stem)


def plot_vs_frequency(tidy: pd.DataFrame, score: str, stem: Path) -> list[Path]:
    """``score`` against firing frequency (log x axis), one colour per cell."""
    fig = Figure(figsize=(6.0, 4.2))
    ax: Axes = fig.add_subplot()
    n_points = 0
    for i, cell in enumerate(_cells(tidy)):
        g = tidy[(tidy["cell"] == cell) & tidy[SCORE_PREFIX + score].notna() & tidy["frequency"].notna()]
        g = g[g["frequency"] > 0]
        n_points += len(g)
        if not len(g):
            continue
        ax.scatter(g["frequency"].to_numpy(dtype=np.float64), g[SCORE_PREFIX + score].to_numpy(dtype=np.float64),
                   s=14, alpha=0.7, color=_COLORS[i % len(_COLORS)], label=cell_label(cell))
    if n_points:
        ax.set_xscale("log")
        short = FuncFormatter(lambda v, _pos: f"{v:.2g}")
        ax.xaxis.set_major_formatter(short)
        lo, hi = ax.get_xlim()
        # Label the minor ticks only when the data spans less than a decade (else they collide).
        ax.xaxis.set_minor_formatter(short if hi < 10 * lo else NullFormatter())
        ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=45)
    else:
        ax.text(0.5, 0.5, f"no feature has a defined {score}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("firing frequency (fraction of tokens, log scale)")
    ax.set_ylabel(score)
    ax.set_title(f"{score} vs firing frequency", fontsize=10)
    if n_points:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, stem)


def plot_comparison(agg: pd.DataFrame, score: str, stem: Path) -> list[Path]:
    """Mean ``score`` per cell with its bootstrap interval; hollow grey: the baseline mean."""
    g = agg[agg["score"] == score]
    cells = _cells(g)
    fig = Figure(figsize=(6.5, max(2.5, 0.45 * len(cells) + 1.2)))
    ax: Axes = fig.add_subplot()
    for i, cell in enumerate(cells):
        row = g[g["cell"] == cell].iloc[0]
        for mean, lo, hi, style in (
            (row["mean"], row["ci_low"], row["ci_high"], {"fmt": "o", "color": _COLORS[0]}),
            (row["baseline_mean"], row["baseline_ci_low"], row["baseline_ci_high"],
             {"fmt": "o", "color": "#9aa0a6", "mfc": "white"}),
        ):
            if pd.isna(mean):
                continue
            err = None if pd.isna(lo) else np.array([[float(mean) - float(lo)], [float(hi) - float(mean)]])
            ax.errorbar([float(mean)], [i], xerr=err, capsize=3, **style)  # type: ignore[arg-type]
        ax.annotate(f"n={int(row['n'])}", (1.0, i), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7, color="#666666")
    ax.set_yticks(range(len(cells)), [cell_label(c) for c in cells])
    ax.invert_yaxis()
    ax.set_xlabel(f"mean {score} (filled: explanations; hollow: shuffled baseline; bars: bootstrap CI)")
    ax.set_title(f"{score}: comparison of cells", fontsize=10)
    return _save(fig, stem)


def plot_sweep(sweep_dir: Path, out_dir: Path | None = None, scores: Sequence[str] | None = None) -> list[Path]:
    """Write every plot of the sweep at ``sweep_dir`` (default into SWEEP_DIR/plots); returns the files."""
    tables = read_tables(Path(sweep_dir))
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "plots"
    have = score_names(tables.tidy)
    missing = [s for s in scores or [] if s not in have]
    if missing:
        raise UserError(f"no score {', '.join(missing)} in this sweep; it has: {', '.join(have) or 'no scores'}")
    paths: list[Path] = []
    for score in scores or have:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in score)
        paths += plot_distributions(tables.tidy, score, out / f"distributions_{safe}")
        paths += plot_vs_frequency(tables.tidy, score, out / f"frequency_{safe}")
        paths += plot_comparison(tables.aggregate, score, out / f"comparison_{safe}")
    log.info("wrote %d plot files into %s", len(paths), out)
    return paths
