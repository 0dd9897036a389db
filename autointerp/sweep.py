"""Scoring sweeps: run a grid of explain configurations on one fixed feature set (this module: the sweep
file, the grid of cells, running them); the tables and statistics that compare the cells are in
:mod:`autointerp.sweep_tables`.

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

from autointerp.config import config_to_dict
from autointerp.errors import UserError
from autointerp.records import FeatureRecord
from autointerp.rundir import (
    RECORDS,
    atomic_write_json,
    features_scored,
    read_feature_records,
    short_hash,
)

log = logging.getLogger(__name__)

SWEEP_INDEX = "sweep.json"


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
    features: list[int] | str | None = None
    """The features to explain (the same set in every cell): a list of indices, a string as `--features` takes
    (ranges '0-99,200', or the rule 'random:N[,min=K][,seed=S]', drawn among the sampled features that fired on
    at least K tokens), or None for every feature in the sample run."""
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
    if isinstance(feats, str):
        from autointerp.sampling import sampling_features

        if not feats.strip():
            raise UserError(f"{where}: `features` is empty; list feature indices, give ranges, or remove the key")

        try:
            sampling_features(feats)  # parses ranges and checks a random: rule
        except UserError as e:
            raise UserError(f"{where}: `features`: {e}") from None
    elif feats is not None and (not isinstance(feats, list) or not all(isinstance(i, int) for i in feats)):
        raise UserError(
            f"{where}: `features` must be a list of feature indices, e.g. [0, 5, 17], ranges such as '0-99,200', "
            "or a rule such as 'random:25,min=20,seed=0'"
        )
    return SweepSpec(
        name=str(raw.get("name", "sweep")),
        sample_run=None if raw.get("sample_run") is None else str(raw["sample_run"]),
        sample=dict(raw.get("sample") or {}),
        features=feats.strip() if isinstance(feats, str) else None if feats is None else [int(i) for i in feats],
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


def _tracked_features(features: list[int] | str | None) -> Sequence[int] | None:
    """The features the sweep's sampling pass must track: a list or ranges as given; all (None) for a rule."""
    if isinstance(features, str):
        from autointerp.sampling import sampling_features

        return sampling_features(features)
    return features


def _chosen_features(features: list[int] | str | None, sample_run: Path) -> list[int] | None:
    """The feature indices the sweep explains, once ``sample_run`` is sampled (a random: rule draws here)."""
    if not isinstance(features, str):
        return features
    from autointerp.sampling import choose_features

    return choose_features(sample_run, features)


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
            sample_run = sample_once(spec.sample, _tracked_features(spec.features), sweep_dir / "sample")
        elif spec.sample_run:
            sample_run = Path(spec.sample_run).expanduser()
        else:
            raise UserError(
                "the sweep names no `sample_run` (or `sample` settings); run `autointerp sample` first and set "
                "sample_run to its folder"
            )
        records = load_records(sample_run, _chosen_features(spec.features, sample_run))
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
    from autointerp.sweep_tables import write_tables

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
