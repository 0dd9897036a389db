"""The streaming sampler against brute force, sparse == dense, resume == uninterrupted, disjoint splits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autointerp.corpus import TokenWindows, load_corpus
from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.record_store import load_feature_records
from autointerp.records import SPLITS
from autointerp.sampling import (
    SamplingConfig,
    _State,
    parse_feature_ranges,
    run_sampling,
)
from autointerp.sources.base import DenseActs, TopKActs
from autointerp.sources.neurons import NeuronSource

HOOK = HookPoint(1, "mlp_neurons")
CFG = SamplingConfig(tokens=1500, window=16, batch_size=8, n_top=10, n_train=4, n_valid=2, n_test_top=3,
                     n_quantile_bins=3, per_quantile_bin=2, n_random=6, checkpoint_every=3)


def _windows(subject: Any, corpus: Path, cfg: SamplingConfig = CFG) -> TokenWindows:
    return load_corpus(str(corpus), subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=cfg.seed)


def _neurons(subject: Any) -> NeuronSource:
    return NeuronSource(subject.name, HOOK, subject.hook_dim(HOOK))


def _load_all(run: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted((run / "records").glob("*.npz")):
        with np.load(f) as z:
            out.update({f"{f.stem}/{k}": z[k] for k in z.files})
    return out


def test_parse_feature_ranges() -> None:
    assert parse_feature_ranges("0-3, 10,2,7-7") == [0, 1, 2, 3, 7, 10]
    for bad in ("5-2", "a-b", "", "-3"):
        with pytest.raises(UserError):
            parse_feature_ranges(bad)


def test_against_brute_force(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    cfg = SamplingConfig(**{**CFG.__dict__, "n_top": CFG.n_train + CFG.n_valid + CFG.n_test_top})
    windows = _windows(tiny_llama, tiny_corpus_file)
    res = run_sampling(tiny_llama, _neurons(tiny_llama), windows, cfg, tmp_path / "run")
    # brute force: every window through the model, dense [W, T, F]
    ids, masks, idx = [], [], []
    for b in windows.batches(64):
        ids.append(b.input_ids)
        masks.append(b.valid_mask())
        idx.append(b.index)
    x = torch.cat(ids)
    m = torch.cat(masks)
    acts = tiny_llama.run(x, [HOOK])[HOOK].float()
    assert res.n_tokens == int(m.sum()) and res.n_windows == len(x)
    valid = acts[m]  # [N, F]
    wmax = acts.masked_fill(~m[:, :, None], -np.inf).amax(1)  # [W, F]
    records = load_feature_records(tmp_path / "run")
    assert [r.id.index for r in records] == list(range(tiny_llama.d_mlp))
    for f, rec in enumerate(records):
        st = rec.stats
        assert st.n_tokens == valid.shape[0]
        assert st.frequency == pytest.approx(float((valid[:, f] > 0).double().mean()), abs=1e-9)
        assert st.max == pytest.approx(float(valid[:, f].max()), rel=1e-6)
        assert st.mean == pytest.approx(float(valid[:, f].double().mean()), rel=1e-5, abs=1e-9)
        fired = valid[:, f][valid[:, f] > 0]
        assert st.mean_active == pytest.approx(float(fired.double().mean()), rel=1e-5)
        top = rec.train + rec.valid + rec.test_top
        # all n_top kept windows are exported: they are exactly the firing windows with the largest max
        order = torch.argsort(wmax[:, f], descending=True)[: cfg.n_top]
        expected = {int(torch.cat(idx)[i]) for i in order if wmax[i, f] > 0}
        assert {r.window for r in top} == expected, f
        for r in top:
            w = int(r.window)
            row = (torch.cat(idx) == w).nonzero()[0, 0]
            n = int(m[row].sum())
            np.testing.assert_allclose(r.activations, acts[row, 1 : 1 + n, f].numpy(), rtol=1e-5, atol=1e-6)
            assert r.token_ids == x[row, 1 : 1 + n].tolist()
            assert r.tokens == [tiny_llama.tokenizer.decode([t]) for t in r.token_ids]
            assert r.max_activation > 0
        # random examples carry this feature's real activations
        for r in rec.test_random:
            row = (torch.cat(idx) == r.window).nonzero()[0, 0]
            n = int(m[row].sum())
            np.testing.assert_allclose(r.activations, acts[row, 1 : 1 + n, f].numpy(), rtol=1e-5, atol=1e-6)


def test_splits_disjoint_by_window(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    run_sampling(tiny_llama, _neurons(tiny_llama), _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "r")
    recs = load_feature_records(tmp_path / "r")
    n_checked = 0
    for rec in recs:
        sets = {s: {r.window for r in getattr(rec, s)} for s in SPLITS}
        for s in SPLITS:
            assert len(sets[s]) == len(getattr(rec, s))  # no window twice within a split
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1 :]:
                assert not sets[a] & sets[b], (rec.id, a, b)
        assert len(rec.train) == CFG.n_train and len(rec.test_random) == CFG.n_random
        n_checked += bool(rec.test_quantiles)
    assert n_checked > 0


class _SparseOf:
    """A TopK source built from neurons: keep the k largest per token (the rest are 0)."""

    def __init__(self, base: NeuronSource, k: int, dense: bool) -> None:
        self.base, self.k, self.dense = base, k, dense
        self.address, self.hook, self.d_in = "sparse-test", base.hook, base.d_in
        self.n_features, self.model_name = base.n_features, None

    def encode(self, x: torch.Tensor, features: Sequence[int] | None = None) -> DenseActs | TopKActs:
        v, i = x.relu().topk(self.k, dim=-1)
        if not self.dense:
            return TopKActs(values=v, indices=i, n_features=self.n_features)
        full = torch.zeros_like(x).scatter_(-1, i, v)
        if features is not None:
            return DenseActs(full[:, list(features)], torch.tensor(list(features)))
        return DenseActs(full)

    def to(self, device: Any, dtype: Any = None) -> _SparseOf:
        return self


@pytest.mark.parametrize("features", [None, (1, 5, 6, 17, 40)])
def test_topk_sparse_equals_dense(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path,
                                  features: tuple[int, ...] | None) -> None:
    cfg = SamplingConfig(**{**CFG.__dict__, "features": features})
    out = {}
    for dense in (True, False):
        src = _SparseOf(_neurons(tiny_llama), k=4, dense=dense)
        run = tmp_path / f"d{dense}"
        run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file, cfg), cfg, run)  # type: ignore[arg-type]
        out[dense] = (_load_all(run), (run / "records" / "stats.json").read_text())
    a, b = out[True][0], out[False][0]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    import json

    sa, sb = json.loads(out[True][1]), json.loads(out[False][1])
    assert [s["feature"] for s in sa] == list(features or range(tiny_llama.d_mlp))
    for x, y in zip(sa, sb, strict=True):
        for key in ("frequency", "max", "mean"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9)


def test_resume_equals_uninterrupted(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    src = _neurons(tiny_llama)
    run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "full")

    calls = {"n": 0}

    def crash(done: int, total: int) -> None:
        calls["n"] += 1
        if calls["n"] == 8:  # after a checkpoint at batch 6, two batches are lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "cut", progress=crash)
    assert (tmp_path / "cut" / "records" / ".checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "records" / "meta.json").exists()
    res = run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "cut")
    assert res.resumed and not (tmp_path / "cut" / "records" / ".checkpoint.pt").exists()
    a, b = _load_all(tmp_path / "full"), _load_all(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "full/records/stats.json").read_text() == (tmp_path / "cut/records/stats.json").read_text()
    # a finished run is not redone
    again = run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "cut")
    assert again.resumed and again.tokens_per_s is None


def test_memory_bounded(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    """The state has a fixed size, and the stored windows are bounded by the examples, not the corpus."""
    small = _State(range(48), CFG, torch.device("cpu")).nbytes()
    assert small == _State(range(48), SamplingConfig(**{**CFG.__dict__, "tokens": 10**9}), torch.device("cpu")).nbytes()
    big_corpus = tmp_path / "big.txt"
    big_corpus.write_text("\n\n".join([tiny_corpus_file.read_text()] * 6))
    for tokens in (1500, 6000):
        cfg = SamplingConfig(**{**CFG.__dict__, "tokens": tokens, "features": (0, 1)})
        run = tmp_path / f"t{tokens}"
        res = run_sampling(tiny_llama, _neurons(tiny_llama), _windows(tiny_llama, big_corpus, cfg), cfg, run)
        with np.load(run / "records" / "windows.npz") as z:
            n_stored = len(z["index"])
        assert n_stored <= 2 * (cfg.n_top + cfg.reservoir) + cfg.pool < res.n_windows or tokens == 1500


def test_bad_config(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="n_top"):
        SamplingConfig(n_top=5, n_train=5, n_valid=1, n_test_top=1).validate()
    cfg = SamplingConfig(**{**CFG.__dict__, "features": (0, 999)})
    with pytest.raises(UserError, match="out of range"):
        run_sampling(tiny_llama, _neurons(tiny_llama), _windows(tiny_llama, tiny_corpus_file), cfg, tmp_path / "x")


def test_gpt2_and_resid_hook(tiny_gpt2: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    hook = HookPoint(0, "resid_post")
    src = NeuronSource("tiny-gpt2", hook, tiny_gpt2.hook_dim(hook))
    res = run_sampling(tiny_gpt2, src, _windows(tiny_gpt2, tiny_corpus_file), CFG, tmp_path / "g")
    recs = load_feature_records(tmp_path / "g", [3, 7])
    assert res.n_features == 32
    assert [str(r.id) for r in recs] == ["tiny-gpt2/L0/resid_post:3", "tiny-gpt2/L0/resid_post:7"]
