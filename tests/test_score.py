"""Scorers: pooled correlation (identical to OpenAI's), calibration scores, judges, bootstrap, baseline."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fake_llm import FakeLLM, synthetic_record

from autointerp.llm.base import ChatRequest
from autointerp.records import ActivationRecord, Simulation
from autointerp.score import (
    DetectionScorer,
    FuzzingScorer,
    SAEBenchDetectionScorer,
    SAEBenchSettings,
    balanced_accuracy,
    bootstrap_ci,
    correlation_score,
    derangement,
    parse_binary_list,
    parse_index_list,
    simulation_scores,
)


def _openai_ev_correlation(real: list[list[float]], pred: list[list[float]]) -> float:
    # copy of OpenAI neuron-explainer's ev_correlation: flatten over all records, np.corrcoef
    flat_real = [a for rec in real for a in rec]
    flat_pred = [a for rec in pred for a in rec]
    return float(np.corrcoef(flat_real, flat_pred)[0, 1])


def _recs(arrays: list[np.ndarray]) -> list[ActivationRecord]:
    return [ActivationRecord(tokens=["t"] * len(a), token_ids=[0] * len(a), activations=a) for a in arrays]


def test_pooled_correlation_matches_openai_formula() -> None:
    rng = np.random.default_rng(0)
    true = [rng.normal(size=64).astype(np.float32) for _ in range(10)]
    pred = [(t + rng.normal(size=64)).astype(np.float32) for t in true]
    s = correlation_score("correlation", _recs(true), [Simulation(expected=p) for p in pred])
    ref = _openai_ev_correlation([t.tolist() for t in true], [p.tolist() for p in pred])
    assert s.value == pytest.approx(ref, abs=1e-6)


def test_constant_activations_are_undefined_not_nan() -> None:
    s = correlation_score("correlation", _recs([np.zeros(5, np.float32)]), [Simulation(expected=np.arange(5.0))])
    assert s.value is None and s.reason == "true activations are constant"
    s = correlation_score("correlation", _recs([np.arange(5.0)]), [Simulation(expected=np.zeros(5))])
    assert s.value is None and "simulated" in (s.reason or "")


def test_failed_simulations_are_not_zeros() -> None:
    recs = _recs([np.arange(4.0), np.arange(4.0)])
    sims = [Simulation(expected=np.arange(4.0)), Simulation(expected=None, failed="x")]
    assert correlation_score("c", recs, sims).value is None  # 50% failed > 20% allowed
    s = correlation_score("c", recs, sims, max_failed_fraction=0.5)
    assert s.value == pytest.approx(1.0) and s.details["n_failed"] == 1


def test_r_squared_and_ade_after_calibration() -> None:
    true = [np.array([0, 0, 4.0, 0]), np.array([0, 2.0, 0, 0])]
    pred = [Simulation(expected=t / 2) for t in true]  # perfect up to scale -> calibration fixes it
    cal = (
        _recs([np.array([0, 4.0]), np.array([2.0, 0])]),
        [Simulation(expected=np.array([0, 2.0])), Simulation(expected=np.array([1.0, 0]))],
    )
    scores = {
        s.name: s
        for s in simulation_scores(
            {"test_top": (_recs(true[:1]), pred[:1]), "test_random": (_recs(true[1:]), pred[1:])}, cal
        )
    }
    assert scores["correlation"].value == pytest.approx(1.0)
    assert scores["r_squared"].value == pytest.approx(1.0)
    assert scores["absolute_deviation_explained"].value == pytest.approx(1.0)
    assert scores["correlation_quantiles"].value is None
    # anti-correlated calibration: refused, undefined (never flips the sign)
    bad_cal = (cal[0], [Simulation(expected=np.array([2.0, 0])), Simulation(expected=np.array([0, 1.0]))])
    scores = {s.name: s for s in simulation_scores({"test_top": (_recs(true), pred)}, bad_cal)}
    assert scores["r_squared"].value is None and "refused" in (scores["r_squared"].reason or "")


def test_balanced_accuracy_constant_judge_is_chance() -> None:
    labels = [True] * 5 + [False] * 45
    assert balanced_accuracy(labels, [False] * 50) == 0.5
    assert balanced_accuracy(labels, [True] * 50) == 0.5
    assert balanced_accuracy(labels, labels) == 1.0
    assert isinstance(balanced_accuracy([True], [True]), str)


def test_strict_judge_parsing() -> None:
    assert parse_binary_list("Answer: [1, 0, 1]", 3) == [True, False, True]
    for bad in ["[1, 0]", "1, 0, 1", "[1, 2, 0]", "[true, false, true]"]:
        assert isinstance(parse_binary_list(bad, 3), str)
    assert parse_index_list("2, 5", 14) == {2, 5}
    assert parse_index_list("None", 14) == set()
    assert isinstance(parse_index_list("example two", 14), str)
    assert isinstance(parse_index_list("15", 14), str)


def _oracle_judge(req: ChatRequest) -> str:
    """Says 1 for examples whose text contains ' cat' (detection) / whose marks hold ' cat' (fuzzing)."""
    body = req.messages[-1].content
    lines = [ln for ln in body.splitlines() if ln.startswith("Example ")]
    if "<<" in body:
        spans = [re.findall(r"<<(.*?)>>", ln) for ln in lines]
        return str([int(bool(sp) and all(re.fullmatch(r"( cat)+", x) for x in sp)) for sp in spans])
    return str([int(" cat" in ln) for ln in lines])


async def test_detection_and_fuzzing_with_oracle_and_constant_judges() -> None:
    rec = synthetic_record(2)
    det = await DetectionScorer(FakeLLM(chat_fn=_oracle_judge)).score("cat", rec)
    assert det.value == 1.0
    # 6 positives + 4 negatives, 5/prompt: 2 judge requests + 2 P(yes) requests (the fake gives logprobs)
    assert det.details["requests"] == 4 and det.details["n_examples"] == 10
    fuzz = await FuzzingScorer(FakeLLM(chat_fn=_oracle_judge)).score("cat", rec)
    assert fuzz.value == 1.0
    always_yes = await DetectionScorer(FakeLLM(chat_fn=lambda r: "[1, 1, 1, 1, 1]")).score("cat", rec)
    assert always_yes.value == 0.5
    garbage = await DetectionScorer(FakeLLM(chat_fn=lambda r: "yes")).score("cat", rec)
    assert garbage.value is None and garbage.details["failed_prompts"] == 2


async def test_saebench_caveat_reproduced_and_corrected() -> None:
    rec = synthetic_record(4)
    # SAEBench-sized set: 2 top + 2 quantile + 10 random; make 4 of the random windows actually fire
    rec.test_random = [r for _ in range(3) for r in synthetic_record(5).test_random][:6] + synthetic_record(6).test_top
    none_judge = FakeLLM(chat_fn=lambda r: "None")
    s = await SAEBenchDetectionScorer(none_judge).score("cat", rec)
    assert s.value == pytest.approx(10 / 14)  # the caveat: answering "None" scores 0.714
    s2 = await SAEBenchDetectionScorer(none_judge, SAEBenchSettings(check_random=True)).score("cat", rec)
    assert s2.value == pytest.approx(6 / 14) and s2.name == "saebench_detection_checked"
    bad = await SAEBenchDetectionScorer(FakeLLM(chat_fn=lambda r: "maybe")).score("cat", rec)
    assert bad.value is None


def test_bootstrap_ci_and_derangement() -> None:
    m, lo, hi = bootstrap_ci([0.1, 0.2, 0.3, None, 0.4], n=500, seed=1) or (0, 0, 0)
    assert m == pytest.approx(0.25) and lo < m < hi
    assert bootstrap_ci([None]) is None
    perm = derangement(5, np.random.default_rng(0))
    assert sorted(perm.tolist()) == list(range(5)) and not np.any(perm == np.arange(5))


def test_label_prior_correlation_is_undefined_with_a_reason_not_a_number() -> None:
    from autointerp.records import Simulation
    from autointerp.score import label_prior_correlation

    a = [Simulation(np.array([0.0, 1.0, 2.0])), Simulation(np.array([1.0, 0.0, 3.0]))]
    same = label_prior_correlation(a, a)
    assert same.value == pytest.approx(1.0) and same.details["n_tokens"] == 6
    flipped = label_prior_correlation(a, [Simulation(-s.expected) for s in a])  # type: ignore[operator]
    assert flipped.value == pytest.approx(-1.0)
    const = label_prior_correlation(a, [Simulation(np.zeros(3)), Simulation(np.zeros(3))])
    assert const.value is None and "shuffled label is constant" in str(const.reason)
    failed = label_prior_correlation(a, [Simulation(None, failed="timeout"), Simulation(None, failed="timeout")])
    assert failed.value is None and "2 of 2" in str(failed.reason)
    assert label_prior_correlation([], []).value is None
