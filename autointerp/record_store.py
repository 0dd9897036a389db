"""The records store: a finished sampling state -> ``<run>/records/`` on disk -> FeatureRecords.

The streaming algorithm that fills the state is autointerp/sampling.py; this module cuts the splits and owns
the files.

Splits, per feature (disjoint by window and by text): windows whose normalised text is identical (Unicode
NFKC, whitespace runs collapsed) count as one, so the same text never lands in two splits (a duplicated
document in the corpus gives several windows with the same text). The top windows, deduplicated by text, are
shuffled with a per-feature seeded generator and cut into train / valid / test_top; quantile examples come
from the reservoir minus those texts; random examples from the shared pool minus all of the above.

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

    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test_top": self.n_test_top,
                "test_quantiles": self.n_quantile_bins * self.per_quantile_bin, "test_random": self.n_random}


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


def _feature_splits(
    f: int, fi: int, st: dict[str, np.ndarray], text_of: dict[int, str], cfg: SplitSizes
) -> tuple[dict[str, list[tuple[int, np.ndarray]]], list[float]]:
    """Split one feature's examples; returns {split: [(window, acts)]} and the quantile edges."""
    rng = np.random.default_rng([cfg.seed, f])
    out: dict[str, list[tuple[int, np.ndarray]]] = {s: [] for s in SPLITS}
    ok = st["top_valid"][fi]
    top_w, top_v, top_a = st["top_win"][fi][ok], st["top_val"][fi][ok], st["top_acts"][fi][ok]
    order = np.lexsort((top_w, -top_v))
    top_w, top_v, top_a = top_w[order], top_v[order], top_a[order]
    # Identical texts count as one: keep the best (first) window of each text.
    seen: set[str] = set()
    first = np.zeros(len(top_w), dtype=bool)
    for i, w in enumerate(top_w.tolist()):
        key = text_of[int(w)]
        if key not in seen:
            seen.add(key)
            first[i] = True
    top_w, top_v, top_a = top_w[first], top_v[first], top_a[first]
    perm = rng.permutation(len(top_w))
    n_tr, n_va, n_te = _split_counts(len(top_w), cfg)
    cuts = {"train": perm[:n_tr], "valid": perm[n_tr : n_tr + n_va], "test_top": perm[n_tr + n_va : n_tr + n_va + n_te]}
    used: set[str] = set()
    for name, sel in cuts.items():
        sel = np.sort(sel)  # keep descending-activation order within the split
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
            uniq: list[int] = []  # one window per text within the bin (the lowest window index)
            texts: set[str] = set()
            for i in cand.tolist():
                key = text_of[int(q_w[i])]
                if key not in texts:
                    texts.add(key)
                    uniq.append(i)
            cand = np.array(uniq, dtype=np.int64)
            take = rng.choice(cand, size=min(cfg.per_quantile_bin, len(cand)), replace=False) if len(cand) else cand
            for i in sorted(take.tolist(), key=lambda i: -q_m[i]):
                out["test_quantiles"].append((int(q_w[i]), q_a[i]))
                used.add(text_of[int(q_w[i])])

    for slot in st["r_order"]:
        if len(out["test_random"]) >= cfg.n_random:
            break
        w = int(st["r_win"][slot])
        if text_of[w] not in used:
            out["test_random"].append((w, st["r_acts"][slot, :, fi]))
            used.add(text_of[w])
    return out, edges


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
    text_of = {w: normalise_text("".join(vocab[int(x)] for x in rows[r, content_start : lens[r]]))
               for r, w in enumerate(idx)}
    n_tok = max(1, state.n_tokens)
    count, ssum, ssa, smax = st["count_active"], st["sum"], st["sum_active"], st["max"]
    sizes = cfg.sizes()
    stats: list[dict[str, Any]] = []
    n_dead = 0
    for s0 in range(0, len(feats), _SHARD):
        chunk = feats[s0 : s0 + _SHARD]
        arrays: dict[str, np.ndarray] = {}
        for name, n in sizes.items():
            arrays[f"{name}_win"] = np.full((len(chunk), n), -1, dtype=np.int64)
            arrays[f"{name}_acts"] = np.zeros((len(chunk), n, t), dtype=np.float32)
        for j, f in enumerate(chunk):
            fi = s0 + j
            splits, edges = _feature_splits(f, fi, st, text_of, cfg)
            for name, items in splits.items():
                for e, (w, a) in enumerate(items):
                    arrays[f"{name}_win"][j, e] = w
                    arrays[f"{name}_acts"][j, e] = a
            c = int(count[fi])
            fired = c > 0
            n_dead += not fired
            stats.append({
                "feature": f,
                "n_tokens": state.n_tokens,
                "frequency": c / n_tok,
                "max": float(smax[fi]),
                "mean": float(ssum[fi] / n_tok),
                "mean_active": float(ssa[fi] / c) if fired else None,
                "quantile_edges": edges,
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
            recs = []
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
            test_random=split_recs["test_random"], valid=split_recs["valid"],
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
