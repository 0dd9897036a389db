"""Puzzles: the dataset is well formed; with the real local simulator the correlation scorer ranks the
true explanation above the 3 false ones far more often than chance (25%)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from autointerp.score import load_puzzles, rank_puzzle

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_puzzles_are_well_formed_and_varied() -> None:
    puzzles = load_puzzles()
    assert len(puzzles) >= 20
    assert len({p.name for p in puzzles}) == len(puzzles)
    for p in puzzles:
        assert len(p.false_explanations) == 3 and p.explanation not in p.false_explanations
        assert p.records
        for r in p.records:
            assert len(r.tokens) == len(r.activations) and r.max_activation > 0
    # the true explanations are all different
    assert max(Counter(p.explanation for p in puzzles).values()) == 1


# Measured with local:qwen2.5-coder-1.5b: 23/25 puzzles solved (92%; chance 25%), and 8/8 of the first
# 8 (see benchmarks/README.md). The test runs the first 8 and asks for 6 (chance expects 2).
PUZZLE_SUBSET = 8
MIN_SOLVED = 6


@pytest.mark.slow
async def test_true_explanations_beat_false_ones_with_local_simulator() -> None:
    from autointerp.llm.base import ClientConfig
    from autointerp.llm.factory import make_client
    from autointerp.simulate import LogprobSimulator

    client = make_client("local:qwen2.5-coder-1.5b", ClientConfig(threads=2, timeout_s=600, cache=False))
    try:
        results = [
            await rank_puzzle(p, lambda text: LogprobSimulator(client, text)) for p in load_puzzles()[:PUZZLE_SUBSET]
        ]
    finally:
        await client.aclose()
    solved = sum(r.solved for r in results)
    assert all(r.true_score.value is not None for r in results)
    assert solved >= MIN_SOLVED, [(r.name, r.true_score.value, [f.value for f in r.false_scores]) for r in results]
