"""The records store: a finished sampling state -> ``<run>/records/`` on disk -> FeatureRecords.

The streaming algorithm that fills the state is autointerp/sampling.py; this module cuts the splits and owns
the files.

Splits, per feature (disjoint by window and by text): windows whose normalised text is identical (Unicode
NFKC, whitespace runs collapsed) count as one, so the same text never lands in two splits (a duplicated
document in the corpus gives several windows with the same text). The top windows, deduplicated by text, are
shuffled with a per-feature seeded generator and cut into train / valid / test_top; quantile examples come
from the reservoir minus those texts; random examples from the shared pool minus all of the above. The splits
of a file's features are cut at once with whole-array numpy (``_cut_splits``; only the seeded generator
draws go feature by feature), ~10x faster than a Python loop per feature.

On disk (``<run>/records/``): ``meta.json``, ``stats.json``, ``windows.npz`` (index, token ids [M, T] int32
and lengths of every referenced window, stored once), ``vocab.json`` (decoded string of every token id used,
so loading needs no model) and ``shard_NNNNN.npz`` (per split: window index [F, n] with -1 padding and
activations [F, n, T] float32; ``_SHARD`` features per file). Loading reads only the files of the features
asked for, so an explain run over a whole SAE can stream records by feature range (``iter_feature_records``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import RunDirError, UserError
from autointerp.records import SPLITS, ActivationRecord, FeatureId, FeatureRecord, FeatureStats
from autointerp.rundir import atomic_write_json

FORMAT_VERSION = 2
_SHARD = 1024


@dataclass(frozen=True)
class SplitSizes:
    """How many examples each split takes per feature (from the sampling config)."""

    n_train: int
    n_valid: int
    n_test_top: int
    n_quantile_bins: int
    per_quantile_bin: int
    n_random: int
    seed: int
    n_train_random: int = 0

    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test_top": self.n_test_top,
                "test_quantiles": self.n_quantile_bins * self.per_quantile_bin, "test_random": self.n_random,
                "train_random": self.n_train_random}


@dataclass
class FinishedState:
    """A finished sampling state as numpy arrays (see ``sampling._State`` for the meaning of each)."""

    arrays: dict[str, np.ndarray]
    """top_valid, top_val, top_win, top_acts, q_valid, q_win, q_max, q_acts, r_order (pool slots by key,
    best first), r_win, r_acts, count_active, sum, sum_active, max."""
    tokens: dict[int, tuple[np.ndarray, int]]
    """Window index -> (token ids [T] int32, length incl. BOS), for every referenced window."""
    n_tokens: int
    n_windows: int


def normalise_text(text: str) -> str:
    """The text key of a window: NFKC, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


# -- splits --------------------------------------------------------------------------------------------
def _split_counts(n: int, cfg: SplitSizes) -> tuple[int, int, int]:
    want = (cfg.n_train, cfg.n_valid, cfg.n_test_top)
    total = sum(want)
    if n >= total:
        return want
    # Too few firing windows: share them out in proportion (train first), never reusing a window.
    tr = min(cfg.n_train, math.ceil(n * cfg.n_train / total)) if total else 0
    va = min(cfg.n_valid, (n - tr) * cfg.n_valid // max(1, cfg.n_valid + cfg.n_test_top))
    return tr, va, n - tr - va


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """Bool mask of the first occurrence of each value in the 1-D ``keys``."""
    first = np.zeros(len(keys), dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


def _isin_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``np.isin(keys, sorted_keys)`` for a sorted ``sorted_keys`` (repeats allowed)."""
    if not len(sorted_keys):
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of the sorted 1-D ``groups``."""
    if not len(groups):
        return groups.copy()
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))


class _Texts:
    """Integer ids of the window texts (``normalise_text``): equal ids, equal texts."""

    def __init__(self, windows: np.ndarray, keys: list[str]) -> None:
        ids: dict[str, int] = {}
        self.windows = windows  # sorted window indices
        self.ids = np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)
        self.n = len(ids)

    def of(self, windows: np.ndarray) -> np.ndarray:
        """Text id of each window index in ``windows`` (-1 for the -1 of an empty slot)."""
        if not len(self.windows):
            return np.full(windows.shape, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.windows, windows), 0, len(self.windows) - 1)
        return np.where(windows >= 0, self.ids[pos], -1)


def _cut_splits(
    st: dict[str, np.ndarray], rows: np.ndarray, feats: list[int], texts: _Texts, cfg: SplitSizes, window: int
) -> tuple[dict[str, np.ndarray], list[list[float]]]:
    """Cut the splits of the features at state rows ``rows`` (feature ids ``feats``), all at once.

    Returns the store arrays of these features (``<split>_win`` [F, n] with -1 padding, ``<split>_acts``
    [F, n, T]) and each feature's quantile edges. Per feature: the top windows are sorted by activation
    (ties: lower window), deduplicated by text (the best window of each text), shuffled with the feature's
    generator ``default_rng([seed, feature])`` and cut into train / valid / test_top (each kept in descending
    order). Quantile bins follow the reservoir's activation quantiles; in bin order, each bin draws (same
    generator) from its windows whose text is not used yet, one window per text (the lowest index), and its
    draws are listed by descending activation. Random examples are the first pool windows (by pool key)
    whose text is not used yet: the first ``n_random`` are test_random, the next ``n_train_random``
    train_random (so adding train_random changes no test_random of a feature whose pool has enough windows).
    A feature with fewer free pool windows than both want shares them in proportion, test_random first
    (``ceil(free * n_random / (n_random + n_train_random))``), so a small sample still gets both. The work is
    whole-array numpy; only the generator draws go feature by feature."""
    nf = len(rows)
    sizes = cfg.sizes()
    out: dict[str, np.ndarray] = {}
    for name, n in sizes.items():
        out[f"{name}_win"] = np.full((nf, n), -1, dtype=np.int64)
        out[f"{name}_acts"] = np.zeros((nf, n, window), dtype=np.float32)
    nt = texts.n + 1
    fidx = np.arange(nf)[:, None]

    def put(split: str, f: np.ndarray, slot: np.ndarray, win: np.ndarray, acts: np.ndarray) -> None:
        out[f"{split}_win"][f, slot] = win
        out[f"{split}_acts"][f, slot] = acts

    # top windows: sort, one window per text, shuffle, cut
    valid, win, val = st["top_valid"][rows], st["top_win"][rows], st["top_val"][rows]
    order = np.lexsort((win, -val, ~valid), axis=-1)
    win_s = np.take_along_axis(win, order, 1)
    valid_s = np.take_along_axis(valid, order, 1)
    key_s = fidx * nt + np.where(valid_s, texts.of(win_s), -1) + 1
    first = _first_of_each(key_s.ravel()).reshape(nf, -1) & valid_s
    n_unique = first.sum(axis=1)
    rngs = [np.random.default_rng([cfg.seed, f]) for f in feats]
    inv_parts: list[np.ndarray] = []
    bounds = np.zeros((nf, 3), dtype=np.int64)
    for j, rng in enumerate(rngs):
        n = int(n_unique[j])
        perm = rng.permutation(n)
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n)
        inv_parts.append(inv)
        tr, va, te = _split_counts(n, cfg)
        bounds[j] = (tr, tr + va, tr + va + te)
    tf, tk = np.nonzero(first)  # by feature, then by descending activation
    inv_all = np.concatenate(inv_parts) if inv_parts else np.zeros(0, dtype=np.int64)
    code = (inv_all[:, None] >= bounds[tf]).sum(axis=1)  # 0 train, 1 valid, 2 test_top, 3 not taken
    for c, split in enumerate(("train", "valid", "test_top")):
        sel = code == c
        f, k = tf[sel], tk[sel]
        put(split, f, _rank_in_group(f), win_s[f, k], st["top_acts"][rows[f], order[f, k]])
    used = np.sort(key_s[tf[code < 3], tk[code < 3]])  # (feature, text) keys of the texts taken

    # quantile bins of the reservoir
    nb = cfg.n_quantile_bins
    qv, qw, qm = st["q_valid"][rows], st["q_win"][rows], st["q_max"][rows]
    n_q = qv.sum(axis=1)
    edges: list[list[float]] = [[] for _ in range(nf)]
    inner = np.full((nf, max(0, nb - 1)), np.inf)
    for n in np.unique(n_q[n_q > 0]).tolist():
        g = np.flatnonzero(n_q == n)
        e = np.quantile(qm[g][qv[g]].reshape(len(g), n), np.linspace(0, 1, nb + 1), axis=1)  # [nb + 1, G]
        for j, row in zip(g.tolist(), e.T.tolist(), strict=True):
            edges[j] = [float(x) for x in row]
        inner[g] = e[1:-1].T
    bins = (qm[:, :, None].astype(np.float64) >= inner[:, None, :]).sum(axis=2)
    q_key = fidx * nt + np.where(qv, texts.of(qw), -1) + 1
    taken = np.zeros(nf, dtype=np.int64)
    for bi in range(nb):
        f, r = np.nonzero(qv & (bins == bi) & ~_isin_sorted(q_key, used))
        o = np.lexsort((qw[f, r], f))  # by feature, then by window index
        f, r = f[o], r[o]
        keep = _first_of_each(q_key[f, r])  # one window per text: the lowest index
        f, r = f[keep], r[keep]
        counts = np.bincount(f, minlength=nf)
        starts = np.cumsum(counts) - counts
        picks = [rngs[j].choice(int(counts[j]), size=min(cfg.per_quantile_bin, int(counts[j])), replace=False)
                 + starts[j] for j in np.flatnonzero(counts).tolist()]
        if not picks:
            continue
        p = np.concatenate(picks)
        f, r = f[p], r[p]
        o = np.argsort(-qm[f, r], kind="stable")  # by descending activation, ties in draw order
        f, r = f[o], r[o]
        o = np.argsort(f, kind="stable")
        f, r = f[o], r[o]
        put("test_quantiles", f, taken[f] + _rank_in_group(f), qw[f, r], st["q_acts"][rows[f], r])
        taken += np.bincount(f, minlength=nf)
        used = np.sort(np.concatenate([used, q_key[f, r]]))

    # random windows: the pool in key order, one window per text, texts not used yet
    slots = st["r_order"]
    p_win = st["r_win"][slots]
    p_txt = texts.of(p_win)
    p_key = fidx * nt + p_txt[None, :] + 1
    ok = _first_of_each(p_txt)[None, :] & ~_isin_sorted(p_key, used)
    rank = np.cumsum(ok, axis=1) - 1
    n_test = _random_counts(ok.sum(axis=1), cfg)[:, None]
    f, p = np.nonzero(ok & (rank < n_test))
    put("test_random", f, rank[f, p], p_win[p], st["r_acts"][slots[p], :, rows[f]])
    f, p = np.nonzero(ok & (rank >= n_test) & (rank < n_test + cfg.n_train_random))
    put("train_random", f, rank[f, p] - n_test[f, 0], p_win[p], st["r_acts"][slots[p], :, rows[f]])
    return out, edges


def _random_counts(free: np.ndarray, cfg: SplitSizes) -> np.ndarray:
    """How many of each feature's ``free`` pool windows go to test_random (the rest, up to n_train_random, to
    train_random): ``n_random`` when there are enough for both; else a share in proportion, rounded up."""
    want = cfg.n_random + cfg.n_train_random
    if want == 0:
        return np.zeros_like(free)
    share = (free * cfg.n_random + want - 1) // want
    return np.where(free >= want, cfg.n_random, np.minimum(share, cfg.n_random))


# -- writing -------------------------------------------------------------------------------------------
def write_records(
    rec_dir: Path,
    state: FinishedState,
    feats: list[int],
    cfg: SplitSizes,
    window: int,
    content_start: int,
    decode: Callable[[list[int]], list[str]],
    meta: dict[str, Any],
) -> int:
    """Cut the splits of every feature and write ``rec_dir``; returns the number of dead features.

    ``decode`` maps token ids to their strings (one per id); ``meta`` is merged into ``meta.json``."""
    st = state.arrays
    t = window
    idx = sorted(state.tokens)
    rows = np.stack([state.tokens[i][0] for i in idx]).astype(np.int32) if idx else np.zeros((0, t), np.int32)
    lens = np.array([state.tokens[i][1] for i in idx], dtype=np.int32)
    used_ids = np.unique(rows) if rows.size else np.zeros(0, dtype=np.int32)
    strings = decode([int(i) for i in used_ids]) if len(used_ids) else []
    vocab = {int(i): s for i, s in zip(used_ids, strings, strict=True)}
    texts = _Texts(np.array(idx, dtype=np.int64),
                   [normalise_text("".join(vocab[int(x)] for x in rows[r, content_start : lens[r]]))
                    for r in range(len(idx))])
    n_tok = max(1, state.n_tokens)
    count, ssum, ssa, smax = st["count_active"], st["sum"], st["sum_active"], st["max"]
    sizes = cfg.sizes()
    stats: list[dict[str, Any]] = []
    n_dead = int((count <= 0).sum())
    for s0 in range(0, len(feats), _SHARD):
        chunk = feats[s0 : s0 + _SHARD]
        arrays, edges = _cut_splits(st, np.arange(s0, s0 + len(chunk)), chunk, texts, cfg, t)
        for j, f in enumerate(chunk):
            fi = s0 + j
            c = int(count[fi])
            stats.append({
                "feature": f,
                "n_tokens": state.n_tokens,
                "frequency": c / n_tok,
                "max": float(smax[fi]),
                "mean": float(ssum[fi] / n_tok),
                "mean_active": float(ssa[fi] / c) if c > 0 else None,
                "quantile_edges": edges[j],
            })
        _savez_atomic(rec_dir / f"shard_{s0 // _SHARD:05d}.npz", arrays)

    _savez_atomic(rec_dir / "windows.npz", {"index": np.array(idx, dtype=np.int64), "tokens": rows, "lengths": lens})
    atomic_write_json(rec_dir / "vocab.json", {str(k): v for k, v in vocab.items()})
    atomic_write_json(rec_dir / "stats.json", stats)
    atomic_write_json(rec_dir / "meta.json", {
        "format_version": FORMAT_VERSION,
        **meta,
        "features": feats,
        "shard_size": _SHARD,
        "split_sizes": sizes,
        "window": t,
        "content_start": content_start,
        "n_tokens": state.n_tokens,
        "n_windows": state.n_windows,
        "n_dead": n_dead,
    })
    return n_dead


def _savez_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- loading -------------------------------------------------------------------------------------------
def load_records_meta(run_dir: Path) -> dict[str, Any]:
    """The ``records/meta.json`` of a finished sampling run."""
    path = Path(run_dir) / "records" / "meta.json"
    if not path.exists():
        raise RunDirError(
            f"{run_dir} has no finished records (no records/meta.json); run `autointerp sample` first"
        )
    return dict(json.loads(path.read_text()))


def load_feature_records(run_dir: Path, features: Sequence[int] | None = None) -> list[FeatureRecord]:
    """FeatureRecords of ``features`` (feature indices of the source; default: all sampled), without the model."""
    return [r for chunk in iter_feature_records(run_dir, features) for r in chunk]


def iter_feature_records(
    run_dir: Path, features: Sequence[int] | None = None, chunk: int = _SHARD
) -> Iterator[list[FeatureRecord]]:
    """FeatureRecords of ``features`` in chunks of at most ``chunk`` features, one store file at a time, so
    memory holds one chunk (not the whole SAE)."""
    rec_dir = Path(run_dir) / "records"
    meta = load_records_meta(run_dir)
    feats: list[int] = list(meta["features"])
    pos = {f: i for i, f in enumerate(feats)}
    wanted = feats if features is None else list(features)
    missing = [f for f in wanted if f not in pos]
    if missing:
        raise UserError(
            f"features {missing[:5]} were not sampled in {run_dir}; pass sampled features or sample them again"
        )
    stats = json.loads((rec_dir / "stats.json").read_text())
    vocab = {int(k): v for k, v in json.loads((rec_dir / "vocab.json").read_text()).items()}
    with np.load(rec_dir / "windows.npz") as wz:
        w_index, w_tokens, w_len = wz["index"], wz["tokens"], wz["lengths"]
    row_of = {int(w): i for i, w in enumerate(w_index)}
    cs = int(meta["content_start"])
    shard_size = int(meta["shard_size"])
    decoded: dict[int, tuple[list[int], list[str]]] = {}
    loaded: tuple[int, dict[str, np.ndarray]] | None = None
    out: list[FeatureRecord] = []
    for f in wanted:
        fi = pos[f]
        sh = fi // shard_size
        if loaded is None or loaded[0] != sh:
            with np.load(rec_dir / f"shard_{sh:05d}.npz") as z:
                loaded = (sh, {k: z[k] for k in z.files})
        arr = loaded[1]
        j = fi % shard_size
        split_recs: dict[str, list[ActivationRecord]] = {}
        for name in SPLITS:
            recs: list[ActivationRecord] = []
            if f"{name}_win" not in arr:  # a split this store was written without (train_random before it existed)
                split_recs[name] = recs
                continue
            for w, a in zip(arr[f"{name}_win"][j], arr[f"{name}_acts"][j], strict=True):
                if w < 0:
                    continue
                r = row_of[int(w)]
                n = int(w_len[r])
                if r not in decoded:
                    ids = [int(x) for x in w_tokens[r, cs:n]]
                    decoded[r] = (ids, [vocab[i] for i in ids])
                ids, toks = decoded[r]
                recs.append(ActivationRecord(tokens=list(toks), token_ids=list(ids),
                                             activations=a[cs:n].astype(np.float32), window=int(w)))
            split_recs[name] = recs
        s = stats[fi]
        out.append(FeatureRecord(
            id=FeatureId(meta["source"], f),
            stats=FeatureStats(n_tokens=s["n_tokens"], frequency=s["frequency"], max=s["max"], mean=s["mean"],
                               mean_active=s["mean_active"], quantile_edges=s["quantile_edges"]),
            train=split_recs["train"], test_top=split_recs["test_top"], test_quantiles=split_recs["test_quantiles"],
            test_random=split_recs["test_random"], valid=split_recs["valid"], train_random=split_recs["train_random"],
        ))
        if len(out) >= chunk:
            yield out
            out = []
            decoded.clear()
    if out:
        yield out


def read_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    """Every array of a records store, keyed ``<file>/<array>`` (to compare two runs array for array)."""
    out: dict[str, np.ndarray] = {}
    for f in sorted((Path(run_dir) / "records").glob("*.npz")):
        with np.load(f) as z:
            out.update({f"{f.name}/{k}": z[k] for k in z.files})
    return out
