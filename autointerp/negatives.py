"""Hard negatives: non-activating windows that look like the activating ones.

Random non-activating windows make detection easy (delphi reports about 10% lower F1 with hard negatives).
:func:`hard_negatives` ranks a feature's non-firing windows from a pool by their similarity to the
feature's activating windows and keeps the most similar:

* ``tokens`` (default, no model): the number of the window's tokens that are among the feature's
  top-activating tokens (the token at the max of each ``train`` window), weighted by how often each is the
  top token; ties keep the pool's order.
* ``embedding``: cosine similarity of the window's sentence embedding to the mean embedding of the
  ``train`` windows (see :mod:`autointerp.embedding`).

Two pools, one per side of the train/test divide:

* scorers (detection, fuzzing, embedding, surprisal with ``--negatives hard``) rank the record's
  ``test_random`` split (uniform windows held out for scoring, never shown to the explainer); sample more
  random windows (``--n-random``) for a larger pool;
* the contrastive explainer ranks the ``train_random`` split (uniform windows on the train side, disjoint
  from every test split; ``--n-train-random``), so no held-out window is ever shown to an explainer and
  scoring stays honest.

The activating windows used for similarity are the ``train`` split only, so nothing held out for scoring
positives leaks into the choice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from autointerp.records import ActivationRecord, FeatureRecord

HARD_NEGATIVE_METHODS = ("tokens", "embedding")
NEGATIVE_POOLS = ("test_random", "train_random")
"""The splits hard negatives come from: ``test_random`` for scorers, ``train_random`` for explainers."""

EmbedFn = Callable[[Sequence[str]], npt.NDArray[np.float32]]
"""Texts -> [n, d] unit-norm embeddings."""


def top_token_weights(activating: Sequence[ActivationRecord]) -> Counter[int]:
    """How often each token id is the top-activating token of one of the ``activating`` windows."""
    return Counter(r.token_ids[int(np.argmax(r.activations))] for r in activating if len(r.activations))


def rank_by_similarity(
    pool: Sequence[ActivationRecord],
    activating: Sequence[ActivationRecord],
    by: str = "tokens",
    embed: EmbedFn | None = None,
) -> list[ActivationRecord]:
    """``pool`` sorted from most to least similar to ``activating`` (stable: ties keep the pool order)."""
    if not pool:
        return []
    if by == "tokens":
        weights = top_token_weights(activating)
        sim = np.asarray([sum(weights.get(t, 0) for t in r.token_ids) for r in pool], dtype=np.float64)
    elif by == "embedding":
        if embed is None:
            raise ValueError("hard negatives by embedding need an embedding function")
        if not activating:
            return list(pool)
        q = embed(["".join(r.tokens) for r in activating]).mean(axis=0)
        sim = embed(["".join(r.tokens) for r in pool]) @ q
    else:
        raise ValueError(f"unknown hard-negative method {by!r}; use one of {HARD_NEGATIVE_METHODS}")
    order = np.argsort(-sim, kind="stable")
    return [pool[int(i)] for i in order]


def hard_negatives(
    record: FeatureRecord,
    n: int,
    by: str = "tokens",
    embed: EmbedFn | None = None,
    pool: str = "test_random",
    below: float = 0.0,
) -> list[ActivationRecord]:
    """The ``n`` non-firing windows (max activation <= ``below``) of the split ``pool`` (``test_random`` for
    scorers, ``train_random`` for explainers) most similar to the feature's ``train`` windows."""
    if pool not in NEGATIVE_POOLS:
        raise ValueError(f"unknown negative pool {pool!r}; use one of {NEGATIVE_POOLS}")
    windows = [r for r in getattr(record, pool) if r.max_activation <= below]
    return rank_by_similarity(windows, record.train, by, embed)[:n]

