"""Several sources in one forward pass: each gets the records a one-source run gives, the model runs once per
batch, shards of it merge exactly, feature ids keep their source, and an unknown layer is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autointerp.cli import main
from autointerp.corpus import Shard, load_corpus
from autointerp.hooks import HookPoint
from autointerp.record_store import load_feature_records, read_arrays
from autointerp.sampling import SamplingConfig, merge_shard_runs, run_sampling, source_dirs, source_slug
from autointerp.sources.neurons import NeuronSource
from autointerp.sources.sae import random_sae

CFG = SamplingConfig(tokens=1500, window=16, batch_size=4, n_top=10, n_train=4, n_valid=2, n_test_top=3,
                     n_quantile_bins=3, per_quantile_bin=2, n_random=6, checkpoint_every=3)


def _sources(subject: Any) -> list[Any]:
    h0, h1 = HookPoint(0, "mlp_neurons"), HookPoint(1, "mlp_neurons")
    return [NeuronSource(subject.name, h0, subject.hook_dim(h0)), NeuronSource(subject.name, h1, subject.hook_dim(h1)),
            random_sae(HookPoint(1, "resid_post"), subject.d_model, 64, activation="topk", k=4, seed=3)]


def _windows(subject: Any, corpus: Path) -> Any:
    return load_corpus(str(corpus), subject.tokenizer, CFG.window, max_tokens=CFG.tokens, seed=CFG.seed)


def _arrays(run: Path) -> dict[str, Any]:
    out: dict[str, Any] = dict(read_arrays(run))
    out["stats"] = json.loads((run / "records" / "stats.json").read_text())
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k == "stats":
            assert a[k] == b[k]
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_one_pass_over_three_sources_equals_three_single_runs(tiny_llama: Any, tiny_corpus_file: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _sources(tiny_llama)
    calls = {"n": 0}
    real_run = tiny_llama.run

    def counting_run(ids: Any, hooks: Any) -> Any:
        calls["n"] += 1
        return real_run(ids, hooks)

    monkeypatch.setattr(tiny_llama, "run", counting_run)
    res = run_sampling(tiny_llama, sources, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "multi")
    n_batches = -(-res.n_windows // CFG.batch_size)
    assert calls["n"] == n_batches  # one forward pass per batch for all three sources
    assert res.n_features == sum(s.n_features for s in sources)
    dirs = source_dirs(tmp_path / "multi")
    assert [d.name for d in dirs] == sorted(source_slug(s.address) for s in sources)
    for s in sources:
        single = tmp_path / f"single-{source_slug(s.address)}"
        run_sampling(tiny_llama, s, _windows(tiny_llama, tiny_corpus_file), CFG, single)
        both = tmp_path / "multi" / "sources" / source_slug(s.address)
        _same(_arrays(single), _arrays(both))
        recs = load_feature_records(both, [0])
        assert recs[0].id.source == s.address  # feature ids keep their source


def test_multi_source_shards_merge_exactly(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    sources = _sources(tiny_llama)
    run_sampling(tiny_llama, sources, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "full")
    parts = [tmp_path / f"s{i}" for i in range(2)]
    for i, p in enumerate(parts):
        run_sampling(tiny_llama, sources, _windows(tiny_llama, tiny_corpus_file), CFG, p, shard=Shard(i, 2))
    merged = merge_shard_runs(parts, tmp_path / "merged")
    assert merged.n_features == sum(s.n_features for s in sources)
    for a, b in zip(source_dirs(tmp_path / "full"), source_dirs(tmp_path / "merged"), strict=True):
        assert a.name == b.name
        x, y = _arrays(a), _arrays(b)
        x.pop("stats")
        y.pop("stats")
        _same(x, y)


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_sample_cli_hook_list_and_an_unknown_layer(tiny_model_dir: Path, tiny_corpus_file: Path,
                                                  tmp_path: Path) -> None:
    base = ["sample", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus_file), "--tokens", "500",
            "--window", "16", "--batch-size", "4", "--n-top", "10", "--n-train", "4", "--n-valid", "2",
            "--n-test-top", "3", "--threads", "1", "--features", "0-5"]
    assert _cli([*base, "--hook", "L0/mlp_neurons,L9/mlp_neurons", "--run-dir", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert _cli([*base, "--hook", "L0/mlp_neurons,L1/mlp_neurons", "--run-dir", str(tmp_path / "ok")]) == 0
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["source"] == f"{tiny_model_dir}/L0/mlp_neurons,{tiny_model_dir}/L1/mlp_neurons"
    from autointerp.cli.commands_pipeline import _load_sample_run

    recs = _load_sample_run(tmp_path / "ok", "0-1")
    assert sorted(str(r.id) for r in recs) == sorted(
        f"{tiny_model_dir}/L{layer}/mlp_neurons:{f}" for layer in (0, 1) for f in (0, 1)
    )
