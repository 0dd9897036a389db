"""Sweeps: spec parsing, grid expansion, tidy/aggregate/paired tables, plots, running via the pipeline."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_llm import FakeLLM, synthetic_record

from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients
from autointerp.plots import cell_label, plot_sweep
from autointerp.records import FeatureRecord
from autointerp.report.synthetic import write_synthetic_run
from autointerp.rundir import append_jsonl
from autointerp.sweep import (
    Cell,
    PipelineRunner,
    SweepSpec,
    cell_dir,
    check_cache_settings,
    expand_grid,
    explain_settings,
    load_spec,
    read_index,
    run_sweep,
    sample_once,
    spec_from_dict,
    write_index,
)
from autointerp.sweep_tables import aggregate_table, mean_ci, read_tables, tidy_table, write_tables

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep.yaml"


def label_chat(req: ChatRequest) -> str:
    """Explainer: name the most frequent highlighted / max-activation token. Judges are not used here."""
    last = req.messages[-1].content
    marked = re.findall(r"^(.*)\t10$", last, re.M) + re.findall(r"<<(.*?)>>", last)
    words = [w.strip() for w in marked if w.strip()]
    return f"Explanation: {Counter(words).most_common(1)[0][0]} tokens" if words else "Explanation: nothing"


def _synthetic_sweep(root: Path, n_features: int = 12) -> tuple[SweepSpec, list[Cell]]:
    spec = spec_from_dict({"name": "t", "cache_run": "x", "grid": {"explainer": ["a", "b"], "n_top_examples": [5, 10]},
                           "n_boot": 500})
    cells = expand_grid(spec)
    for k, c in enumerate(cells):
        write_synthetic_run(cell_dir(root, c), n_features=n_features, seed=k, quality=0.3 + 0.2 * k)
    write_index(root, spec, cells)
    return spec, cells


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"gird": {}}, "unknown key"),
        ({"grid": {"n_top_examples": 5}}, "non-empty list"),
        ({"grid": {"n_top_examples": []}}, "non-empty list"),
        ({"base": {"cot": True}, "grid": {"cot": [True, False]}}, "both"),
        ({"cache_run": "a", "cache": {"tokens": 10}}, "not both"),
        ({"features": 5}, "list of feature indices"),
        ({"features": "0-x"}, "bad feature range"),
        ({"features": "random:3,k=2"}, "random:25"),
        ({"features": " "}, "empty"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_specs(raw: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        spec_from_dict(raw, "s.yaml")  # type: ignore[arg-type]


def test_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("grid: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(p)
    with pytest.raises(UserError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_expand_grid_names_and_validation() -> None:
    spec = spec_from_dict({
        "base": {"cot": False},
        "grid": {
            "explainer": ["local:qwen2.5-coder-1.5b", "openai:gpt-4o-mini"],
            "scorers": [["simulation"], ["simulation", "detection"]],
        },
    })
    cells = expand_grid(spec, explain_settings())
    assert len(cells) == 4 and len({c.name for c in cells}) == 4
    assert cells[0].config == {"cot": False, "explainer": "local:qwen2.5-coder-1.5b", "scorers": ["simulation"]}
    assert cells[0].params == {"explainer": "local:qwen2.5-coder-1.5b", "scorers": ["simulation"]}
    assert cells[0].name.startswith("local_qwen2.5_coder_1.5b-simulation-")  # "-" separates values
    assert cell_label(cells[0].name) == "local_qwen2.5_coder_1.5b-simulation"
    assert [c.name for c in expand_grid(spec)] == [c.name for c in cells], "names are stable"
    other = spec_from_dict({**{"base": spec.base, "grid": spec.grid}, "features": [1, 2]})
    assert not {c.name for c in expand_grid(other)} & {c.name for c in cells}, "another feature set: new cells"
    with pytest.raises(UserError, match=r"unknown explain setting.*n_exmaples"):
        expand_grid(spec_from_dict({"grid": {"n_exmaples": [1, 2]}}), explain_settings())


def test_mean_ci_has_no_interval_below_two_values_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    assert mean_ci(np.array([]), n_boot=100, rng=rng) == (None, None, None)
    assert mean_ci(np.array([0.4]), n_boot=100, rng=rng) == (0.4, None, None)
    x = np.random.default_rng(1).normal(0.5, 0.1, 200)
    m, lo, hi = mean_ci(x, n_boot=1000, rng=np.random.default_rng(2))
    assert m is not None and lo is not None and hi is not None
    assert lo < m < hi and hi - lo < 0.06 and abs(m - 0.5) < 0.03
    again = mean_ci(x, n_boot=1000, rng=np.random.default_rng(2))
    assert again == (m, lo, hi), "seeded: reproducible"


def test_tables_from_cells(tmp_path: Path) -> None:
    _, cells = _synthetic_sweep(tmp_path)
    tables = write_tables(tmp_path)
    tidy = tables.tidy
    assert len(tidy) == 4 * 12
    assert {"cell", "explainer", "n_top_examples", "feature", "label", "frequency", "score_correlation",
            "baseline_correlation", "reason_correlation", "score_detection"} <= set(tidy.columns)
    # Feature 1's correlation is undefined in every cell: <NA> with its reason, never a number.
    undef = tidy[tidy["index"] == 1]
    assert undef["score_correlation"].isna().all()
    assert (undef["reason_correlation"] == "true activations are constant over the scored records").all()
    assert tidy[tidy["index"] != 1]["score_correlation"].notna().all()

    agg = tables.aggregate
    corr = agg[agg["score"] == "correlation"].set_index("cell")
    assert (corr["n"] == 11).all() and (corr["n_undefined"] == 1).all()
    assert (corr["ci_low"] <= corr["mean"]).all() and (corr["mean"] <= corr["ci_high"]).all()
    assert (corr["vs_baseline"] > 0).all(), "synthetic explanations beat the shuffled baseline"
    # Cells were written with increasing quality: the mean rises along the sweep order.
    means = [float(corr.loc[c.name, "mean"]) for c in cells]
    assert means == sorted(means)

    paired = tables.paired
    assert len(paired) == 2 * 6  # 2 scores x C(4, 2) pairs
    first = paired[(paired["score"] == "correlation") & (paired["cell_a"] == cells[0].name)
                   & (paired["cell_b"] == cells[3].name)].iloc[0]
    assert first["n"] == 11 and first["mean_diff"] < 0 and first["ci_high"] < 0
    manual = (tidy[tidy["cell"] == cells[0].name].set_index("feature")["score_correlation"]
              - tidy[tidy["cell"] == cells[3].name].set_index("feature")["score_correlation"]).dropna().mean()
    assert float(first["mean_diff"]) == pytest.approx(float(manual))

    # Saved files round-trip, keeping undefined values undefined.
    back = pd.read_parquet(tmp_path / "tidy.parquet")
    assert back["score_correlation"].isna().sum() == 4
    assert (tmp_path / "aggregate.csv").read_text().startswith("cell,")
    assert (tmp_path / "paired.csv").exists()
    assert read_index(tmp_path)[1] == cells

    # Tables older than a cell's scores are rebuilt on read.
    assert len(read_tables(tmp_path).tidy) == 48
    extra = cell_dir(tmp_path, cells[0]) / "scores.jsonl"
    future = time.time() + 5
    os.utime(extra, (future, future))
    (tmp_path / "tidy.parquet").write_bytes(b"stale")
    assert len(read_tables(tmp_path).tidy) == 48


def test_aggregate_all_undefined() -> None:
    tidy = pd.DataFrame({
        "cell": ["c1", "c1"], "feature": ["f:0", "f:1"], "index": [0, 1], "label": ["x", "y"],
        "frequency": pd.array([0.1, 0.2], dtype="Float64"), "max": pd.array([1.0, 2.0], dtype="Float64"),
        "score_correlation": pd.array([None, None], dtype="Float64"),
        "baseline_correlation": pd.array([0.1, None], dtype="Float64"),
        "reason_correlation": ["constant", "constant"],
    })
    row = aggregate_table(tidy, n_boot=50).iloc[0]
    assert row["n"] == 0 and row["n_undefined"] == 2
    assert pd.isna(row["mean"]) and row["reason"] == "no feature has a defined score"
    assert row["baseline_mean"] == pytest.approx(0.1) and pd.isna(row["baseline_ci_low"])


def test_plots(tmp_path: Path) -> None:
    _synthetic_sweep(tmp_path, n_features=8)
    paths = plot_sweep(tmp_path, scores=["correlation"])
    assert {p.name for p in paths} == {
        f"{kind}_correlation.{ext}" for kind in ("distributions", "frequency", "comparison") for ext in ("png", "svg")
    }
    for p in paths:
        assert p.stat().st_size > 1000
    assert (tmp_path / "plots" / "comparison_correlation.svg").read_text().lstrip().startswith("<?xml")


class _FakeRunner(PipelineRunner):
    """The real pipeline runner with a fake LLM in every role; counts cells run."""

    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeLLM(spec="local:fake", chat_fn=label_chat)
        self.ran: list[str] = []

    def clients_for(self, config: object) -> Clients:
        return Clients(self.fake, self.fake, self.fake)

    async def __call__(self, cell: Cell, path: Path, records: list[FeatureRecord]) -> None:
        self.ran.append(cell.name)
        await super().__call__(cell, path, records)


async def test_run_sweep_with_pipeline_and_resume(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{}")
    append_jsonl(cache / "records.jsonl",
                 [synthetic_record(i, [" cat", " dog", " bird"][i % 3]).to_json() for i in range(4)])
    spec = spec_from_dict({
        "name": "fake", "cache_run": str(cache), "features": [0, 1, 2],
        "base": {"max_records_per_split": 2, "scorers": ["simulation"]},
        "grid": {"n_top_examples": [2, 4], "explainer_kind": ["token_activation_pair", "highlighted"]},
        "n_boot": 200,
    })
    out = tmp_path / "sweep"
    runner = _FakeRunner()
    events: list[str] = []
    cells = await run_sweep(spec, out, runner, progress=lambda e: events.append(e.kind), allowed=explain_settings())
    assert len(runner.ran) == 4 and events[0] == "start" and events[-1] == "done"
    tidy = tidy_table(out)
    assert len(tidy) == 4 * 3 and set(tidy["feature"]) == {f"toy/L0/mlp_neurons:{i}" for i in range(3)}
    assert tidy["score_correlation"].notna().all() and tidy["baseline_correlation"].notna().all()
    assert (tidy["score_correlation"] > tidy["baseline_correlation"]).mean() > 0.5
    assert (out / "aggregate.parquet").exists() and (out / "paired.csv").exists()
    usage = read_tables(out).usage  # one row per cell, from each cell's usage.json
    assert list(usage["cell"]) == [c.name for c in cells] and (usage["requests"] > 0).all()
    assert set(usage.columns) >= {"n_top_examples", "explainer_kind", "cost_usd", "cost_reason"}
    assert (usage["cost_usd"] == 0.0).all() and usage["cost_reason"].isna().all()  # local:* is priced at 0
    assert (out / "usage.csv").read_text().startswith("cell,")

    # Rerun: every cell is finished and skipped; a cell whose run stopped half way is resumed.
    runner2 = _FakeRunner()
    await run_sweep(spec, out, runner2, allowed=explain_settings())
    assert runner2.ran == []
    (cell_dir(out, cells[1]) / "scores.jsonl").unlink()
    runner3 = _FakeRunner()
    await run_sweep(spec, out, runner3, allowed=explain_settings())
    assert runner3.ran == [cells[1].name]
    assert len(tidy_table(out)) == 12


async def test_run_sweep_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no `sample_run`"):
        await run_sweep(spec_from_dict({"grid": {"cot": [True]}}), tmp_path / "s", _FakeRunner())
    cache = tmp_path / "cache"
    cache.mkdir()
    append_jsonl(cache / "records.jsonl", [synthetic_record(0).to_json()])
    with pytest.raises(UserError, match="feature\\(s\\) 7 are not in"):
        await run_sweep(spec_from_dict({"cache_run": str(cache), "features": [0, 7]}), tmp_path / "s", _FakeRunner())
    # The same as ranges in a string, from a run that holds only records.jsonl (no records/meta.json).
    with pytest.raises(UserError, match="feature\\(s\\) 7 are not in"):
        await run_sweep(spec_from_dict({"cache_run": str(cache), "features": "0,7"}), tmp_path / "s", _FakeRunner())
    rule = spec_from_dict({"cache_run": str(cache), "features": "random:1"})
    with pytest.raises(UserError, match=r"no records/stats\.json"):
        await run_sweep(rule, tmp_path / "s", _FakeRunner())


def test_example_sweep_file_is_valid() -> None:
    spec = load_spec(EXAMPLE)
    cells = expand_grid(spec, explain_settings())
    assert len(cells) >= 2
    assert check_cache_settings(spec.sample) == "gemma3-270m/L6/mlp_neurons"


def test_cli_plot_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autointerp.cli import main

    _synthetic_sweep(tmp_path / "sw", n_features=6)
    main(["plot", str(tmp_path / "sw"), "--scores", "detection", "--out", str(tmp_path / "p")])
    assert (tmp_path / "p" / "comparison_detection.png").exists()
    assert not (tmp_path / "p" / "comparison_correlation.png").exists()
    assert "Paired differences" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "sw")])
    assert e.value.code == 2
    assert "is a sweep, not a run" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache_run: x\ngrid:\n  n_exmaples: [1, 2]\n")
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(bad), "--sweep-dir", str(tmp_path / "out")])
    assert e.value.code == 2


def test_cache_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown sample setting"):
        sample_once({"model": "gemma3-270m", "hook": "L6/mlp_neurons", "tokenz": 5}, None, tmp_path / "c")
    with pytest.raises(UserError, match="needs `sae"):
        sample_once({"tokens": 1000}, None, tmp_path / "c")


async def test_sweep_features_rule_samples_every_feature_then_explains_the_drawn_ones(
    tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path
) -> None:
    from autointerp.record_store import load_records_meta
    from autointerp.sampling import choose_features

    spec = spec_from_dict({
        "sample": {"model": str(tiny_model_dir), "hook": "L1/mlp_neurons", "corpus": str(tiny_corpus_file),
                   "tokens": 400, "window": 16, "threads": 1},
        "features": "random:3,min=3,seed=2",
        "base": {"max_records_per_split": 2, "scorers": ["simulation"], "baseline": False},
        "grid": {"n_top_examples": [2]},
        "n_boot": 100,
    }, "s.yaml")
    seen: list[list[int]] = []

    class Runner(_FakeRunner):
        async def __call__(self, cell: Cell, path: Path, records: list[FeatureRecord]) -> None:
            seen.append([r.id.index for r in records])
            await super().__call__(cell, path, records)

    out = tmp_path / "sweep"
    await run_sweep(spec, out, Runner(), allowed=explain_settings())
    meta = load_records_meta(out / "sample")
    assert meta["config"]["features"] is None and len(meta["features"]) == 48  # every one of d_mlp, not a guess
    drawn = choose_features(out / "sample", "random:3,min=3,seed=2")
    assert seen == [drawn] and len(set(tidy_table(out)["feature"])) == 3
    # ranges work as on the command line; a rule needs a sample run's statistics
    assert spec_from_dict({"features": "0-2,7"}).features == "0-2,7"
    cache = tmp_path / "cache"
    cache.mkdir()
    append_jsonl(cache / "records.jsonl", [synthetic_record(i).to_json() for i in range(3)])
    with pytest.raises(UserError, match=r"no records/stats\.json"):
        await run_sweep(spec_from_dict({"cache_run": str(cache), "features": "random:2"}), tmp_path / "s2", Runner())
