"""One streaming pass over a corpus that samples examples for every feature of a source at once.

For each batch of windows: run the subject model up to the source's hook (stopping there), encode with the
source, and update a fixed-size per-feature state with torch ops over all features and tokens at once:

- top windows: the ``n_top`` windows with the largest per-window max activation (window index, max and the
  activation vector of the window), merged with ``topk`` over [kept + batch] and written slot by slot;
- quantile reservoir: a uniform sample of the feature's firing windows (bottom-k priority sampling with
  seeded random keys: merge-able exactly like the top-k), binned by quantile of the window max at the end;
- random windows: one shared uniform sample of windows (same priority trick) with every feature's
  activations on them;
- stats: running sums (tokens, firing count, sum, sum over firing tokens, max).

Memory is features x examples x window, independent of the corpus size. TopK sources (values/indices) are
never densified to [tokens, features]: per-window maxima are scattered into [batch windows, features], and
activation vectors are built only for the (feature, window) pairs that enter the state.

Firing means activation > 0. The BOS position and right padding are ignored (see autointerp/corpus.py).

Splits, per feature, by window (disjoint by construction): the top windows are shuffled with a per-feature
seeded generator and cut into train / valid / test_top; quantile examples come from the reservoir minus
those windows; random examples from the shared pool minus all of the above.

On disk (``<run>/records/``): ``meta.json``, ``stats.json``, ``windows.npz`` (index, token ids [M, T] int32
and lengths of every referenced window, stored once), ``vocab.json`` (decoded string of every token id used,
so loading needs no model) and ``shard_NNNNN.npz`` (per split: window index [F, n] with -1 padding and
activations [F, n, T] float32). A checkpoint (``.checkpoint.pt``) is written atomically every
``checkpoint_every`` batches; rerunning resumes from it and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.config import config_to_dict
from autointerp.corpus import TokenWindows, WindowBatch
from autointerp.errors import RunDirError, UserError
from autointerp.records import ActivationRecord, FeatureId, FeatureRecord, FeatureStats
from autointerp.rundir import atomic_write_json
from autointerp.sources.base import DenseActs, FeatureSource, TopKActs
from autointerp.subject import Subject

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test_top", "test_quantiles", "test_random")
_EMPTY = -1e30  # key/value of an empty slot; non-firing candidates are -inf, so they never fill one
_SHARD = 1024
_FETCH_CHUNK = 4096

ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (tokens done, tokens planned)."""


@dataclass(frozen=True)
class SamplingConfig:
    """Settings of the sampling pass (``autointerp cache``)."""

    tokens: int = 200_000
    """Number of corpus tokens to run through the model (BOS and padding not counted)."""
    window: int = 64
    """Tokens per window (one BOS included when the tokenizer has one)."""
    batch_size: int = 32
    """Windows per forward pass."""
    n_top: int = 50
    """Top-activating windows kept per feature (split into train, valid and test_top)."""
    n_train: int = 20
    """Top windows per feature shown to the explainer (train split)."""
    n_valid: int = 5
    """Top windows per feature held out for best-of-N explanation selection (valid split)."""
    n_test_top: int = 10
    """Top windows per feature held out for scoring (test_top split)."""
    n_quantile_bins: int = 5
    """Number of activation-quantile bins for the test_quantiles split."""
    per_quantile_bin: int = 4
    """Held-out windows per quantile bin (test_quantiles split)."""
    n_random: int = 50
    """Random windows per feature held out for scoring (test_random split; mostly non-firing)."""
    seed: int = 0
    """Seed of the corpus shuffle, the reservoirs and the splits."""
    features: tuple[int, ...] | None = None
    """Only these feature indices (default: all features of the source)."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint every this many batches."""

    def validate(self) -> None:
        for name in ("tokens", "window", "batch_size", "n_top", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        need = self.n_train + self.n_valid + self.n_test_top
        if need > self.n_top:
            raise UserError(
                f"n_train + n_valid + n_test_top = {need} exceeds n_top = {self.n_top}; raise --n-top or lower them"
            )

    @property
    def reservoir(self) -> int:
        """Size of the per-feature quantile reservoir (3x what the quantile split takes)."""
        return max(1, 3 * self.n_quantile_bins * self.per_quantile_bin)

    @property
    def pool(self) -> int:
        """Size of the shared random-window pool (enough to exclude every non-random example)."""
        return self.n_random + self.n_top + self.n_quantile_bins * self.per_quantile_bin


@dataclass
class SamplingResult:
    """Summary of a sampling pass."""

    records_dir: Path
    n_tokens: int
    n_windows: int
    n_features: int
    n_dead: int
    seconds: float
    """Wall time of this invocation's pass (excluding time before a resume)."""
    tokens_per_s: float | None
    """Tokens per second of this invocation; None when no batch ran (already complete)."""
    resumed: bool = False


# -- feature ranges -----------------------------------------------------------------------------------
def parse_feature_ranges(text: str) -> list[int]:
    """Parse ``"0-99,200,300-310"`` into a sorted list of distinct feature indices (ranges inclusive)."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise UserError(f"bad feature range {part!r} in {text!r}; write e.g. 0-99,200,300-310") from None
        if lo < 0 or hi < lo:
            raise UserError(f"bad feature range {part!r}: need 0 <= start <= end; write e.g. 0-99,200")
        out.update(range(lo, hi + 1))
    if not out:
        raise UserError(f"no features in {text!r}; write e.g. 0-99,200,300-310")
    return sorted(out)


# -- state -------------------------------------------------------------------------------------------
class _State:
    """Fixed-size per-feature state; every tensor has a leading feature axis (or is tiny)."""

    def __init__(self, n_feat: int, cfg: SamplingConfig, device: torch.device) -> None:
        t, k, r, p = cfg.window, cfg.n_top, cfg.reservoir, cfg.pool
        f32 = torch.float32
        self.n_tokens = 0
        self.n_windows = 0
        self.next_window = 0
        self.batches = 0
        self.count_active = torch.zeros(n_feat, dtype=torch.int64, device=device)
        self.sum = torch.zeros(n_feat, dtype=torch.float64, device=device)
        self.sum_active = torch.zeros(n_feat, dtype=torch.float64, device=device)
        self.max = torch.full((n_feat,), -math.inf, dtype=f32, device=device)
        self.top_val = torch.full((n_feat, k), _EMPTY, dtype=f32, device=device)
        self.top_win = torch.full((n_feat, k), -1, dtype=torch.int64, device=device)
        self.top_acts = torch.zeros((n_feat, k, t), dtype=f32, device=device)
        self.q_key = torch.full((n_feat, r), _EMPTY, dtype=f32, device=device)
        self.q_win = torch.full((n_feat, r), -1, dtype=torch.int64, device=device)
        self.q_max = torch.zeros((n_feat, r), dtype=f32, device=device)
        self.q_acts = torch.zeros((n_feat, r, t), dtype=f32, device=device)
        self.r_key = torch.full((1, p), _EMPTY, dtype=f32, device=device)
        self.r_win = torch.full((p,), -1, dtype=torch.int64, device=device)
        self.r_acts = torch.zeros((p, t, n_feat), dtype=f32, device=device)
        self.tokens: dict[int, tuple[np.ndarray, int]] = {}

    _TENSORS = ("count_active", "sum", "sum_active", "max", "top_val", "top_win", "top_acts", "q_key", "q_win",
                "q_max", "q_acts", "r_key", "r_win", "r_acts")

    def nbytes(self) -> int:
        """Bytes held by the state tensors (for the memory-independence test)."""
        return sum(getattr(self, n).element_size() * getattr(self, n).numel() for n in self._TENSORS)

    def referenced(self) -> set[int]:
        ids = torch.cat([self.top_win.flatten(), self.q_win.flatten(), self.r_win.flatten()])
        return {int(i) for i in torch.unique(ids).tolist() if i >= 0}

    def prune_tokens(self) -> None:
        keep = self.referenced()
        self.tokens = {i: v for i, v in self.tokens.items() if i in keep}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {n: getattr(self, n).cpu() for n in self._TENSORS}
        d.update(n_tokens=self.n_tokens, n_windows=self.n_windows, next_window=self.next_window, batches=self.batches)
        idx = sorted(self.tokens)
        d["tok_index"] = torch.tensor(idx, dtype=torch.int64)
        d["tok_rows"] = torch.from_numpy(np.stack([self.tokens[i][0] for i in idx])) if idx else torch.zeros(0)
        d["tok_len"] = torch.tensor([self.tokens[i][1] for i in idx], dtype=torch.int64)
        return d

    def load_dict(self, d: dict[str, Any], device: torch.device) -> None:
        for n in self._TENSORS:
            setattr(self, n, d[n].to(device))
        self.n_tokens, self.n_windows = int(d["n_tokens"]), int(d["n_windows"])
        self.next_window, self.batches = int(d["next_window"]), int(d["batches"])
        rows = d["tok_rows"].numpy()
        pairs = zip(d["tok_index"].tolist(), d["tok_len"].tolist(), strict=True)
        self.tokens = {int(i): (rows[j], int(n)) for j, (i, n) in enumerate(pairs)}


def _merge(state_key: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the K largest of [state (F, K) | candidates (F, B)]. Returns (feature, slot, candidate) triples:
    candidate ``b`` of feature ``f`` replaces slot ``k`` (an evicted or empty one). Untouched slots stay put.

    Only rows where some candidate beats the row's smallest kept key are merged (few, once warmed up)."""
    k = state_key.shape[1]
    rows = (cand > state_key.amin(dim=1, keepdim=True)).any(dim=1).nonzero(as_tuple=True)[0]
    if len(rows) == 0:
        empty = rows.new_zeros(0)
        return empty, empty, empty
    comb = torch.cat([state_key[rows], cand[rows]], dim=1)
    sel = comb.topk(k, dim=1).indices
    chosen = torch.zeros_like(comb, dtype=torch.bool).scatter_(1, sel, True)
    _, ke = (~chosen[:, :k]).nonzero(as_tuple=True)
    fa, ba = chosen[:, k:].nonzero(as_tuple=True)
    # Row-major order and equal counts per row make the two lists line up feature by feature.
    return rows[fa], ke, ba


class _BatchActs:
    """Feature activations of one batch, dense [B, T, F] or sparse top-k, with the few ops the state needs."""

    def __init__(self, acts: DenseActs | TopKActs, positions: torch.Tensor | None, select: torch.Tensor | None,
                 n_feat: int, b: int, t: int, valid: torch.Tensor) -> None:
        self.b, self.t, self.n_feat = b, t, n_feat
        self.valid = valid  # [B, T] bool
        self.dense: torch.Tensor | None = None
        if isinstance(acts, DenseActs):
            vals = acts.values.float()
            if select is not None:
                if acts.feature_ids is None:
                    vals = vals.index_select(-1, select)  # the source ignored the subset: select it here
                elif not torch.equal(acts.feature_ids.to(select.device), select):
                    raise RuntimeError("source returned other feature columns than the ones asked for")
            vals = vals.reshape(b * t, -1).contiguous()  # flat and dense below must share storage
            if vals.shape[-1] != n_feat:
                raise RuntimeError(f"source returned {vals.shape[-1]} features, expected {n_feat}")
            # BOS/padding rows are set in place (no copy of [N, F]): -inf for the maxima, then 0 for the sums.
            self.invalid_rows = (~valid.reshape(-1)).nonzero(as_tuple=True)[0]
            self.flat = vals  # [N, F]
            self.dense = vals.view(b, t, -1)
        else:
            v = acts.values.float().reshape(b * t, -1)
            idx = acts.indices.reshape(b * t, -1).long()
            if positions is not None:
                idx = positions[idx]  # feature index -> position in the tracked subset, or -1
            keep = (idx >= 0) & valid.reshape(-1, 1)
            self.sp_val = torch.where(keep, v, torch.zeros_like(v))
            self.sp_idx = torch.where(keep, idx, torch.zeros_like(idx))
            self.sp_keep = keep

    def stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count_active [F], sum [F] f64, sum_active [F] f64, max [F], window max of firing [B, F] else -inf)."""
        if self.dense is not None:
            a = self.flat
            a.index_fill_(0, self.invalid_rows, -math.inf)
            wmax = self.dense.amax(dim=1)  # [B, F], over document tokens only
            a.index_fill_(0, self.invalid_rows, 0.0)  # from here on BOS/padding hold 0
            mx = wmax.amax(dim=0)
            cand = torch.where(wmax > 0, wmax, torch.full_like(wmax, -math.inf))
            # Reductions over tokens as [1, N] @ [N, F] products weighted by the valid mask (fast BLAS).
            w = self.valid.reshape(1, -1).to(a.dtype)
            count = (w @ (a > 0).to(a.dtype))[0].round().long()
            s = (w @ a)[0].double()
            sa = (w @ a.clamp(min=0.0))[0].double()
            return count, s, sa, mx, cand
        f = self.n_feat
        v, idx, keep = self.sp_val, self.sp_idx, self.sp_keep
        pos = keep & (v > 0)
        dev = v.device
        count = torch.zeros(f, dtype=torch.int64, device=dev).index_add_(0, idx[pos], torch.ones_like(idx[pos]))
        s = torch.zeros(f, dtype=torch.float64, device=dev).index_add_(0, idx[keep], v[keep].double())
        sa = torch.zeros(f, dtype=torch.float64, device=dev).index_add_(0, idx[pos], v[pos].double())
        mx = torch.full((f,), -math.inf, device=dev).scatter_reduce(0, idx[keep], v[keep], "amax")
        mx = mx.clamp(min=0.0)  # features not selected at a token are 0 there
        row = torch.arange(self.b * self.t, device=dev).reshape(-1, 1).expand_as(idx) // self.t
        flat = row[pos] * f + idx[pos]
        cand = torch.full((self.b * f,), -math.inf, device=dev).scatter_reduce(0, flat, v[pos], "amax")
        return count, s, sa, mx, cand.reshape(self.b, f)

    def fetch(self, feats: torch.Tensor, wins: torch.Tensor) -> torch.Tensor:
        """Activation vectors [p, T] of feature ``feats[i]`` on batch window ``wins[i]``."""
        if self.dense is not None:
            return self.dense[wins, :, feats]
        out = []
        k = self.sp_val.shape[1]
        v = self.sp_val.reshape(self.b, self.t, k)
        idx = self.sp_idx.reshape(self.b, self.t, k)
        keep = self.sp_keep.reshape(self.b, self.t, k)
        for s in range(0, len(feats), _FETCH_CHUNK):
            f, w = feats[s : s + _FETCH_CHUNK], wins[s : s + _FETCH_CHUNK]
            eq = (idx[w] == f[:, None, None]) & keep[w]
            out.append(torch.where(eq, v[w], torch.zeros_like(v[w])).sum(-1))
        return torch.cat(out) if out else torch.zeros((0, self.t), device=self.sp_val.device)

    def window_all(self, wins: torch.Tensor) -> torch.Tensor:
        """Activations [p, T, F] of every feature on batch windows ``wins`` (few windows: the random pool)."""
        if self.dense is not None:
            return self.dense[wins]
        k = self.sp_val.shape[1]
        v = self.sp_val.reshape(self.b, self.t, k)[wins]
        idx = self.sp_idx.reshape(self.b, self.t, k)[wins]
        out = torch.zeros((len(wins), self.t, self.n_feat), device=v.device)
        return out.scatter_add_(2, idx, v)


def _keys(seed: int, first_window: int, salt: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uniform priority keys, a pure function of (seed, first window of the batch, salt)."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + first_window * 4 + salt) % (2**62))
    return torch.rand(shape, generator=g).to(device)


def _update(state: _State, batch: WindowBatch, acts: _BatchActs, cfg: SamplingConfig) -> None:
    dev = state.top_val.device
    b = len(batch.index)
    count, s, sa, mx, cand = acts.stats()  # cand [B, F]
    state.n_tokens += batch.n_tokens
    state.n_windows += b
    state.count_active += count
    state.sum += s
    state.sum_active += sa
    state.max = torch.maximum(state.max, mx)
    win_index = batch.index.to(dev)

    # top windows by max activation
    cand_t = cand.T.contiguous()  # [F, B]
    fa, ka, ba = _merge(state.top_val, cand_t)
    if len(fa):
        state.top_val[fa, ka] = cand_t[fa, ba]
        state.top_win[fa, ka] = win_index[ba]
        state.top_acts[fa, ka] = acts.fetch(fa, ba)

    # quantile reservoir: uniform sample of firing windows via random priority keys
    first = int(batch.index[0])
    qk = _keys(cfg.seed, first, 1, (acts.n_feat, b), dev)
    qk = torch.where(cand_t > -math.inf, qk, torch.full_like(qk, -math.inf))
    fa, ka, ba = _merge(state.q_key, qk)
    if len(fa):
        state.q_key[fa, ka] = qk[fa, ba]
        state.q_win[fa, ka] = win_index[ba]
        state.q_max[fa, ka] = cand_t[fa, ba]
        state.q_acts[fa, ka] = acts.fetch(fa, ba)

    # shared random pool
    rk = _keys(cfg.seed, first, 2, (1, b), dev)
    _, ka, ba = _merge(state.r_key, rk)
    if len(ka):
        state.r_key[0, ka] = rk[0, ba]
        state.r_win[ka] = win_index[ba]
        state.r_acts[ka] = acts.window_all(ba)

    ids = batch.input_ids.numpy() if batch.input_ids.device.type == "cpu" else batch.input_ids.cpu().numpy()
    for j, w in enumerate(batch.index.tolist()):
        state.tokens[int(w)] = (ids[j].astype(np.int32), int(batch.lengths[j]))


# -- the pass ------------------------------------------------------------------------------------------
_PRUNE_EVERY = 20


def selected_features(config: SamplingConfig, source: FeatureSource) -> list[int]:
    """The feature indices ``config`` asks for (all when None); UserError when one is out of range."""
    if config.features is None:
        return list(range(source.n_features))
    feats = list(config.features)
    bad = [f for f in feats if not 0 <= f < source.n_features]
    if bad:
        raise UserError(
            f"features {bad[:5]} are out of range for {source.address} (0..{source.n_features - 1}); fix --features"
        )
    return feats


class Sampler:
    """The per-batch part of the pass: ``step(batch)`` runs the model to the hook, encodes, updates the state.

    ``run_sampling`` drives it over a corpus with checkpoints; benchmarks call ``step`` directly."""

    def __init__(self, subject: Subject, source: FeatureSource, config: SamplingConfig) -> None:
        config.validate()
        feats = selected_features(config, source)
        self.subject, self.source, self.config = subject, source, config
        self.features = feats
        dev = subject.device
        self._positions: torch.Tensor | None = None
        self._select: torch.Tensor | None = None
        self._feats_arg: list[int] | None = None
        if config.features is not None:
            self._feats_arg = feats
            self._select = torch.tensor(feats, dtype=torch.int64, device=dev)
            self._positions = torch.full((source.n_features,), -1, dtype=torch.int64, device=dev)
            self._positions[self._select] = torch.arange(len(feats), device=dev)
        subject.check_hook(source.hook)
        self.state = _State(len(feats), config, dev)

    @torch.inference_mode()
    def step(self, batch: WindowBatch) -> None:
        """Process one batch of windows."""
        hook = self.source.hook
        h = self.subject.run(batch.input_ids, [hook])[hook]
        bsz, t, d = h.shape
        enc = self.source.encode(h.reshape(bsz * t, d), self._feats_arg)
        valid = batch.valid_mask().to(self.subject.device)
        # The state update is many small memory-bound ops; on CPU, one thread avoids OpenMP fork/join costs
        # that dominate them (8x slower with 2 threads on a busy 2-core machine). The model keeps its threads.
        threads = torch.get_num_threads()
        single = self.subject.device.type == "cpu" and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            acts = _BatchActs(enc, self._positions, self._select, len(self.features), bsz, t, valid)
            _update(self.state, batch, acts, self.config)
        finally:
            if single:
                torch.set_num_threads(threads)
        self.state.next_window = int(batch.index[-1]) + 1
        self.state.batches += 1
        if self.state.batches % _PRUNE_EVERY == 0:
            self.state.prune_tokens()  # keeps the stored windows bounded by the examples held


def run_sampling(
    subject: Subject,
    source: FeatureSource,
    windows: TokenWindows,
    config: SamplingConfig,
    run_dir: Path,
    progress: ProgressCallback | None = None,
) -> SamplingResult:
    """Run the sampling pass and write ``run_dir/records``; resumes from a checkpoint there if one exists."""
    config.validate()
    if windows.window != config.window:
        raise UserError(f"corpus windows have {windows.window} tokens but the config says {config.window}")
    rec_dir = Path(run_dir) / "records"
    rec_dir.mkdir(parents=True, exist_ok=True)
    meta_path = rec_dir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config") != config_to_dict(config) or meta.get("source") != source.address:
            raise RunDirError(f"{rec_dir} holds records of another configuration; use a new --run-dir")
        log.info("records already complete in %s", rec_dir)
        return SamplingResult(rec_dir, int(meta["n_tokens"]), int(meta["n_windows"]), len(meta["features"]),
                              int(meta["n_dead"]), 0.0, None, resumed=True)

    sampler = Sampler(subject, source, config)
    state = sampler.state
    feats = sampler.features
    ckpt = rec_dir / ".checkpoint.pt"
    fingerprint = {"config": config_to_dict(config), "source": source.address, "corpus": windows.describe()}
    resumed = False
    if ckpt.exists():
        d = torch.load(ckpt, map_location="cpu", weights_only=False)
        if d.get("fingerprint") != fingerprint:
            raise RunDirError(f"{ckpt} is a checkpoint of another configuration; use a new --run-dir")
        state.load_dict(d["state"], subject.device)
        resumed = True
        log.info("resuming sampling at window %d (%d tokens done)", state.next_window, state.n_tokens)

    t0 = time.perf_counter()
    tokens_run = 0
    for batch in windows.batches(config.batch_size, start=state.next_window):
        if state.n_tokens >= config.tokens:
            break
        sampler.step(batch)
        tokens_run += batch.n_tokens
        if state.batches % config.checkpoint_every == 0:
            state.prune_tokens()
            _save_checkpoint(ckpt, {"fingerprint": fingerprint, "state": state.to_dict()})
        if progress is not None:
            progress(state.n_tokens, config.tokens)
    seconds = time.perf_counter() - t0
    if state.n_windows == 0:
        raise UserError(f"corpus {windows.name} produced no windows; pass a corpus with text in it")
    state.prune_tokens()
    n_dead = _write_records(rec_dir, state, feats, source, subject, windows, config)
    ckpt.unlink(missing_ok=True)
    return SamplingResult(
        rec_dir, state.n_tokens, state.n_windows, len(feats), n_dead, seconds,
        tokens_run / seconds if tokens_run and seconds > 0 else None, resumed,
    )


def _save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- splits and output ---------------------------------------------------------------------------------
def _split_counts(n: int, cfg: SamplingConfig) -> tuple[int, int, int]:
    want = (cfg.n_train, cfg.n_valid, cfg.n_test_top)
    total = sum(want)
    if n >= total:
        return want
    # Too few firing windows: share them out in proportion (train first), never reusing a window.
    tr = min(cfg.n_train, math.ceil(n * cfg.n_train / total)) if total else 0
    va = min(cfg.n_valid, (n - tr) * cfg.n_valid // max(1, cfg.n_valid + cfg.n_test_top))
    return tr, va, n - tr - va


def _feature_splits(
    f: int, fi: int, st: dict[str, np.ndarray], cfg: SamplingConfig
) -> tuple[dict[str, list[tuple[int, np.ndarray]]], list[float]]:
    """Split one feature's examples; returns {split: [(window, acts)]} and the quantile edges."""
    rng = np.random.default_rng([cfg.seed, f])
    out: dict[str, list[tuple[int, np.ndarray]]] = {s: [] for s in SPLITS}
    ok = st["top_val"][fi] > _EMPTY / 2
    top_w, top_v, top_a = st["top_win"][fi][ok], st["top_val"][fi][ok], st["top_acts"][fi][ok]
    order = np.lexsort((top_w, -top_v))
    top_w, top_v, top_a = top_w[order], top_v[order], top_a[order]
    perm = rng.permutation(len(top_w))
    n_tr, n_va, n_te = _split_counts(len(top_w), cfg)
    cuts = {"train": perm[:n_tr], "valid": perm[n_tr : n_tr + n_va], "test_top": perm[n_tr + n_va : n_tr + n_va + n_te]}
    used: set[int] = set()
    for name, sel in cuts.items():
        sel = np.sort(sel)  # keep descending-activation order within the split
        out[name] = [(int(top_w[i]), top_a[i]) for i in sel]
        used.update(int(top_w[i]) for i in sel)

    okq = st["q_key"][fi] > _EMPTY / 2
    q_w, q_m, q_a = st["q_win"][fi][okq], st["q_max"][fi][okq], st["q_acts"][fi][okq]
    edges: list[float] = []
    if len(q_w):
        edges = [float(x) for x in np.quantile(q_m, np.linspace(0, 1, cfg.n_quantile_bins + 1))]
        bins = np.searchsorted(np.asarray(edges[1:-1]), q_m, side="right")
        free = np.array([int(w) not in used for w in q_w], dtype=bool)
        for bi in range(cfg.n_quantile_bins):
            cand = np.nonzero((bins == bi) & free)[0]
            cand = cand[np.argsort(q_w[cand], kind="stable")]
            take = rng.choice(cand, size=min(cfg.per_quantile_bin, len(cand)), replace=False) if len(cand) else cand
            for i in sorted(take.tolist(), key=lambda i: -q_m[i]):
                out["test_quantiles"].append((int(q_w[i]), q_a[i]))
                used.add(int(q_w[i]))

    for slot in st["r_order"]:
        if len(out["test_random"]) >= cfg.n_random:
            break
        w = int(st["r_win"][slot])
        if w not in used:
            out["test_random"].append((w, st["r_acts"][slot, :, fi]))
    return out, edges


def _write_records(
    rec_dir: Path, state: _State, feats: list[int], source: FeatureSource, subject: Subject,
    windows: TokenWindows, cfg: SamplingConfig,
) -> int:
    st = {n: getattr(state, n).cpu().numpy() for n in ("top_val", "top_win", "top_acts", "q_key", "q_win", "q_max",
                                                        "q_acts", "r_win", "r_acts")}
    rk = state.r_key[0].cpu().numpy()
    valid_slots = np.nonzero(rk > _EMPTY / 2)[0]
    st["r_order"] = valid_slots[np.argsort(-rk[valid_slots], kind="stable")]
    n_tok = max(1, state.n_tokens)
    count = state.count_active.cpu().numpy()
    ssum = state.sum.cpu().numpy()
    ssa = state.sum_active.cpu().numpy()
    smax = state.max.cpu().numpy()
    sizes = {"train": cfg.n_train, "valid": cfg.n_valid, "test_top": cfg.n_test_top,
             "test_quantiles": cfg.n_quantile_bins * cfg.per_quantile_bin, "test_random": cfg.n_random}
    t = cfg.window
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
            splits, edges = _feature_splits(f, fi, st, cfg)
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

    idx = sorted(state.tokens)
    rows = np.stack([state.tokens[i][0] for i in idx]).astype(np.int32) if idx else np.zeros((0, t), np.int32)
    lens = np.array([state.tokens[i][1] for i in idx], dtype=np.int32)
    _savez_atomic(rec_dir / "windows.npz", {"index": np.array(idx, dtype=np.int64), "tokens": rows, "lengths": lens})
    used_ids = np.unique(rows) if rows.size else np.zeros(0, dtype=np.int32)
    tok = subject.tokenizer
    strings = tok.batch_decode([[int(i)] for i in used_ids]) if len(used_ids) else []
    atomic_write_json(rec_dir / "vocab.json", {str(int(i)): s for i, s in zip(used_ids, strings, strict=True)})
    atomic_write_json(rec_dir / "stats.json", stats)
    atomic_write_json(rec_dir / "meta.json", {
        "format_version": FORMAT_VERSION,
        "source": source.address,
        "hook": str(source.hook),
        "model": subject.name,
        "n_source_features": source.n_features,
        "features": feats,
        "shard_size": _SHARD,
        "split_sizes": sizes,
        "window": t,
        "content_start": windows.content_start,
        "corpus": windows.describe(),
        "tokenizer": getattr(tok, "name_or_path", None),
        "n_tokens": state.n_tokens,
        "n_windows": state.n_windows,
        "n_dead": n_dead,
        "config": config_to_dict(cfg),
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
        raise RunDirError(f"{run_dir} has no finished records (no records/meta.json); run `autointerp cache` first")
    return dict(json.loads(path.read_text()))


def load_feature_records(run_dir: Path, features: Sequence[int] | None = None) -> list[FeatureRecord]:
    """FeatureRecords of ``features`` (feature indices of the source; default: all sampled), without the model."""
    rec_dir = Path(run_dir) / "records"
    meta = load_records_meta(run_dir)
    feats: list[int] = list(meta["features"])
    pos = {f: i for i, f in enumerate(feats)}
    wanted = feats if features is None else list(features)
    missing = [f for f in wanted if f not in pos]
    if missing:
        raise UserError(f"features {missing[:5]} were not sampled in {run_dir}; pass sampled features or re-run cache")
    stats = json.loads((rec_dir / "stats.json").read_text())
    vocab = {int(k): v for k, v in json.loads((rec_dir / "vocab.json").read_text()).items()}
    with np.load(rec_dir / "windows.npz") as wz:
        w_index, w_tokens, w_len = wz["index"], wz["tokens"], wz["lengths"]
    row_of = {int(w): i for i, w in enumerate(w_index)}
    cs = int(meta["content_start"])
    shard_size = int(meta["shard_size"])
    shards: dict[int, dict[str, np.ndarray]] = {}
    decoded: dict[int, tuple[list[int], list[str]]] = {}
    out: list[FeatureRecord] = []
    for f in wanted:
        fi = pos[f]
        sh = fi // shard_size
        if sh not in shards:
            with np.load(rec_dir / f"shard_{sh:05d}.npz") as z:
                shards[sh] = {k: z[k] for k in z.files}
        arr = shards[sh]
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
    return out
