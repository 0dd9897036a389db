"""Sharded sampling merges exactly: the records of n merged shards equal an unsharded run's, array for array;
`merge` refuses mixed, repeated or missing shards with one line (exit 2) and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autointerp.cli import main
from autointerp.corpus import Shard, load_corpus
from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.record_store import read_arrays
from autointerp.sampling import SamplingConfig, merge_partials, run_sampling
from autointerp.sources.neurons import NeuronSource
from autointerp.sources.sae import random_sae

CFG = SamplingConfig(tokens=2500, window=16, batch_size=4, n_top=10, n_train=4, n_valid=2, n_test_top=3,
                     n_quantile_bins=3, per_quantile_bin=2, n_random=6, checkpoint_every=2)


def _source(kind: str, subject: Any) -> Any:
    if kind == "neurons":
        hook = HookPoint(1, "mlp_neurons")
        return NeuronSource(subject.name, hook, subject.hook_dim(hook))
    hook = HookPoint(1, "resid_post")
    if kind == "dense-sae":
        return random_sae(hook, subject.d_model, 96, seed=2)
    return random_sae(hook, subject.d_model, 96, activation="topk", k=6, seed=2)


def _run(subject: Any, src: Any, corpus: Path, out: Path, shard: Shard | None = None) -> Any:
    windows = load_corpus(str(corpus), subject.tokenizer, CFG.window, max_tokens=CFG.tokens, seed=CFG.seed)
    return run_sampling(subject, src, windows, CFG, out, shard=shard)


def _files(run: Path) -> dict[str, Any]:
    out: dict[str, Any] = dict(read_arrays(run))
    out["vocab"] = json.loads((run / "records" / "vocab.json").read_text())
    return out


@pytest.mark.parametrize("kind", ["neurons", "dense-sae", "topk-sae"])
def test_merged_shards_equal_the_unsharded_run(kind: str, tiny_llama: Any, tiny_corpus_file: Path,
                                               tmp_path: Path) -> None:
    src = _source(kind, tiny_llama)
    full = _run(tiny_llama, src, tiny_corpus_file, tmp_path / "full")
    ref = _files(tmp_path / "full")
    ref_stats = json.loads((tmp_path / "full" / "records" / "stats.json").read_text())
    ref_meta = json.loads((tmp_path / "full" / "records" / "meta.json").read_text())
    for n in (1, 2, 3):
        parts = [tmp_path / f"n{n}-s{i}" for i in range(n)]
        results = [_run(tiny_llama, src, tiny_corpus_file, p, Shard(i, n)) for i, p in enumerate(parts)]
        assert sum(r.n_windows for r in results) == full.n_windows
        merged = merge_partials(parts[::-1], tmp_path / f"merged{n}")  # the order given does not matter
        assert (merged.n_tokens, merged.n_windows, merged.n_dead) == (full.n_tokens, full.n_windows, full.n_dead)
        got = _files(tmp_path / f"merged{n}")
        assert got.keys() == ref.keys()
        for k in ref:
            if k == "vocab":
                assert got[k] == ref[k]
            else:
                np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{n} shards: {k}")
        stats = json.loads((tmp_path / f"merged{n}" / "records" / "stats.json").read_text())
        for a, b in zip(stats, ref_stats, strict=True):
            assert (a["feature"], a["n_tokens"], a["frequency"], a["max"]) == (
                b["feature"], b["n_tokens"], b["frequency"], b["max"])
            assert a["mean"] == pytest.approx(b["mean"], rel=1e-12, abs=1e-15)  # float64 sums, another order
            assert a["quantile_edges"] == b["quantile_edges"]
        meta = json.loads((tmp_path / f"merged{n}" / "records" / "meta.json").read_text())
        assert meta["content_fingerprint"] == ref_meta["content_fingerprint"]


def test_a_finished_shard_is_not_redone(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    src = _source("neurons", tiny_llama)
    first = _run(tiny_llama, src, tiny_corpus_file, tmp_path / "s0", Shard(0, 2))
    again = _run(tiny_llama, src, tiny_corpus_file, tmp_path / "s0", Shard(0, 2))
    assert again.resumed and again.tokens_per_s is None and again.n_windows == first.n_windows


def _sample_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_bad_shard_and_merge_input_is_one_line_exit_2_and_writes_nothing(
    tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["sample", "--model", str(tiny_model_dir), "--hook", "L1/mlp_neurons", "--corpus", str(tiny_corpus_file),
            "--tokens", "600", "--window", "16", "--batch-size", "4", "--n-top", "10", "--n-train", "4",
            "--n-valid", "2", "--n-test-top", "3", "--threads", "1", "--features", "0-7"]
    for bad in ("3/2", "2/2", "-1/2", "a/b", "1"):
        assert _sample_cli([*base, "--shard", bad, "--run-dir", str(tmp_path / "bad")]) == 2
        assert not (tmp_path / "bad").exists()
    assert _sample_cli([*base, "--hook", "L9/mlp_neurons", "--shard", "0/2", "--run-dir", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    for i in range(3):
        assert _sample_cli([*base, "--shard", f"{i}/3", "--run-dir", str(tmp_path / f"s{i}")]) == 0
    assert _sample_cli([*base, "--seed", "1", "--shard", "0/3", "--run-dir", str(tmp_path / "seed1")]) == 0
    assert _sample_cli([*base, "--shard", "0/2", "--run-dir", str(tmp_path / "two")]) == 0
    capsys.readouterr()
    cases = [
        ([tmp_path / "s0", tmp_path / "s1"], "missing"),
        ([tmp_path / "s0", tmp_path / "s1", tmp_path / "s1", tmp_path / "s2"], "twice"),
        ([tmp_path / "seed1", tmp_path / "s1", tmp_path / "s2"], "another pass"),
        ([tmp_path / "two", tmp_path / "s1", tmp_path / "s2"], "shards of one run"),
        ([tmp_path / "nothing", tmp_path / "s1"], "no finished shard"),
    ]
    for parts, words in cases:
        assert _sample_cli(["merge", *map(str, parts), "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) <= 2, err  # one message (rich may wrap a long line)
        assert not (tmp_path / "m").exists()
    assert _sample_cli(["merge", *(str(tmp_path / f"s{i}") for i in range(3)), "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["stages"]["sample"]["status"] == "done" and manifest["stages"]["sample"]["merged_shards"] == 3
    with pytest.raises(UserError):
        Shard.parse("3/2")
