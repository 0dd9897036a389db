"""The tables and statistics of a sweep (see :mod:`autointerp.sweep` for the sweep itself)::

    SWEEP_DIR/
      tidy.parquet                one row per (feature, cell): params, label, each score and its baseline
      aggregate.parquet/.csv      per cell and score: mean with bootstrap CI, baseline mean, vs baseline
      paired.parquet/.csv         per score and pair of cells: mean paired difference, bootstrap CI, n
      usage.csv                   LLM usage and cost per cell

Each cell's run directory is read through :mod:`autointerp.rundir` (its selected explanations, its score
labels: two judges' scores are two columns, never averaged). Undefined scores stay undefined (``<NA>``
with a ``reason_<score>`` column) and are left out of means, which count them in ``n_undefined``.
Intervals come from the one bootstrap of :func:`autointerp.score.bootstrap_ci`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autointerp.records import FeatureId
from autointerp.rundir import atomic_write_text, load_run, load_run_usage
from autointerp.score import bootstrap_ci
from autointerp.sweep import SWEEP_INDEX, Cell, SweepSpec, cell_dir, read_index

log = logging.getLogger(__name__)

SCORE_PREFIX = "score_"
BASELINE_PREFIX = "baseline_"
REASON_PREFIX = "reason_"


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------
def _param_value(v: Any) -> Any:
    """Grid values as table cells: scalars stay, lists/dicts become compact JSON text."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return json.dumps(v, sort_keys=True, default=str)


def run_table(run_dir: Path) -> pd.DataFrame:
    """One row per feature of one run directory: ``feature``, ``index``, ``label``, ``frequency``, ``max``,
    and per score ``score_<name>``, ``baseline_<name>`` (nullable floats, ``<NA>`` when undefined or
    missing) and ``reason_<name>`` (why the score is undefined)."""
    run = load_run(Path(run_dir), records=False)
    names = run.score_names()
    rows: list[dict[str, Any]] = []
    for fid in run.features():
        sel = run.selected(fid)
        sel_scores, base_scores = run.scores_of(sel), run.scores_of(run.baseline(fid))
        stats = run.stats.get(fid)
        row: dict[str, Any] = {
            "feature": fid,
            "index": FeatureId.parse(fid).index,
            "label": sel.text if sel else None,
            "frequency": stats.frequency if stats else None,
            "max": stats.max if stats else None,
        }
        for n in names:
            s, b = sel_scores.get(n), base_scores.get(n)
            row[SCORE_PREFIX + n] = None if s is None else s.value
            if s is not None:
                row[REASON_PREFIX + n] = s.reason
            else:
                row[REASON_PREFIX + n] = "no usable explanation" if sel is None else "not scored"
            row[BASELINE_PREFIX + n] = None if b is None else b.value
        rows.append(row)
    return _typed(pd.DataFrame(rows, columns=_columns([], names)), names)


def _columns(params: list[str], names: list[str]) -> list[str]:
    cols = [*params, "feature", "index", "label", "frequency", "max"]
    for n in names:
        cols += [SCORE_PREFIX + n, BASELINE_PREFIX + n, REASON_PREFIX + n]
    return cols


def _typed(df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    for n in names:
        for c in (SCORE_PREFIX + n, BASELINE_PREFIX + n):
            df[c] = pd.array(df[c].tolist(), dtype="Float64")
        df[REASON_PREFIX + n] = df[REASON_PREFIX + n].astype("string")
    for c in ("frequency", "max"):
        df[c] = pd.array(df[c].tolist(), dtype="Float64")
    for c in ("cell", "feature", "label"):
        if c in df:
            df[c] = df[c].astype("string")
    df["index"] = df["index"].astype("int64")
    return df


def tidy_table(sweep_dir: Path, cells: Sequence[Cell] | None = None) -> pd.DataFrame:
    """One row per (feature, cell): ``cell``, the grid params, then the columns of :func:`run_table`."""
    if cells is None:
        _, cells = read_index(sweep_dir)
    parts: list[pd.DataFrame] = []
    param_keys: dict[str, None] = {}
    names: dict[str, None] = {}
    for cell in cells:
        path = cell_dir(sweep_dir, cell)
        if not (path / "manifest.json").exists():
            log.warning("cell %s has not run yet; left out of the tables", cell.name)
            continue
        t = run_table(path)
        for k, v in reversed(list(cell.params.items())):
            t.insert(0, k, [_param_value(v)] * len(t))
        t.insert(0, "cell", [cell.name] * len(t))
        param_keys.update(dict.fromkeys(cell.params))
        names.update(dict.fromkeys(c[len(SCORE_PREFIX):] for c in t.columns if c.startswith(SCORE_PREFIX)))
        parts.append(t)
    cols = ["cell", *_columns(list(param_keys), list(names))]
    rows = [r for t in parts for r in t.astype(object).to_dict("records")]
    df = pd.DataFrame(rows, columns=cols).astype(object)
    df = df.where(df.notna(), None)
    for k in param_keys:
        df[k] = df[k].infer_objects()
    return _typed(df, list(names))


def score_names(tidy: pd.DataFrame) -> list[str]:
    return [c[len(SCORE_PREFIX):] for c in tidy.columns if c.startswith(SCORE_PREFIX)]


def mean_ci(
    x: np.ndarray, *, n_boot: int, rng: np.random.Generator, ci: float = 0.95
) -> tuple[float | None, float | None, float | None]:
    """Mean of ``x`` and its percentile bootstrap CI (:func:`autointerp.score.bootstrap_ci`, drawing from
    ``rng``). The mean is None for an empty ``x``; the interval is None with fewer than 2 values."""
    found = bootstrap_ci(list(np.asarray(x, dtype=np.float64)), n=n_boot, level=ci, rng=rng)
    if found is None:
        return None, None, None
    return (found[0], None, None) if len(x) < 2 else found


def _defined(s: pd.Series) -> np.ndarray:
    return s.dropna().to_numpy(dtype=np.float64)


def aggregate_table(
    tidy: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Per cell and score: ``n`` (defined scores), ``n_undefined``, ``mean`` with ``ci_low``/``ci_high``,
    the shuffled baseline's ``baseline_mean`` (+ CI, ``n_baseline``), and ``vs_baseline``: the mean
    paired difference score - baseline over features where both are defined (+ CI). Undefined
    aggregates are ``<NA>`` with a ``reason``."""
    rng = np.random.default_rng(seed)
    param_cols = [c for c in tidy.columns if c not in _fixed_cols(tidy)]
    rows = []
    for cell, g in tidy.groupby("cell", sort=False):
        params = {c: g[c].iloc[0] for c in param_cols}
        for n in score_names(tidy):
            s, b = g[SCORE_PREFIX + n], g[BASELINE_PREFIX + n]
            x, xb = _defined(s), _defined(b)
            both = s.notna() & b.notna()
            d = (s[both] - b[both]).to_numpy(dtype=np.float64)
            m, lo, hi = mean_ci(x, n_boot=n_boot, rng=rng, ci=ci)
            bm, blo, bhi = mean_ci(xb, n_boot=n_boot, rng=rng, ci=ci)
            dm, dlo, dhi = mean_ci(d, n_boot=n_boot, rng=rng, ci=ci)
            reason = None
            if m is None:
                reason = "no feature has a defined score"
            elif lo is None:
                reason = "one defined score: no interval"
            rows.append({
                "cell": cell, **params, "score": n, "n": len(x), "n_undefined": int(s.isna().sum()),
                "mean": m, "ci_low": lo, "ci_high": hi,
                "baseline_mean": bm, "baseline_ci_low": blo, "baseline_ci_high": bhi, "n_baseline": len(xb),
                "vs_baseline": dm, "vs_baseline_ci_low": dlo, "vs_baseline_ci_high": dhi, "n_vs_baseline": len(d),
                "reason": reason,
            })
    df = pd.DataFrame(rows)
    return _nullable(df)


def paired_table(
    tidy: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Per score and pair of cells (a, b) in sweep order: ``mean_diff`` = mean over features scored
    (defined) in both of score(a) - score(b), a bootstrap CI over features, and ``n``."""
    rng = np.random.default_rng(seed + 1)
    cells = list(dict.fromkeys(tidy["cell"].tolist()))
    rows = []
    for n in score_names(tidy):
        wide = tidy.pivot_table(index="feature", columns="cell", values=SCORE_PREFIX + n, aggfunc="first", dropna=False)
        for a, b in itertools.combinations(cells, 2):
            if a not in wide or b not in wide:
                d = np.empty(0)
            else:
                both = wide[a].notna() & wide[b].notna()
                d = (wide[a][both] - wide[b][both]).to_numpy(dtype=np.float64)
            m, lo, hi = mean_ci(d, n_boot=n_boot, rng=rng, ci=ci)
            reason = None
            if m is None:
                reason = "no feature scored in both cells"
            elif lo is None:
                reason = "one feature scored in both: no interval"
            rows.append({
                "score": n, "cell_a": a, "cell_b": b, "n": len(d), "mean_diff": m, "ci_low": lo, "ci_high": hi,
                "reason": reason,
            })
    cols = ["score", "cell_a", "cell_b", "n", "mean_diff", "ci_low", "ci_high", "reason"]
    return _nullable(pd.DataFrame(rows, columns=cols))


def _fixed_cols(tidy: pd.DataFrame) -> set[str]:
    fixed = {"cell", "feature", "index", "label", "frequency", "max"}
    return fixed | {c for c in tidy.columns if c.startswith((SCORE_PREFIX, BASELINE_PREFIX, REASON_PREFIX))}


def _nullable(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns holding None as nullable Float64 (shown as <NA>, never NaN-as-a-number)."""
    for c in df.columns:
        if c in ("mean", "ci_low", "ci_high", "mean_diff") or c.startswith(("baseline_", "vs_baseline")):
            df[c] = pd.array([None if v is None or pd.isna(v) else float(v) for v in df[c]], dtype="Float64")
        elif c in ("reason", "cell", "cell_a", "cell_b", "score"):
            df[c] = df[c].astype("string")
    return df


USAGE_COLUMNS = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd", "cost_reason")


def usage_table(sweep_dir: Path, cells: Sequence[Cell] | None = None) -> pd.DataFrame:
    """One row per cell that has run: ``cell``, the grid params, then the LLM usage of its ``usage.json``
    (all roles): requests sent, cache hits, tokens, and cost in USD (None when a spec has no price, with
    ``cost_reason``). Cells share one LLM cache, so a later cell may answer from an earlier one's requests."""
    if cells is None:
        _, cells = read_index(sweep_dir)
    rows: list[dict[str, Any]] = []
    param_keys: dict[str, None] = {}
    for cell in cells:
        usage = load_run_usage(cell_dir(sweep_dir, cell))
        if not usage:
            continue
        total = dict(usage.get("total") or {})
        param_keys.update(dict.fromkeys(cell.params))
        row: dict[str, Any] = {"cell": cell.name, **{k: _param_value(v) for k, v in cell.params.items()}}
        row.update({k: total.get(k) for k in USAGE_COLUMNS[:-1]})
        row["cost_reason"] = usage.get("cost_reason")
        rows.append(row)
    return pd.DataFrame(rows, columns=["cell", *param_keys, *USAGE_COLUMNS]).astype(object)


@dataclass
class SweepTables:
    tidy: pd.DataFrame
    aggregate: pd.DataFrame
    paired: pd.DataFrame
    usage: pd.DataFrame
    """LLM usage and cost per cell (:func:`usage_table`)."""


def write_tables(sweep_dir: Path, spec: SweepSpec | None = None, cells: Sequence[Cell] | None = None) -> SweepTables:
    """Build and save tidy.parquet, aggregate.parquet/.csv, paired.parquet/.csv and usage.csv into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    if spec is None or cells is None:
        spec, cells = read_index(sweep_dir)
    tidy = tidy_table(sweep_dir, cells)
    agg = aggregate_table(tidy, n_boot=spec.n_boot, seed=spec.seed, ci=spec.ci)
    paired = paired_table(tidy, n_boot=spec.n_boot, seed=spec.seed, ci=spec.ci)
    usage = usage_table(sweep_dir, cells)
    tidy.to_parquet(sweep_dir / "tidy.parquet", index=False)
    for name, df in (("aggregate", agg), ("paired", paired)):
        df.to_parquet(sweep_dir / f"{name}.parquet", index=False)
        atomic_write_text(sweep_dir / f"{name}.csv", df.to_csv(index=False))
    atomic_write_text(sweep_dir / "usage.csv", usage.to_csv(index=False))
    return SweepTables(tidy, agg, paired, usage)


def read_tables(sweep_dir: Path) -> SweepTables:
    """Read the tables a sweep wrote; rebuild them from the cells when missing or older than the cells'
    files (e.g. after an interrupted or extended sweep)."""
    sweep_dir = Path(sweep_dir)
    tables = [sweep_dir / f"{n}.parquet" for n in ("tidy", "aggregate", "paired")] + [sweep_dir / "usage.csv"]
    if not all(t.exists() for t in tables):
        return write_tables(sweep_dir)
    built = min(t.stat().st_mtime for t in tables)
    _, cells = read_index(sweep_dir)
    sources = [sweep_dir / SWEEP_INDEX] + [
        cell_dir(sweep_dir, c) / f for c in cells for f in ("scores.jsonl", "explanations.jsonl", "usage.jsonl")
    ]
    if any(p.exists() and p.stat().st_mtime > built for p in sources):
        return write_tables(sweep_dir)
    tidy, agg, paired = (pd.read_parquet(sweep_dir / f"{n}.parquet") for n in ("tidy", "aggregate", "paired"))
    return SweepTables(tidy, agg, paired, usage_table(sweep_dir, cells))
