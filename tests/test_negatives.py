"""Hard negatives: non-firing held-out windows most like the activating ones, never a firing or train window."""

from __future__ import annotations

import numpy as np
from fake_llm import synthetic_record

from autointerp.negatives import hard_negatives, rank_by_similarity, top_token_weights
from autointerp.records import ActivationRecord


def _rec(ids: list[int], fire_at: int | None = None, window: int = 0) -> ActivationRecord:
    acts = np.zeros(len(ids), dtype=np.float32)
    if fire_at is not None:
        acts[fire_at] = 2.0
    return ActivationRecord([str(i) for i in ids], ids, acts, window)


def test_hard_negatives_share_the_top_tokens_and_never_fire() -> None:
    rec = synthetic_record(0)
    activating = [_rec([1, 7, 3], fire_at=1), _rec([7, 2, 2], fire_at=0), _rec([9, 5], fire_at=1)]
    assert top_token_weights(activating) == {7: 2, 5: 1}
    rec.train = activating
    rec.test_random = [
        _rec([2, 3, 4], window=10),  # shares nothing
        _rec([7, 7, 4], window=11),  # twice the most frequent top token
        _rec([5, 3, 3], window=12),  # once the rarer one
        _rec([7, 7, 7], fire_at=0, window=13),  # fires: never a negative
    ]
    got = [r.window for r in hard_negatives(rec, 3)]
    assert got == [11, 12, 10]
    assert 13 not in [r.window for r in hard_negatives(rec, 10)]


def test_embedding_similarity_ranking_uses_the_given_embedder() -> None:
    def embed(texts: list[str]) -> np.ndarray:  # 2-d toy embedding: "cat" vs anything else
        v = np.array([[1.0, 0.0] if "7" in t else [0.0, 1.0] for t in texts], dtype=np.float32)
        return v

    pool = [_rec([1, 2]), _rec([7, 2], window=5)]
    ranked = rank_by_similarity(pool, [_rec([7], fire_at=0)], by="embedding", embed=embed)  # type: ignore[arg-type]
    assert ranked[0].window == 5
