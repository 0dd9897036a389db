"""Scoring sweeps: run a grid of explain configurations on one fixed feature set, then compare them.

A sweep file (YAML) names the features, where their sampled records come from, the settings shared by
every cell (``base``) and a grid (``grid``: setting -> list of values). Each combination of grid values
is one *cell*: one explain configuration, run into its own run directory under the sweep directory::

    SWEEP_DIR/
      sweep.json                  the spec and the list of cells (name, params, full config)
      cells/<name>-<hash>/        one run directory per cell (resumable; a finished cell is skipped)
      tidy.parquet                one row per (feature, cell): params, label, each score and its baseline
      aggregate.parquet/.csv      per cell and score: mean with bootstrap CI, baseline mean, vs baseline
      paired.parquet/.csv         per score and pair of cells: mean paired difference, bootstrap CI, n
      plots/*.png, *.svg          see autointerp.plots

Every cell reads the same sampled records (one sampling run), and all cells share the LLM response
cache, so requests repeated across cells cost nothing. Undefined scores stay undefined (``<NA>`` with a
``reason_<score>`` column) and are left out of means, which count them in ``n_undefined``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autointerp.config import config_to_dict
from autointerp.errors import UserError
from autointerp.records import FeatureId, FeatureRecord
from autointerp.rundir import (
    RECORDS,
    atomic_write_json,
    atomic_write_text,
    features_scored,
    load_run,
    load_run_usage,
    read_feature_records,
    short_hash,
)

log = logging.getLogger(__name__)

SWEEP_INDEX = "sweep.json"
SCORE_PREFIX = "score_"
BASELINE_PREFIX = "baseline_"
REASON_PREFIX = "reason_"


# ---------------------------------------------------------------------------------------------------
# The sweep specification
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A sweep file, parsed. Every key of ``base`` and ``grid`` is a field of the explain config."""

    name: str = "sweep"
    """Name of the sweep (used in titles and the default sweep directory)."""
    sample_run: str | None = None
    """Run directory of a finished `autointerp sample` run whose records every cell explains (old key: cache_run)."""
    sample: dict[str, Any] = field(default_factory=dict)
    """Instead of sample_run: sampling settings (model, hook, sae, tokens, ...) sampled once into SWEEP_DIR/sample
    (old key: cache)."""
    features: list[int] | None = None
    """Indices of the features to explain (the same set in every cell); None = every feature in the sample run."""
    base: dict[str, Any] = field(default_factory=dict)
    """Explain settings shared by every cell."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Explain settings that vary: each combination of values is one cell."""
    n_boot: int = 2000
    """Bootstrap resamples for confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    ci: float = 0.95
    """Confidence level of the intervals."""


_OLD_KEYS = {"cache_run": "sample_run", "cache": "sample"}
"""Old sweep-file keys, still read: the sampling stage used to be called ``cache``."""


def load_spec(path: Path) -> SweepSpec:
    """Read a sweep YAML file; a bad file raises UserError naming the key and the fix."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read sweep file {path}: {e.strerror}; pass an existing YAML file") from e
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from e
    return spec_from_dict(raw or {}, where=str(path))


def spec_from_dict(raw: dict[str, Any], where: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: the sweep file must be a mapping of keys (name, sample_run, base, grid, ...)")
    raw = dict(raw)
    for old, new in _OLD_KEYS.items():
        if old in raw:
            if new in raw:
                raise UserError(f"{where}: `{old}` is the old name of `{new}`; give only `{new}`")
            raw[new] = raw.pop(old)
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(sorted(known))}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(
            f"{where}: `grid` must map each setting to a non-empty list of values, e.g. `n_examples: [5, 10]`"
        )
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise UserError(f"{where}: `base` must be a mapping of explain settings")
    overlap = sorted(set(base) & set(grid))
    if overlap:
        raise UserError(f"{where}: {', '.join(overlap)} set in both `base` and `grid`; keep each in one place")
    if raw.get("sample_run") and raw.get("sample"):
        raise UserError(
            f"{where}: give either `sample_run` (an existing sample run) or `sample` (settings), not both"
        )
    feats = raw.get("features")
    if feats is not None and (not isinstance(feats, list) or not all(isinstance(i, int) for i in feats)):
        raise UserError(f"{where}: `features` must be a list of feature indices, e.g. [0, 5, 17]")
    return SweepSpec(
        name=str(raw.get("name", "sweep")),
        sample_run=None if raw.get("sample_run") is None else str(raw["sample_run"]),
        sample=dict(raw.get("sample") or {}),
        features=None if feats is None else [int(i) for i in feats],
        base=dict(base),
        grid={str(k): list(v) for k, v in grid.items()},
        n_boot=int(raw.get("n_boot", 2000)),
        seed=int(raw.get("seed", 0)),
        ci=float(raw.get("ci", 0.95)),
    )


# ---------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One combination of grid values."""

    name: str
    """Directory name: readable values + a short hash of config, features and sample (`n_top_examples_5-1a2b3c4d`)."""
    params: dict[str, Any]
    """The grid values of this cell (only the settings that vary)."""
    config: dict[str, Any]
    """The full explain settings (base + params)."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "config": self.config}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        return cls(str(d["name"]), dict(d["params"]), dict(d["config"]))


def _readable_param(key: str, value: Any) -> str:
    """A grid value for a cell name; numbers and booleans carry their setting's name (``n_top_examples_5``)."""
    if isinstance(value, (bool, int, float)):
        return _readable(f"{key}_{value}")
    return _readable(value)


def _readable(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = "+".join(_readable(v) for v in value)
    elif isinstance(value, dict):
        text = "+".join(f"{k}{_readable(v)}" for k, v in value.items())
    else:
        text = str(value).rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.+_]+", "_", text).strip("_")[:32] or "x"


def expand_grid(spec: SweepSpec, allowed: Sequence[str] | None = None) -> list[Cell]:
    """Every combination of the grid, as cells in a stable order. With ``allowed`` (the explain
    config's field names), unknown settings raise UserError."""
    if allowed is not None:
        bad = sorted((set(spec.base) | set(spec.grid)) - set(allowed))
        if bad:
            raise UserError(
                f"unknown explain setting(s) {', '.join(bad)} in the sweep; "
                f"valid settings: {', '.join(sorted(allowed))}"
            )
    keys = list(spec.grid)
    cells = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        params = dict(zip(keys, combo, strict=True))
        config = {**spec.base, **params}
        # The hash also covers the feature set and the sample, so changing either never reuses old cells.
        identity = {"config": config, "features": spec.features, "cache": spec.sample or spec.sample_run}
        digest = short_hash(json.dumps(identity, sort_keys=True, default=str))[:8]
        readable = "-".join(_readable_param(k, v) for k, v in params.items())[:60] or "base"
        cells.append(Cell(f"{readable}-{digest}", params, config))
    if len({c.name for c in cells}) != len(cells):
        raise UserError("the sweep grid repeats a combination of values; list each value once")
    return cells


def write_index(sweep_dir: Path, spec: SweepSpec, cells: Sequence[Cell]) -> None:
    """Write SWEEP_DIR/sweep.json (the spec and the cells), which the readers below use."""
    atomic_write_json(
        Path(sweep_dir) / SWEEP_INDEX,
        {"spec": dataclasses.asdict(spec), "cells": [c.to_json() for c in cells]},
    )


def read_index(sweep_dir: Path) -> tuple[SweepSpec, list[Cell]]:
    path = Path(sweep_dir) / SWEEP_INDEX
    if not path.exists():
        raise UserError(
            f"{sweep_dir} is not a sweep directory (no {SWEEP_INDEX}); pass the folder `autointerp sweep` wrote"
        )
    d = json.loads(path.read_text(encoding="utf-8"))
    return spec_from_dict(d["spec"], where=str(path)), [Cell.from_json(c) for c in d["cells"]]


def cell_dir(sweep_dir: Path, cell: Cell) -> Path:
    return Path(sweep_dir) / "cells" / cell.name


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------
@dataclass
class SweepEvent:
    """Progress of a sweep, for a progress bar. ``kind`` is "start", "cell_start", "feature",
    "cell_done", "cell_skipped" or "done"."""

    kind: str
    cell: Cell | None = None
    n_cells: int = 0
    n_features: int = 0


CellRunner = Callable[[Cell, Path, list[FeatureRecord]], Awaitable[None]]
"""Runs one cell: explain ``records`` with ``cell.config`` into the run directory given."""


def load_records(sample_run: Path, features: Sequence[int] | None) -> list[FeatureRecord]:
    """The sampled records of ``sample_run`` restricted to ``features`` (indices): a sample run
    (``records/`` written by the sampler) or an explain run directory (``records.jsonl``)."""
    sample_run = Path(sample_run).expanduser()
    if (sample_run / "records" / "meta.json").exists():
        from autointerp.record_store import load_feature_records

        return load_feature_records(sample_run, features)
    if not (sample_run / RECORDS).exists():
        raise UserError(
            f"{sample_run} holds no sampled records (records/ or records.jsonl); "
            "pass the run directory of a finished `autointerp sample`"
        )
    out = read_feature_records(sample_run, features)
    if features is not None:
        missing = sorted(set(features) - {r.id.index for r in out})
        if missing:
            raise UserError(
                f"feature(s) {', '.join(map(str, missing[:10]))} are not in {sample_run}; "
                "pick features the sample run sampled"
            )
    return out


_CACHE_KEYS = ("model", "hook", "sae", "corpus", "device", "dtype", "threads")


def check_cache_settings(cache: dict[str, Any]) -> str:
    """Check a sweep's ``sample`` settings (no model is loaded); returns the source address."""
    from autointerp.sampling import SamplingConfig

    sampling_keys = [f.name for f in dataclasses.fields(SamplingConfig) if f.name != "features"]
    unknown = sorted(set(cache) - set(_CACHE_KEYS) - set(sampling_keys))
    if unknown:
        raise UserError(
            f"unknown sample setting(s) {', '.join(unknown)}; use {', '.join([*_CACHE_KEYS, *sampling_keys])}"
        )
    if cache.get("sae"):
        return str(cache["sae"])
    if cache.get("model") and cache.get("hook"):
        return f"{cache['model']}/{cache['hook']}"
    raise UserError("the sweep's `sample` needs `sae: ADDRESS`, or `model:` with `hook:` (e.g. L6/mlp_neurons)")


def sample_once(cache: dict[str, Any], features: Sequence[int] | None, out: Path) -> Path:
    """Sample the sweep's features once into ``out`` (resumable; every cell reads this one sample).

    ``cache`` (the sweep's ``sample`` settings) holds ``model`` + ``hook`` (neurons) or ``sae`` (an SAE
    address), optionally ``corpus`` (default wiki), ``device``, ``dtype``, ``threads``, and any sampling setting
    (tokens, window, n_top, ...)."""
    from autointerp.sampling import SamplingConfig, SamplingSetup, prepare_sampling

    check_cache_settings(cache)
    sampling_keys = [f.name for f in dataclasses.fields(SamplingConfig) if f.name != "features"]
    cfg = SamplingConfig(
        **{k: cache[k] for k in sampling_keys if k in cache},
        features=None if features is None else tuple(features),
    )
    setup = SamplingSetup(**{k: cache[k] for k in _CACHE_KEYS if k in cache})
    meta = out / "records" / "meta.json"
    if meta.exists():
        try:
            done = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            done = {}
        if done.get("config") == config_to_dict(cfg) and done.get("source") == setup.address()[1]:
            log.info("the sweep's sample in %s is complete; reusing it", out)
            return out
    job = prepare_sampling(setup, cfg)
    log.info("sampling %d tokens through %s into %s (once for every cell)", cfg.tokens, job.source.address, out)
    job.run(out)
    return out


def cell_finished(path: Path) -> bool:
    """True when the cell's run directory records a finished explain stage."""
    manifest = Path(path) / "manifest.json"
    if not manifest.exists():
        return False
    try:
        stages = json.loads(manifest.read_text(encoding="utf-8")).get("stages", {})
    except (OSError, json.JSONDecodeError):
        return False
    explain = stages.get("explain")
    return isinstance(explain, dict) and explain.get("status") == "done" and (Path(path) / "scores.jsonl").exists()


async def run_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    runner: CellRunner,
    *,
    records: list[FeatureRecord] | None = None,
    progress: Callable[[SweepEvent], None] | None = None,
    allowed: Sequence[str] | None = None,
) -> list[Cell]:
    """Run every cell of ``spec`` into ``sweep_dir`` (finished cells are skipped; a partial cell is
    handed to ``runner`` again, which resumes it), then write the tables. Returns the cells."""
    sweep_dir = Path(sweep_dir)
    cells = expand_grid(spec, allowed)
    if spec.sample:
        check_cache_settings(spec.sample)
    if records is None:
        if spec.sample:
            sample_run = sample_once(spec.sample, spec.features, sweep_dir / "sample")
            records = load_records(sample_run, spec.features)
        elif spec.sample_run:
            records = load_records(Path(spec.sample_run), spec.features)
        else:
            raise UserError(
                "the sweep names no `sample_run` (or `sample` settings); run `autointerp sample` first and set "
                "sample_run to its folder"
            )
    if not records:
        raise UserError("the sweep has no features to explain; check `features` and the sample run")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_index(sweep_dir, spec, cells)
    emit = progress or (lambda e: None)
    emit(SweepEvent("start", n_cells=len(cells), n_features=len(records)))
    for cell in cells:
        path = cell_dir(sweep_dir, cell)
        if cell_finished(path):
            log.info("cell %s is finished; skipping", cell.name)
            emit(SweepEvent("cell_skipped", cell, len(cells), len(records)))
            continue
        emit(SweepEvent("cell_start", cell, len(cells), len(records)))
        await runner(cell, path, records)
        emit(SweepEvent("cell_done", cell, len(cells), len(records)))
    write_tables(sweep_dir, spec, cells)
    emit(SweepEvent("done", n_cells=len(cells), n_features=len(records)))
    return cells


def explain_settings() -> list[str]:
    """Names of the explain settings a sweep may set (the fields of pipeline.ExplainConfig)."""
    from autointerp.pipeline import ExplainConfig

    return [f.name for f in dataclasses.fields(ExplainConfig)]


class PipelineRunner:
    """Runs a cell with :func:`autointerp.pipeline.run_explain`. LLM clients are built once per
    (spec, client settings) and shared by every cell, so a local model loads once per sweep. Call
    :meth:`aclose` at the end. ``poll_s``: how often feature progress is read from the cell's files."""

    def __init__(self, progress: Callable[[SweepEvent], None] | None = None, poll_s: float = 1.0) -> None:
        self._clients: dict[tuple[str, Any], Any] = {}
        self._progress = progress
        self._poll_s = poll_s

    def _client(self, spec: str, client_config: Any) -> Any:
        from autointerp.llm.factory import make_client

        key = (spec, client_config)
        if key not in self._clients:
            self._clients[key] = make_client(spec, client_config)
        return self._clients[key]

    def clients_for(self, config: Any) -> Any:
        from autointerp.pipeline import Clients

        def get(spec: str) -> Any:
            return self._client(spec, config.client_config())

        return Clients(get(config.explainer), get(config.simulator), get(config.judge_spec))

    async def __call__(self, cell: Cell, path: Path, records: list[FeatureRecord]) -> None:
        from autointerp.pipeline import ExplainConfig, run_explain

        config = ExplainConfig(**explain_config_dict(cell.config))
        task = asyncio.create_task(run_explain(config, path, records, self.clients_for(config)))
        if self._progress is not None:
            while not task.done():
                await asyncio.wait({task}, timeout=self._poll_s)
                self._progress(SweepEvent("feature", cell, n_features=features_scored(path)))
        await task

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()


def explain_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A cell's settings as ExplainConfig arguments: a YAML list given for a comma-list setting
    (e.g. ``scorers: [simulation, detection]``) becomes ``"simulation,detection"``."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in config.items()}


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


def bootstrap_mean_ci(
    x: np.ndarray, *, n_boot: int, rng: np.random.Generator, ci: float = 0.95
) -> tuple[float | None, float | None, float | None]:
    """Mean of ``x`` and a percentile bootstrap CI, resampling ``x`` with replacement. The mean is
    None for an empty ``x``; the interval is None with fewer than 2 values."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return None, None, None
    mean = float(x.mean())
    if n < 2:
        return mean, None, None
    chunk = max(1, 4_000_000 // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return mean, float(lo), float(hi)


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
            m, lo, hi = bootstrap_mean_ci(x, n_boot=n_boot, rng=rng, ci=ci)
            bm, blo, bhi = bootstrap_mean_ci(xb, n_boot=n_boot, rng=rng, ci=ci)
            dm, dlo, dhi = bootstrap_mean_ci(d, n_boot=n_boot, rng=rng, ci=ci)
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
            m, lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, rng=rng, ci=ci)
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
