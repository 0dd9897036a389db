"""One streaming pass over a corpus that samples examples for every feature of a source at once.

For each batch of windows: run the subject model up to the source's hook (stopping there), encode with the
source, and update a fixed-size per-feature state with torch ops over all features and tokens at once:

- top windows: the ``n_top`` windows with the largest per-window max activation (window index, max and the
  activation vector of the window);
- quantile reservoir: a uniform sample of the feature's firing windows (priority sampling: keep the largest
  random keys), binned by quantile of the window max when the records are written;
- random windows: one shared uniform sample of windows (same priority trick) with every feature's
  activations on them;
- stats: running sums (tokens, firing count, sum, sum over firing tokens, max).

Every choice is order-free, so shards of the corpus merge exactly (``merge_states``): a slot's key is an
int64 that orders (value, window) lexicographically, ties broken by the lower window index; the random keys
are a hash of (seed, window index[, feature]), not of the batch. ``--shard i/n`` samples blocks of
``batch_size`` windows round-robin (autointerp.corpus.Shard), so every batch holds the same windows as in an
unsharded pass, and the merged records are identical, array for array, to the unsharded run's. (The float64
running sums are added in another order, so stats agree to float64 rounding.)

Memory is features x examples x window, independent of the corpus size. TopK sources (values/indices) are
never densified to [tokens, features]: per-window maxima are scattered into [batch windows, features], and
activation vectors are built only for the (feature, window) pairs that enter the state.

Firing means activation > 0. The BOS position and right padding are ignored (see autointerp/corpus.py).
Non-finite activations (e.g. float16 overflow) stop the pass with a UserError naming the hook.

The source is moved to the subject's device and dtype before the pass. A checkpoint
(``records/.checkpoint.pt``) is written atomically every ``checkpoint_every`` batches; rerunning resumes from
it and gives the same result as an uninterrupted run. The checkpoint holds the corpus's content fingerprint
(autointerp.corpus.ContentDigest) of the windows read so far: resuming over a changed corpus is a UserError.
A shard run writes ``records/partial.pt`` (its mergeable state) instead of records; ``merge_partials``
combines the partial states of all shards into records (autointerp/record_store.py writes and reads them).

``prepare_sampling(setup, config)`` is the one library call that loads subject, source and corpus (checking
them before anything is written); the ``sample`` CLI command, ``explain`` and sweeps call it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.config import config_to_dict
from autointerp.corpus import ContentDigest, Shard, TokenWindows, WindowBatch
from autointerp.errors import RunDirError, UserError
from autointerp.record_store import FinishedState, SplitSizes, load_records_meta, write_records
from autointerp.rundir import RECORDS
from autointerp.sources.base import DenseActs, FeatureSource, TopKActs
from autointerp.subject import Subject

log = logging.getLogger(__name__)

STATE_VERSION = 2
_FETCH_CHUNK = 4096
_EMPTY_VAL = -1e30  # value of an empty top slot
_EMPTY = -(2**62)  # key of an empty slot: below every real key (>= 0)
_NEVER = -(2**63)  # key of a candidate that may not enter (non-firing): below the empty slots
_W_BITS = 31  # keys are (high part << 31) | (2**31 - 1 - window): ties go to the lower window index
_W_MAX = 2**_W_BITS - 1
_M32 = 0xFFFFFFFF

ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (tokens done, tokens planned)."""


@dataclass(frozen=True)
class SamplingConfig:
    """Settings of the sampling pass (``autointerp sample``)."""

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
    n_train_random: int = 0
    """Random windows per feature on the train side (train_random split, disjoint from test_random): the pool
    of the contrastive explainer's hard negatives; 0: none (explain --explainer-kind contrastive samples 20). A
    feature with too few free pool windows for both shares them with test_random in proportion."""
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
        for name in ("n_random", "n_train_random"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
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
        return self.n_random + self.n_train_random + self.n_top + self.n_quantile_bins * self.per_quantile_bin

    def split_sizes(self) -> SplitSizes:
        return SplitSizes(self.n_train, self.n_valid, self.n_test_top, self.n_quantile_bins, self.per_quantile_bin,
                          self.n_random, self.seed, self.n_train_random)


@dataclass
class SamplingResult:
    """Summary of a sampling pass."""

    records_dir: Path
    n_tokens: int
    n_windows: int
    n_features: int
    n_dead: int | None
    """Features that never fired; None for a shard (known only once the shards are merged)."""
    seconds: float
    """Wall time of this invocation's pass (excluding time before a resume)."""
    tokens_per_s: float | None
    """Tokens per second of this invocation; None when no batch ran (already complete)."""
    resumed: bool = False
    content_fingerprint: str | None = None
    """ContentDigest of the windows read (None when the records were already complete)."""


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


RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class RandomFeatures:
    """``random:N[,min=K][,seed=S]``: N features drawn without replacement (``numpy.random.default_rng(S)``)
    among the sampled features that fired on at least K tokens of the sample, sorted. A documented rule
    instead of a hand-picked list: the same sample, N, K and S give the same features."""

    n: int
    min_count: int = 20
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> RandomFeatures:
        head, *opts = [p.strip() for p in text[len(RANDOM_PREFIX):].split(",")]
        fix = "write e.g. random:25 or random:25,min=20,seed=0"
        try:
            kw = {"n": int(head)}
            for o in opts:
                key, sep, val = o.partition("=")
                if not sep or key not in ("min", "seed"):
                    raise ValueError(o)
                kw["min_count" if key == "min" else "seed"] = int(val)
        except ValueError:
            raise UserError(f"bad --features {text!r}; {fix}") from None
        rule = cls(**kw)
        if rule.n < 1 or rule.min_count < 1:
            raise UserError(f"bad --features {text!r}: N and min must be at least 1; {fix}")
        return rule

    def choose(self, stats: Sequence[dict[str, Any]]) -> list[int]:
        """The chosen feature indices, from a records store's per-feature statistics (``stats.json``)."""
        live = [int(x["feature"]) for x in stats if round(x["frequency"] * x["n_tokens"]) >= self.min_count]
        if len(live) < self.n:
            raise UserError(
                f"only {len(live)} sampled features fired on at least {self.min_count} tokens, fewer than the "
                f"{self.n} asked for; lower N or min=, or sample more tokens"
            )
        rng = np.random.default_rng(self.seed)
        return sorted(int(f) for f in rng.choice(np.asarray(live), size=self.n, replace=False))

    def describe(self) -> str:
        return f"{RANDOM_PREFIX}{self.n},min={self.min_count},seed={self.seed}"


def feature_rule(text: str | None) -> RandomFeatures | None:
    """The ``random:`` rule that ``--features text`` gives (UserError when malformed); None for ranges or none."""
    if text and text.strip().startswith(RANDOM_PREFIX):
        return RandomFeatures.parse(text.strip())
    return None


def sampling_features(text: str | None) -> tuple[int, ...] | None:
    """The features a sampling pass must track for ``--features text``: the ranges, or every feature (None)
    for no selection and for ``random:`` (which chooses among the sampled features afterwards; a malformed
    rule fails here, before the pass)."""
    if not text or feature_rule(text) is not None:
        return None
    return tuple(parse_feature_ranges(text))


def choose_features(sample_run: Path, text: str | None) -> list[int] | None:
    """The features of finished sample run ``sample_run`` that ``--features text`` selects (None: all of them).
    Ranges must have been sampled (checked here against ``records/meta.json``; in a run that holds only
    ``records.jsonl``, e.g. an explain run, when its records are read); ``random:`` draws among the run's
    features (one source only)."""
    if not text:
        return None
    dirs = source_dirs(Path(sample_run))
    rule = feature_rule(text)
    if rule is not None:
        if len(dirs) != 1:
            raise UserError(f"--features {text} draws from one source, but {sample_run} holds {len(dirs)}; "
                            "sample one source, or give feature ranges")
        stats = dirs[0] / "records" / "stats.json"
        if not stats.exists():
            raise UserError(f"--features {text} draws among the sampled features' statistics, but {sample_run} has "
                            "no records/stats.json; pass the folder of a finished `autointerp sample` run")
        chosen = rule.choose(json.loads(stats.read_text()))
        log.info("--features %s chose %d features: %s", rule.describe(), len(chosen), chosen)
        return chosen
    feats = parse_feature_ranges(text)
    for d in dirs:
        if not (d / "records" / "meta.json").exists() and (d / RECORDS).exists():
            continue
        sampled = {int(f) for f in load_records_meta(d)["features"]}
        missing = [f for f in feats if f not in sampled]
        if missing:
            raise UserError(
                f"features {missing[:5]} were not sampled in {sample_run}; pass sampled features or sample them again"
            )
    return feats


# -- keys ----------------------------------------------------------------------------------------------
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash on int64 tensors holding values in [0, 2**32) (no overflow)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def _random_high(seed: int, salt: int, windows: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
    """Uniform 32-bit priorities, a pure function of (seed, salt, window index[, feature]): [B] or [F, B]."""
    s = _mix32(torch.tensor([(seed * 0x9E3779B1 + salt * 0x85EBCA6B) & _M32], dtype=torch.int64))
    h = _mix32((windows ^ s.to(windows.device)) & _M32)
    if feats is None:
        return h
    return _mix32((h[None, :] + feats[:, None] * 0x2545F49 + 1) & _M32)


def _compose(high: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """int64 key ordering by ``high`` (>= 0), then by the lower window index."""
    return (high << _W_BITS) | (_W_MAX - windows)


def _value_high(v: torch.Tensor) -> torch.Tensor:
    """An order-preserving int64 of positive float32 values (their bit pattern)."""
    return v.float().contiguous().view(torch.int32).long()


# -- state -------------------------------------------------------------------------------------------
class _State:
    """Fixed-size per-feature state; every tensor has a leading feature axis (or is tiny)."""

    def __init__(self, feats: Sequence[int], cfg: SamplingConfig, device: torch.device) -> None:
        n_feat = len(feats)
        t, k, r, p = cfg.window, cfg.n_top, cfg.reservoir, cfg.pool
        f32, i64 = torch.float32, torch.int64
        self.feat_ids = torch.tensor(list(feats), dtype=i64, device=device)
        self.n_tokens = 0
        self.n_windows = 0
        self.next_window = 0
        self.batches = 0
        self.count_active = torch.zeros(n_feat, dtype=i64, device=device)
        self.sum = torch.zeros(n_feat, dtype=torch.float64, device=device)
        self.sum_active = torch.zeros(n_feat, dtype=torch.float64, device=device)
        self.max = torch.full((n_feat,), -math.inf, dtype=f32, device=device)
        self.top_key = torch.full((n_feat, k), _EMPTY, dtype=i64, device=device)
        self.top_val = torch.full((n_feat, k), _EMPTY_VAL, dtype=f32, device=device)
        self.top_win = torch.full((n_feat, k), -1, dtype=i64, device=device)
        self.top_acts = torch.zeros((n_feat, k, t), dtype=f32, device=device)
        self.q_key = torch.full((n_feat, r), _EMPTY, dtype=i64, device=device)
        self.q_win = torch.full((n_feat, r), -1, dtype=i64, device=device)
        self.q_max = torch.zeros((n_feat, r), dtype=f32, device=device)
        self.q_acts = torch.zeros((n_feat, r, t), dtype=f32, device=device)
        self.r_key = torch.full((1, p), _EMPTY, dtype=i64, device=device)
        self.r_win = torch.full((p,), -1, dtype=i64, device=device)
        self.r_acts = torch.zeros((p, t, n_feat), dtype=f32, device=device)
        self.tokens: dict[int, tuple[np.ndarray, int]] = {}

    _TENSORS = ("count_active", "sum", "sum_active", "max", "top_key", "top_val", "top_win", "top_acts", "q_key",
                "q_win", "q_max", "q_acts", "r_key", "r_win", "r_acts")

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

    def finished(self) -> FinishedState:
        """The state as numpy arrays for the records store (after pruning the token rows)."""
        self.prune_tokens()
        st = {n: getattr(self, n).cpu().numpy() for n in ("top_val", "top_win", "top_acts", "q_win", "q_max", "q_acts",
                                                           "r_win", "r_acts", "count_active", "sum", "sum_active",
                                                           "max")}
        st["top_valid"] = (self.top_key >= 0).cpu().numpy()
        st["q_valid"] = (self.q_key >= 0).cpu().numpy()
        rk = self.r_key[0].cpu().numpy()
        valid_slots = np.nonzero(rk >= 0)[0]
        st["r_order"] = valid_slots[np.argsort(-rk[valid_slots], kind="stable")]
        return FinishedState(st, dict(self.tokens), self.n_tokens, self.n_windows)


def _merge(state_key: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the K largest of [state (F, K) | candidates (F, B)]. Returns (feature, slot, candidate) triples:
    candidate ``b`` of feature ``f`` replaces slot ``k`` (an evicted or empty one). Untouched slots stay put.

    Keys are distinct within a row (they encode the window index), so the kept set is unique whatever the
    order of arrival. Only rows where some candidate beats the row's smallest kept key are merged."""
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


def merge_states(into: _State, other: _State) -> None:
    """Merge ``other`` (a disjoint set of windows) into ``into``: the same state as one pass over both."""
    into.n_tokens += other.n_tokens
    into.n_windows += other.n_windows
    into.batches += other.batches
    into.count_active += other.count_active
    into.sum += other.sum
    into.sum_active += other.sum_active
    into.max = torch.maximum(into.max, other.max)
    fa, ka, ba = _merge(into.top_key, other.top_key)
    if len(fa):
        for n in ("top_key", "top_val", "top_win", "top_acts"):
            getattr(into, n)[fa, ka] = getattr(other, n)[fa, ba]
    fa, ka, ba = _merge(into.q_key, other.q_key)
    if len(fa):
        for n in ("q_key", "q_win", "q_max", "q_acts"):
            getattr(into, n)[fa, ka] = getattr(other, n)[fa, ba]
    _, ka, ba = _merge(into.r_key, other.r_key)
    if len(ka):
        into.r_key[0, ka] = other.r_key[0, ba]
        into.r_win[ka] = other.r_win[ba]
        into.r_acts[ka] = other.r_acts[ba]
    into.tokens.update(other.tokens)
    into.prune_tokens()


class _BatchActs:
    """Feature activations of one batch, dense [B, T, F] or sparse top-k, with the few ops the state needs."""

    def __init__(self, acts: DenseActs | TopKActs, positions: torch.Tensor | None, select: torch.Tensor | None,
                 n_feat: int, b: int, t: int, valid: torch.Tensor) -> None:
        self.b, self.t, self.n_feat = b, t, n_feat
        self.valid = valid  # [B, T] bool
        self.dense: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None  # dense as [B * F, T] rows, made on the first large fetch
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
            # dense[wins, :, feats] reads each [T] vector with a stride of F (a cache miss per value); for many
            # pairs (the first batches admit most of them) one transposed copy and contiguous rows are ~5x faster.
            if self._rows is None and len(feats) * 8 >= self.b * self.n_feat:
                self._rows = self.dense.permute(0, 2, 1).contiguous().view(self.b * self.n_feat, self.t)
            if self._rows is not None:
                return self._rows.index_select(0, wins * self.n_feat + feats)
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


def _update(state: _State, batch: WindowBatch, acts: _BatchActs, cfg: SamplingConfig) -> None:
    dev = state.top_val.device
    count, s, sa, mx, cand = acts.stats()  # cand [B, F]: window max where firing, else -inf
    state.n_tokens += batch.n_tokens
    state.n_windows += len(batch.index)
    state.count_active += count
    state.sum += s
    state.sum_active += sa
    state.max = torch.maximum(state.max, mx)
    win_index = batch.index.to(dev)
    if int(win_index.max()) > _W_MAX:
        raise UserError(f"window index {int(win_index.max())} exceeds {_W_MAX}; sample fewer tokens per run")

    # top windows by max activation (ties: lower window index)
    cand_t = cand.T.contiguous()  # [F, B]
    firing = cand_t > 0
    never = torch.full_like(state.top_key[:, :1], _NEVER).expand_as(cand_t)
    tk = torch.where(firing, _compose(_value_high(cand_t.clamp(min=0.0)), win_index[None, :]), never)
    fa, ka, ba = _merge(state.top_key, tk)
    if len(fa):
        state.top_key[fa, ka] = tk[fa, ba]
        state.top_val[fa, ka] = cand_t[fa, ba]
        state.top_win[fa, ka] = win_index[ba]
        state.top_acts[fa, ka] = acts.fetch(fa, ba)

    # quantile reservoir: uniform sample of firing windows via random priority keys of (seed, window, feature)
    qk = torch.where(firing, _compose(_random_high(cfg.seed, 1, win_index, state.feat_ids), win_index[None, :]),
                     never)
    fa, ka, ba = _merge(state.q_key, qk)
    if len(fa):
        state.q_key[fa, ka] = qk[fa, ba]
        state.q_win[fa, ka] = win_index[ba]
        state.q_max[fa, ka] = cand_t[fa, ba]
        state.q_acts[fa, ka] = acts.fetch(fa, ba)

    # shared random pool: keys of (seed, window)
    rk = _compose(_random_high(cfg.seed, 2, win_index, None), win_index)[None, :]
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


def _check_finite(t: torch.Tensor, source: FeatureSource, what: str, dtype: torch.dtype) -> None:
    # A sum is finite exactly when every element is (NaN and +-inf propagate), unless the sum itself overflows,
    # which the exact test then tells apart. One reduction instead of isfinite().all() (a bool copy of the
    # whole tensor, then a pass over it): ~10x cheaper, ~30% of the state update of a dense batch on CPU.
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    if math.isfinite(float(t.sum(dtype=acc))) or bool(torch.isfinite(t).all()):
        return
    name = str(dtype).removeprefix("torch.")
    raise UserError(
        f"non-finite {what} at hook {source.hook} ({source.address}) in {name} (e.g. float16 overflow); "
        "run with --dtype bfloat16 or --dtype float32"
    )


class Sampler:
    """The per-batch part of the pass: ``step(batch)`` runs the model to the hook, encodes, updates the state.

    The source is moved to the subject's device and dtype. ``run_sampling`` drives it over a corpus with
    checkpoints; benchmarks call ``step`` directly."""

    def __init__(self, subject: Subject, source: FeatureSource, config: SamplingConfig) -> None:
        config.validate()
        feats = selected_features(config, source)
        subject.check_hook(source.hook)
        source = source.to(subject.device, subject.dtype)
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
        self.state = _State(feats, config, dev)

    @torch.inference_mode()
    def step(self, batch: WindowBatch) -> None:
        """Process one batch of windows: forward to the source's hook, then ``consume``."""
        hook = self.source.hook
        self.consume(batch, self.subject.run(batch.input_ids, [hook])[hook])

    @torch.inference_mode()
    def consume(self, batch: WindowBatch, h: torch.Tensor) -> None:
        """Encode the activations ``h [B, T, d]`` at the source's hook and update the state."""
        bsz, t, d = h.shape
        dtype = self.subject.dtype
        _check_finite(h, self.source, "model activations", dtype)
        enc = self.source.encode(h.reshape(bsz * t, d), self._feats_arg)
        _check_finite(enc.values, self.source, "feature activations", dtype)
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


PARTIAL = "partial.pt"


def _fingerprint(config: SamplingConfig, source: FeatureSource, subject: Subject, windows: TokenWindows,
                 shard: Shard | None) -> dict[str, Any]:
    """What a checkpoint or partial state must match to be resumed or merged (shard aside)."""
    return {"state_version": STATE_VERSION, "config": config_to_dict(config), "source": source.address,
            "model": subject.name, "corpus": windows.describe(),
            "shard": None if shard is None else [shard.index, shard.count]}


def _records_meta(source: FeatureSource, subject: Subject, windows: TokenWindows, config: SamplingConfig,
                  content: str) -> dict[str, Any]:
    return {
        "source": source.address,
        "hook": str(source.hook),
        "model": subject.name,
        "n_source_features": source.n_features,
        "corpus": windows.describe(),
        "content_fingerprint": content,
        "tokenizer": getattr(subject.tokenizer, "name_or_path", None),
        "config": config_to_dict(config),
    }


def source_slug(address: str) -> str:
    """The folder name of a source in a run holding several (``<run>/sources/<slug>``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", address).strip("_") or "source"


def source_dirs(run_dir: Path) -> list[Path]:
    """The sample-run folders of ``run_dir``: itself for one source, ``sources/<slug>`` for several."""
    run_dir = Path(run_dir)
    multi = run_dir / "sources"
    if multi.is_dir() and not (run_dir / "records").exists():
        return sorted(p for p in multi.iterdir() if p.is_dir())
    return [run_dir]


def run_sampling(
    subject: Subject,
    source: FeatureSource | Sequence[FeatureSource],
    windows: TokenWindows,
    config: SamplingConfig,
    run_dir: Path,
    progress: ProgressCallback | None = None,
    shard: Shard | None = None,
) -> SamplingResult:
    """Run the sampling pass and write ``run_dir/records`` (with ``shard``: its mergeable partial state);
    resumes from a checkpoint there if one exists, and returns at once when the output is already complete.

    Several sources (a sequence) share one forward pass, stopped after the deepest hook; each gets its own
    records in ``run_dir/sources/<slug>/records`` (its feature ids keep its address). The result is the first
    source's, with ``n_features`` and ``n_dead`` summed over the sources."""
    config.validate()
    if windows.window != config.window:
        raise UserError(f"corpus windows have {windows.window} tokens but the config says {config.window}")
    sources = list(source) if isinstance(source, Sequence) else [source]
    if not sources:
        raise UserError("no source to sample; give --hook or --sae")
    dupes = sorted({s.address for s in sources if [t.address for t in sources].count(s.address) > 1})
    if dupes:
        raise UserError(f"source {dupes[0]} is given twice; give each hook or SAE once")
    multi = len(sources) > 1
    rec_dirs = _records_dirs(run_dir, sources)
    for r in rec_dirs:
        r.mkdir(parents=True, exist_ok=True)
    fingerprints = [_fingerprint(config, s, subject, windows, shard) for s in sources]
    done = finished_pass(subject, sources, windows, config, run_dir, shard)
    if done is not None:
        return done

    samplers = [Sampler(subject, s, config) for s in sources]
    hooks = list(dict.fromkeys(s.source.hook for s in samplers))
    state = samplers[0].state  # the counters (tokens, windows, batches) are the same in every state
    ckpt = (Path(run_dir) / "sources" if multi else rec_dirs[0]) / ".checkpoint.pt"
    digest = ContentDigest()
    resumed = False
    expect: str | None = None
    if ckpt.exists():
        d = torch.load(ckpt, map_location="cpu", weights_only=False)
        if d.get("fingerprint") != fingerprints:
            raise RunDirError(f"{ckpt} is a checkpoint of another configuration; use a new --run-dir")
        for smp, st in zip(samplers, d["states"], strict=True):
            smp.state.load_dict(st, subject.device)
        expect = str(d["content"])
        resumed = True
        log.info("resuming sampling at window %d (%d tokens done)", state.next_window, state.n_tokens)

    def check_content() -> None:
        if expect is not None and digest.hexdigest() != expect:
            raise RunDirError(
                f"corpus {windows.name} changed since the checkpoint in {ckpt.parent} (its content fingerprint "
                "differs); restore the corpus or sample into a new --run-dir"
            )

    t0 = time.perf_counter()
    tokens_run = 0
    checked = False
    for batch in windows.batches(config.batch_size, start=state.next_window, shard=shard,
                                 skipped=digest if resumed else None):
        if not checked:
            check_content()
            checked = True
        if state.n_tokens >= config.tokens:
            break
        if multi:
            with torch.inference_mode():
                acts = subject.run(batch.input_ids, hooks)  # one forward pass for every source
            for smp in samplers:
                smp.consume(batch, acts[smp.source.hook])
        else:
            samplers[0].step(batch)
        digest.update_batch(batch)
        tokens_run += batch.n_tokens
        if state.batches % config.checkpoint_every == 0:
            for smp in samplers:
                smp.state.prune_tokens()
            _save_torch(ckpt, {"fingerprint": fingerprints, "states": [smp.state.to_dict() for smp in samplers],
                               "content": digest.hexdigest()})
        if progress is not None:
            progress(state.n_tokens, config.tokens)
    if not checked:
        check_content()
    seconds = time.perf_counter() - t0
    rate = tokens_run / seconds if tokens_run and seconds > 0 else None
    if state.n_windows == 0 and shard is None:
        raise UserError(f"corpus {windows.name} produced no windows; pass a corpus with text in it")
    results = [_finish(smp, rec_dir, fp, subject, windows, config, digest, shard, seconds, rate, resumed)
               for smp, rec_dir, fp in zip(samplers, rec_dirs, fingerprints, strict=True)]
    ckpt.unlink(missing_ok=True)
    return _combined(results)


def _records_dirs(run_dir: Path, sources: Sequence[FeatureSource]) -> list[Path]:
    multi = len(sources) > 1
    return [(Path(run_dir) / "sources" / source_slug(s.address) if multi else Path(run_dir)) / "records"
            for s in sources]


def finished_pass(subject: Subject, sources: Sequence[FeatureSource], windows: TokenWindows, config: SamplingConfig,
                  run_dir: Path, shard: Shard | None = None) -> SamplingResult | None:
    """The result of an earlier pass of the same settings that finished in ``run_dir``, or None when there is
    none. RunDirError when the records there are of other settings, or when the corpus changed since that pass
    (:func:`check_corpus_unchanged`): a finished run is never reused over another corpus."""
    fingerprints = [_fingerprint(config, s, subject, windows, shard) for s in sources]
    done = [_already_done(r, fp, shard) if r.exists() else None
            for r, fp in zip(_records_dirs(run_dir, sources), fingerprints, strict=True)]
    if not all(d is not None for d in done):
        return None
    finished = [d for d in done if d is not None]
    parts = load_records_meta(finished[0].records_dir.parent).get("merged_from") if shard is None else None
    if parts:  # merged shards: each read its own windows, so each shard's fingerprint is checked
        for part in parts:
            path = Path(part) / "records" / PARTIAL
            if not path.exists():
                log.warning("cannot check the corpus of shard %s (its partial state is gone)", part)
                continue
            d = torch.load(path, map_location="cpu", weights_only=False)
            i, n = (int(x) for x in d["fingerprint"]["shard"])
            own = replace(finished[0], n_windows=int(d["state"]["n_windows"]), content_fingerprint=str(d["content"]))
            check_corpus_unchanged(windows, own, config.batch_size, Shard(i, n))
    else:
        check_corpus_unchanged(windows, finished[0], config.batch_size, shard)
    return _combined(finished)


def check_corpus_unchanged(windows: TokenWindows, done: SamplingResult, batch_size: int, shard: Shard | None) -> None:
    """Refuse (RunDirError) to reuse a finished pass whose corpus changed since: the content fingerprint of the
    windows it read (its first ``done.n_windows`` windows, of ``shard`` where given) is computed again from the
    corpus as it is now (tokenizing only, no model) and compared with the one stored."""
    if done.content_fingerprint is None:
        return
    digest = ContentDigest()
    seen = 0
    for i, row, length in windows:
        if seen >= done.n_windows:
            break
        if shard is None or shard.owns(i, batch_size):
            digest.update(i, row, length)
            seen += 1
    if seen < done.n_windows or digest.hexdigest() != done.content_fingerprint:
        raise RunDirError(
            f"corpus {windows.name} changed since the pass in {done.records_dir.parent} finished (its content "
            "fingerprint differs); restore the corpus or sample into a new --run-dir"
        )


def _combined(results: list[SamplingResult]) -> SamplingResult:
    if len(results) == 1:
        return results[0]
    dead = [r.n_dead for r in results]
    return replace(results[0], n_features=sum(r.n_features for r in results),
                   n_dead=None if any(d is None for d in dead) else sum(d for d in dead if d is not None))


def _finish(sampler: Sampler, rec_dir: Path, fingerprint: dict[str, Any], subject: Subject, windows: TokenWindows,
            config: SamplingConfig, digest: ContentDigest, shard: Shard | None, seconds: float, rate: float | None,
            resumed: bool) -> SamplingResult:
    """Write one source's records (or, for a shard, its partial state)."""
    state, source = sampler.state, sampler.source
    meta = _records_meta(source, subject, windows, config, digest.hexdigest())
    if shard is not None:
        state.prune_tokens()
        used = sorted({int(x) for row, _ in state.tokens.values() for x in np.unique(row)})
        vocab = dict(zip(used, _decoder(subject.tokenizer)(used), strict=True))
        _save_torch(rec_dir / PARTIAL, {"fingerprint": fingerprint, "state": state.to_dict(), "meta": meta,
                                        "features": sampler.features, "content": digest.hexdigest(),
                                        "content_start": windows.content_start, "vocab": vocab})
        return SamplingResult(rec_dir, state.n_tokens, state.n_windows, len(sampler.features), None, seconds,
                              rate, resumed, digest.hexdigest())
    n_dead = write_records(rec_dir, state.finished(), sampler.features, config.split_sizes(), config.window,
                           windows.content_start, _decoder(subject.tokenizer), meta)
    return SamplingResult(rec_dir, state.n_tokens, state.n_windows, len(sampler.features), n_dead, seconds, rate,
                          resumed, digest.hexdigest())


def _decoder(tokenizer: Any) -> Callable[[list[int]], list[str]]:
    def decode(ids: list[int]) -> list[str]:
        return [str(x) for x in tokenizer.batch_decode([[i] for i in ids])]

    return decode


def _already_done(rec_dir: Path, fingerprint: dict[str, Any], shard: Shard | None) -> SamplingResult | None:
    """The result of a finished earlier run with the same settings; RunDirError when it had other settings."""
    if shard is not None:
        path = rec_dir / PARTIAL
        if not path.exists():
            return None
        d = torch.load(path, map_location="cpu", weights_only=False)
        if d.get("fingerprint") != fingerprint:
            raise RunDirError(f"{path} is a shard of another configuration; use a new --run-dir")
        log.info("shard %s already complete in %s", shard, rec_dir)
        st = d["state"]
        return SamplingResult(rec_dir, int(st["n_tokens"]), int(st["n_windows"]), len(d["features"]), None, 0.0,
                              None, True, str(d["content"]))
    meta_path = rec_dir / "meta.json"
    if not meta_path.exists():
        return None
    meta = load_records_meta(rec_dir.parent)
    if meta.get("config") != fingerprint["config"] or meta.get("source") != fingerprint["source"]:
        raise RunDirError(f"{rec_dir} holds records of another configuration; use a new --run-dir")
    log.info("records already complete in %s", rec_dir)
    return SamplingResult(rec_dir, int(meta["n_tokens"]), int(meta["n_windows"]), len(meta["features"]),
                          int(meta["n_dead"]), 0.0, None, True, meta.get("content_fingerprint"))


def _save_torch(path: Path, obj: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_from_dict(raw: dict[str, Any]) -> SamplingConfig:
    """The inverse of ``config_to_dict`` for a SamplingConfig."""
    feats = raw.get("features")
    return SamplingConfig(**{**raw, "features": None if feats is None else tuple(int(f) for f in feats)})


# -- merging shards ------------------------------------------------------------------------------------
def read_partial(run_dir: Path) -> dict[str, Any]:
    """The partial state of a finished shard run (``records/partial.pt``)."""
    path = Path(run_dir) / "records" / PARTIAL
    if not path.exists():
        raise UserError(f"{run_dir} holds no finished shard ({path} is missing); run or finish that shard first")
    return dict(torch.load(path, map_location="cpu", weights_only=False))


def check_partials(parts: Sequence[Path]) -> list[dict[str, Any]]:
    """Load the partial states of ``parts`` and check they are the n shards of one pass, each once."""
    if not parts:
        raise UserError("give the shard run directories to merge")
    loaded = [read_partial(p) for p in parts]
    first = {k: v for k, v in loaded[0]["fingerprint"].items() if k != "shard"}
    for p, d in zip(parts, loaded, strict=True):
        other = {k: v for k, v in d["fingerprint"].items() if k != "shard"}
        if other != first:
            diff = sorted(k for k in first if first[k] != other.get(k))
            raise UserError(
                f"{p} is a shard of another pass than {parts[0]} (different {', '.join(diff)}); merge shards of one "
                "`sample --shard` run"
            )
    count = int(loaded[0]["fingerprint"]["shard"][1])
    seen: dict[int, Path] = {}
    for p, d in zip(parts, loaded, strict=True):
        i, n = (int(x) for x in d["fingerprint"]["shard"])
        if n != count:
            raise UserError(f"{p} is shard {i}/{n} but {parts[0]} is one of {count}; merge shards of one run")
        if i in seen:
            raise UserError(f"shard {i}/{n} is given twice ({seen[i]} and {p}); give each shard once")
        seen[i] = p
    missing = [i for i in range(count) if i not in seen]
    if missing:
        raise UserError(
            f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing; give all {count} shards to merge"
        )
    return [loaded[int(p)] for p in sorted(range(len(loaded)), key=lambda j: int(loaded[j]["fingerprint"]["shard"][0]))]


def merge_partials(parts: Sequence[Path], out: Path, loaded: list[dict[str, Any]] | None = None) -> SamplingResult:
    """Merge the partial states of all shards of one pass into ``out/records``, identical to the records of an
    unsharded run. Checks everything before writing anything (``loaded``: ``check_partials(parts)``, if done)."""
    loaded = check_partials(parts) if loaded is None else loaded
    rec_dir = Path(out) / "records"
    if (rec_dir / "meta.json").exists():
        raise RunDirError(f"{rec_dir} already holds records; merge into a new --out directory")
    t0 = time.perf_counter()
    d0 = loaded[0]
    cfg = config_from_dict(d0["fingerprint"]["config"])
    feats = list(d0["features"])
    cpu = torch.device("cpu")
    merged = _State(feats, cfg, cpu)
    merged.load_dict(d0["state"], cpu)
    content = ContentDigest.from_hex(str(d0["content"]))
    vocab: dict[int, str] = dict(d0["vocab"])
    for d in loaded[1:]:
        other = _State(feats, cfg, cpu)
        other.load_dict(d["state"], cpu)
        merge_states(merged, other)
        content.combine(ContentDigest.from_hex(str(d["content"])))
        vocab.update(d["vocab"])
    if merged.n_windows == 0:
        raise UserError(f"the shards of {d0['meta']['corpus']['corpus']} produced no windows; sample more tokens")
    rec_dir.mkdir(parents=True, exist_ok=True)
    meta = {**d0["meta"], "content_fingerprint": content.hexdigest(),
            "merged_from": [str(Path(p).resolve()) for p in parts]}

    def decode(ids: list[int]) -> list[str]:
        return [vocab[i] for i in ids]

    n_dead = write_records(rec_dir, merged.finished(), feats, cfg.split_sizes(), cfg.window,
                           int(d0["content_start"]), decode, meta)
    return SamplingResult(rec_dir, merged.n_tokens, merged.n_windows, len(feats), n_dead,
                          time.perf_counter() - t0, None, False, content.hexdigest())


def _shard_sources(parts: Sequence[Path]) -> list[str] | None:
    """The source folders shared by every shard of a several-source pass; None for one-source shards."""
    kinds = [(Path(p) / "sources").is_dir() and not (Path(p) / "records").exists() for p in parts]
    if not any(kinds):
        return None
    if not all(kinds):
        raise UserError("some shards hold several sources and some one; merge shards of one `sample --shard` run")
    names = [sorted(d.name for d in (Path(p) / "sources").iterdir() if d.is_dir()) for p in parts]
    for p, n in zip(parts, names, strict=True):
        if n != names[0]:
            raise UserError(f"{p} holds other sources than {parts[0]}; merge shards of one `sample --shard` run")
    return names[0]


def check_shard_runs(parts: Sequence[Path]) -> list[list[dict[str, Any]]]:
    """``check_partials`` for every source of the shard runs ``parts`` (one or several sources each)."""
    names = _shard_sources(parts)
    if names is None:
        return [check_partials(parts)]
    return [check_partials([Path(p) / "sources" / n for p in parts]) for n in names]


def merge_shard_runs(parts: Sequence[Path], out: Path) -> SamplingResult:
    """Merge shard runs (of one or several sources) into ``out``; everything is checked before writing."""
    loaded = check_shard_runs(parts)
    names = _shard_sources(parts)
    if names is None:
        return merge_partials(parts, out, loaded[0])
    results = [merge_partials([Path(p) / "sources" / n for p in parts], Path(out) / "sources" / n, lo)
               for n, lo in zip(names, loaded, strict=True)]
    return _combined(results)


# -- the one library call ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSetup:
    """What to sample: the subject model, the source (neurons at a hook, or an SAE) and the corpus."""

    model: str | None = None
    """Subject model: embedded gemma3-270m (default) or smollm2-135m, a local folder, or a Hugging Face id.
    With --sae, defaults to the SAE's model."""
    hook: str | None = None
    """Hook point for neurons, e.g. L6/mlp_neurons or L6/resid_post; a comma list (L3/mlp_neurons,L6/mlp_neurons)
    samples them all in one forward pass."""
    sae: str | None = None
    """SAE registry address (see `autointerp sources`) or the path of a local SAE file or folder; a comma list of
    addresses samples them all in one forward pass."""
    sae_dir: Path | None = None
    """Local folder laid out like the SAE's hub repo (files of a registry --sae address)."""
    corpus: str = "wiki"
    """wiki (embedded), lee, a .txt/.jsonl/.parquet file, or hf:<dataset>[:split]."""
    text_field: str = "text"
    """Text field/column of .jsonl/.parquet/hf corpora."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, ..."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16 (the source computes in the same dtype)."""
    threads: int = 2
    """CPU threads for torch."""

    def address(self) -> tuple[str, str]:
        """(subject model name, source address(es), comma-separated) without loading the model; UserError on
        bad options."""
        name, addresses, _ = self.resolve_all()
        return name, ",".join(addresses)

    def resolve_all(self) -> tuple[str, list[str], list[Callable[[Subject], FeatureSource]]]:
        """Like ``resolve`` for comma-separated lists of hooks (``--hook L3/mlp_neurons,L6/mlp_neurons``) or
        SAEs (``--sae a,b``): several sources of one subject model, sampled in one forward pass."""
        if self.sae and "," in self.sae:
            parts = [replace(self, sae=a.strip(), hook=None) for a in self.sae.split(",") if a.strip()]
        elif not self.sae and self.hook and "," in self.hook:
            parts = [replace(self, hook=h.strip()) for h in self.hook.split(",") if h.strip()]
        else:
            parts = [self]
        resolved = [p.resolve() for p in parts]
        models = sorted({r[0] for r in resolved})
        if len(models) > 1:
            raise UserError(
                f"the sources read different models ({', '.join(models)}); sample one model's sources per run"
            )
        return models[0], [r[1] for r in resolved], [r[2] for r in resolved]

    def resolve(self) -> tuple[str, str, Callable[[Subject], FeatureSource]]:
        """(subject model name, source address, source loader given the subject); nothing heavy is loaded.

        ``sae`` is a registry address, or the path of a local SAE file or folder (any format ``load_sae``
        reads; its header is read now). ``model`` with ``sae`` is the subject model the SAE is applied to
        (default: the SAE's own)."""
        from autointerp.hooks import HookPoint

        if self.sae:
            local = Path(self.sae).expanduser()
            if local.exists() or self.sae.startswith(("/", "~", "./", "../")):
                return _local_sae(local, self.model, self.hook)
            sae_dir = self.sae_dir
            if sae_dir is not None and not sae_dir.expanduser().is_dir():
                raise UserError(
                    f"--sae-dir {sae_dir} is not a folder; pass the folder laid out like the SAE's hub repo"
                )
            from autointerp.sources.registry import resolve_address, resolve_source

            spec = resolve_address(self.sae)
            if self.hook and HookPoint.parse(self.hook) != spec.hook:
                raise UserError(f"--hook {self.hook} does not match {self.sae}, which reads {spec.hook}; drop --hook")
            sae = self.sae

            def registry(subject: Subject) -> FeatureSource:
                return resolve_source(sae, local_dir=sae_dir, subject=subject)

            return self.model or spec.model, spec.address, registry
        if self.sae_dir is not None:
            raise UserError("--sae-dir only applies with --sae ADDRESS; drop it, or add --sae")
        if not self.hook:
            raise UserError("give --hook (e.g. --hook L6/mlp_neurons) for neurons, or --sae ADDRESS for an SAE")
        hp = HookPoint.parse(self.hook)
        name = self.model or "gemma3-270m"

        def neurons(subject: Subject) -> FeatureSource:
            from autointerp.sources.neurons import neuron_source

            return neuron_source(name, hp, subject.hook_dim(hp))

        return name, f"{name}/{hp}", neurons


def _local_sae(path: Path, model: str | None, hook: str | None) -> tuple[str, str, Callable[[Subject], FeatureSource]]:
    """A local SAE file or folder: its header is read now (format, width, hook); weights when sampling."""
    from autointerp.sources.formats import check_compatible, load_sae

    sae = load_sae(path, hook=hook)
    name = model or sae.model_name
    if not name:
        raise UserError(f"--sae {path} does not name the model it was trained on; pass --model NAME")

    def loader(subject: Subject) -> FeatureSource:
        check_compatible(sae, int(subject.hook_dim(sae.hook)), name)
        return sae

    return name, sae.address, loader


@dataclass
class SamplingJob:
    """A loaded, checked sampling job: ``run(run_dir)`` samples (see ``prepare_sampling``)."""

    setup: SamplingSetup
    config: SamplingConfig
    subject: Subject
    sources: list[FeatureSource]
    """One or several sources (several share one forward pass)."""
    windows: TokenWindows

    def finished(self, run_dir: Path, shard: Shard | None = None) -> SamplingResult | None:
        """The result of this pass if it already finished in ``run_dir`` (see :func:`finished_pass`)."""
        return finished_pass(self.subject, self.sources, self.windows, self.config, run_dir, shard)

    @property
    def source(self) -> FeatureSource:
        """The first source."""
        return self.sources[0]

    def describe(self) -> dict[str, Any]:
        """Manifest entries of the job."""
        return {"model": self.subject.name, "source": ",".join(s.address for s in self.sources),
                "hook": ",".join(str(s.hook) for s in self.sources),
                "corpus": self.windows.describe(), "seeds": {"sampling": self.config.seed},
                "device": self.setup.device, "dtype": self.setup.dtype, "threads": self.setup.threads}

    def run(self, run_dir: Path, progress: ProgressCallback | None = None, shard: Shard | None = None
            ) -> SamplingResult:
        if self.subject.device.type == "meta":
            raise RuntimeError("this job was prepared with weights=False (checks only); prepare it with weights")
        target: FeatureSource | list[FeatureSource] = self.sources if len(self.sources) > 1 else self.sources[0]
        return run_sampling(self.subject, target, self.windows, self.config, run_dir, progress, shard)


def prepare_sampling(setup: SamplingSetup, config: SamplingConfig, *, weights: bool = True) -> SamplingJob:
    """Load the subject, the source (moved to the subject's device and dtype) and the corpus, and check the
    features and the source's weights; every bad input fails here, before anything is written.

    ``weights=False`` checks the same inputs without the subject's weights (its model is built on the meta
    device, and the source stays where it was loaded): the driver of a sharded run, whose workers load the
    model themselves, so the driver's checks do not cost one more model load. Such a job cannot ``run``."""
    from autointerp.checks import check_source
    from autointerp.corpus import load_corpus
    from autointerp.subject import load_subject

    config.validate()
    subject_name, _, loaders = setup.resolve_all()
    subject = load_subject(subject_name, device=setup.device, dtype=setup.dtype, threads=setup.threads,
                           weights=weights)
    sources = []
    for load_source in loaders:
        source = load_source(subject)
        subject.check_hook(source.hook)
        sources.append(source.to(subject.device, subject.dtype) if weights else source)
    windows = load_corpus(setup.corpus, subject.tokenizer, config.window, max_tokens=config.tokens,
                          seed=config.seed, text_field=setup.text_field)
    for source in sources:
        check_source(source, selected_features(config, source))
    return SamplingJob(setup, config, subject, sources, windows)
