"""The splits are cut for all features at once (``record_store._cut_splits``), and the result is exactly
what the per-feature rules give: the reference below states those rules one feature at a time, in plain
Python (sort the top windows, one window per text, shuffle with the feature's generator and cut; quantile
bins drawn in order from unused texts; random windows from the pool in key order, unused texts only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autointerp.record_store import SplitSizes, _cut_splits, _split_counts, _Texts
from autointerp.records import SPLITS


def _reference_splits(f: int, fi: int, st: dict[str, np.ndarray], text_of: dict[int, str], cfg: SplitSizes
                      ) -> tuple[dict[str, list[tuple[int, np.ndarray]]], list[float]]:
    rng = np.random.default_rng([cfg.seed, f])
    out: dict[str, list[tuple[int, np.ndarray]]] = {s: [] for s in SPLITS}
    ok = st["top_valid"][fi]
    top_w, top_v, top_a = st["top_win"][fi][ok], st["top_val"][fi][ok], st["top_acts"][fi][ok]
    order = np.lexsort((top_w, -top_v))
    top_w, top_a = top_w[order], top_a[order]
    seen: set[str] = set()
    first = np.zeros(len(top_w), dtype=bool)
    for i, w in enumerate(top_w.tolist()):
        if text_of[w] not in seen:
            seen.add(text_of[w])
            first[i] = True
    top_w, top_a = top_w[first], top_a[first]
    perm = rng.permutation(len(top_w))
    n_tr, n_va, n_te = _split_counts(len(top_w), cfg)
    cuts = {"train": perm[:n_tr], "valid": perm[n_tr : n_tr + n_va], "test_top": perm[n_tr + n_va : n_tr + n_va + n_te]}
    used: set[str] = set()
    for name, sel in cuts.items():
        sel = np.sort(sel)
        out[name] = [(int(top_w[i]), top_a[i]) for i in sel]
        used.update(text_of[int(top_w[i])] for i in sel)
    okq = st["q_valid"][fi]
    q_w, q_m, q_a = st["q_win"][fi][okq], st["q_max"][fi][okq], st["q_acts"][fi][okq]
    edges: list[float] = []
    if len(q_w):
        edges = [float(x) for x in np.quantile(q_m, np.linspace(0, 1, cfg.n_quantile_bins + 1))]
        bins = np.searchsorted(np.asarray(edges[1:-1]), q_m, side="right")
        for bi in range(cfg.n_quantile_bins):
            free = np.array([text_of[int(w)] not in used for w in q_w], dtype=bool)
            cand = np.nonzero((bins == bi) & free)[0]
            cand = cand[np.argsort(q_w[cand], kind="stable")]
            uniq: list[int] = []
            texts: set[str] = set()
            for i in cand.tolist():
                if text_of[int(q_w[i])] not in texts:
                    texts.add(text_of[int(q_w[i])])
                    uniq.append(i)
            cand = np.array(uniq, dtype=np.int64)
            take = rng.choice(cand, size=min(cfg.per_quantile_bin, len(cand)), replace=False) if len(cand) else cand
            for i in sorted(take.tolist(), key=lambda i: -q_m[i]):
                out["test_quantiles"].append((int(q_w[i]), q_a[i]))
                used.add(text_of[int(q_w[i])])
    free = []  # pool windows in key order, one per text, texts not used yet
    for slot in st["r_order"]:
        w = int(st["r_win"][slot])
        if text_of[w] not in used:
            free.append((w, st["r_acts"][slot, :, fi]))
            used.add(text_of[w])
    want = cfg.n_random + cfg.n_train_random
    n_test = cfg.n_random if len(free) >= want else math.ceil(len(free) * cfg.n_random / want)
    out["test_random"] = free[:n_test]
    out["train_random"] = free[n_test : n_test + cfg.n_train_random]
    return out, edges


def _random_state(seed: int, n_feat: int, k: int, r: int, p: int, t: int, n_windows: int, n_texts: int,
                  fill: float) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """A finished state with partly filled slots, tied values, dead features and windows sharing texts."""
    g = np.random.default_rng(seed)
    text_of = {w: f"text {int(g.integers(n_texts))}" for w in range(n_windows)}
    st: dict[str, np.ndarray] = {}
    for pre, size in (("top", k), ("q", r)):
        n_ok = np.where(g.random(n_feat) < 0.1, 0, g.integers(1, size + 1, n_feat))  # some features never fire
        n_ok = np.where(g.random(n_feat) < fill, size, n_ok)
        valid = np.arange(size)[None, :] < n_ok[:, None]
        st[f"{pre}_valid"] = np.stack([g.permutation(v) for v in valid])
        st[f"{pre}_win"] = np.where(st[f"{pre}_valid"],
                                    np.stack([g.choice(n_windows, size, replace=False) for _ in range(n_feat)]), -1)
        vals = np.round(g.random((n_feat, size)) * 4, 1).astype(np.float32) + 0.1  # few distinct values: ties
        empty = np.float32(-1e30 if pre == "top" else 0.0)
        st["top_val" if pre == "top" else "q_max"] = np.where(st[f"{pre}_valid"], vals, empty)
        st[f"{pre}_acts"] = g.random((n_feat, size, t), dtype=np.float32)
    pool_ok = g.random(p) < 0.9
    st["r_win"] = np.where(pool_ok, g.choice(n_windows, p, replace=False), -1)
    slots = np.flatnonzero(pool_ok)
    st["r_order"] = g.permutation(slots)
    st["r_acts"] = g.random((p, t, n_feat), dtype=np.float32)
    return st, text_of


@pytest.mark.parametrize("seed,fill,n_texts", [(0, 0.9, 400), (1, 0.3, 40), (2, 0.0, 15), (3, 1.0, 10_000)])
def test_splits_cut_at_once_equal_the_per_feature_rules(seed: int, fill: float, n_texts: int) -> None:
    cfg = SplitSizes(n_train=6, n_valid=2, n_test_top=3, n_quantile_bins=3, per_quantile_bin=2, n_random=7, seed=5,
                     n_train_random=4)
    n_feat, k, r, p, t = 37, 12, 18, 30, 5
    st, text_of = _random_state(seed, n_feat, k, r, p, t, n_windows=300, n_texts=n_texts, fill=fill)
    windows = np.array(sorted(text_of), dtype=np.int64)
    texts = _Texts(windows, [text_of[int(w)] for w in windows])
    rows = np.arange(3, n_feat)  # a chunk that does not start at row 0
    feats = [1000 + int(i) for i in rows]
    arrays, edges = _cut_splits(st, rows, feats, texts, cfg, t)
    sizes = cfg.sizes()
    n_checked = 0
    for j, (fi, f) in enumerate(zip(rows.tolist(), feats, strict=True)):
        ref, ref_edges = _reference_splits(f, fi, st, text_of, cfg)
        assert edges[j] == ref_edges
        for name in SPLITS:
            want_w = np.full(sizes[name], -1, dtype=np.int64)
            want_a = np.zeros((sizes[name], t), dtype=np.float32)
            for e, (w, a) in enumerate(ref[name]):
                want_w[e], want_a[e] = w, a
            np.testing.assert_array_equal(arrays[f"{name}_win"][j], want_w)
            np.testing.assert_array_equal(arrays[f"{name}_acts"][j], want_a)
            n_checked += len(ref[name])
    assert n_checked > 0
