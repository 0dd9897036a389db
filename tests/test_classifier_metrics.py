"""Classifier metrics: AUC (equal to scikit-learn's), precision/recall/F1, pooled confusion, P(yes) reading."""

from __future__ import annotations

import numpy as np
import pytest
from fake_llm import FakeLLM, synthetic_record

from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest
from autointerp.records import Score
from autointerp.score import (
    ClassifierSettings,
    Confusion,
    DetectionScorer,
    FuzzingScorer,
    classifier_metrics,
    pooled_classifier_metrics,
    roc_auc,
)


def test_roc_auc_equals_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        y = rng.random(n) < 0.4
        if y.all() or not y.any():
            continue
        s = rng.integers(0, 4, size=n).astype(float)  # many ties
        assert roc_auc(y.tolist(), s.tolist()) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_one_class_sets_stay_undefined_with_a_reason() -> None:
    assert roc_auc([True, True], [0.1, 0.9]) == "no negative examples"
    values, reasons = classifier_metrics([False, False], [True, False], [0.2, 0.4])
    assert values["balanced_accuracy"] is None and reasons["balanced_accuracy"] == "no positive examples"
    assert values["auc"] is None and values["recall"] is None
    assert values["precision"] == 0.0  # one false positive: defined, zero


def test_precision_recall_f1_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score

    y = [True, True, True, False, False, False, False]
    p = [True, False, True, True, False, False, False]
    values, reasons = classifier_metrics(y, p)
    assert values["precision"] == pytest.approx(precision_score(y, p))
    assert values["recall"] == pytest.approx(recall_score(y, p))
    assert values["f1"] == pytest.approx(f1_score(y, p))
    assert values["auc"] is None and reasons["auc"] == "the judge gave no probabilities"
    never_yes, why = classifier_metrics(y, [False] * 7)
    assert never_yes["precision"] is None and "no positives" in why["precision"]


def test_pooled_confusion_sums_counts_across_latents() -> None:
    a = Score("detection", 1.0, details={"confusion": Confusion(2, 0, 2, 0).to_json()})
    b = Score("detection", 0.5, details={"confusion": Confusion(0, 0, 2, 2).to_json()})
    undefined = Score("detection", None, reason="no judge answer could be parsed")
    values, _ = pooled_classifier_metrics([a, b, undefined])
    assert values["recall"] == pytest.approx(0.5) and values["precision"] == pytest.approx(1.0)
    assert values["accuracy"] == pytest.approx(6 / 8)


def _oracle(req: ChatRequest) -> str:
    lines = [ln for ln in req.messages[-1].content.splitlines() if ln.startswith("Example ")]
    return str([int(" cat" in ln) for ln in lines])


def _yes_if_cat(prompt: str, pos: int) -> dict[str, float]:
    """P(1) high when the example whose slot this is mentions cat (the answer list is teacher-forced)."""
    slot = prompt[:pos].rsplit("Answer: [", 1)[1].count(",")
    examples = [ln for ln in prompt.splitlines() if ln.startswith("Example ")]
    p1 = 0.9 if " cat" in examples[slot] else 0.2
    return {"1": float(np.log(p1)), "0": float(np.log(1 - p1))}


async def test_detection_reads_p_yes_for_auc_and_records_metrics() -> None:
    judge = FakeLLM(chat_fn=_oracle, logprob_fn=_yes_if_cat)
    s = await DetectionScorer(judge).score("cat", synthetic_record(1))
    assert s.value == 1.0
    assert s.details["metrics"]["auc"] == 1.0 and s.details["n_with_probability"] == 10
    assert s.details["metrics"]["f1"] == 1.0 and s.details["confusion"] == {"tp": 6, "fp": 0, "tn": 4, "fn": 0}
    assert s.settings["judge_probabilities"] is True
    # one extra logprob request per chat request, counted in the cost
    assert len(judge.logprob_requests) == len(judge.chat_requests) == s.details["requests"] // 2
    off = await DetectionScorer(FakeLLM(chat_fn=_oracle), ClassifierSettings(judge_probabilities=False)).score(
        "cat", synthetic_record(1)
    )
    assert off.details["metrics"]["auc"] is None


def _answer_yes_if_cat(req: ChatRequest, answer: str, start: int) -> dict[str, float]:
    """The judge's own P(1) at the answer token starting at ``start``: high when that slot's example mentions cat."""
    slot = answer[:start].count(",")
    examples = [ln for ln in req.messages[-1].content.splitlines() if ln.startswith("Example ")]
    p1 = 0.9 if " cat" in examples[slot] else 0.2
    return {"1": float(np.log(p1)), "0": float(np.log(1 - p1))}


async def test_p_yes_comes_from_the_answers_own_logprobs_without_a_second_request() -> None:
    judge = FakeLLM(chat_fn=_oracle, logprob_fn=_yes_if_cat, answer_logprob_fn=_answer_yes_if_cat)
    s = await DetectionScorer(judge).score("cat", synthetic_record(1))
    assert s.value == 1.0 and s.details["metrics"]["auc"] == 1.0 and s.details["n_with_probability"] == 10
    assert judge.logprob_requests == [] and s.details["requests"] == len(judge.chat_requests)
    assert s.details["probability_source"] == {"answer": len(judge.chat_requests)}
    assert all(r.top_logprobs > 0 for r in judge.chat_requests)
    # The same P(yes) as the teacher-forced request's, which a judge without answer logprobs still gets.
    forced = await DetectionScorer(FakeLLM(chat_fn=_oracle, logprob_fn=_yes_if_cat)).score("cat", synthetic_record(1))
    assert forced.details["probability_source"] == {"teacher-forced": len(judge.chat_requests)}
    assert forced.details["metrics"] == s.details["metrics"]
    off = DetectionScorer(FakeLLM(), ClassifierSettings(judge_probabilities=False))
    assert off.request("cat", ["a", "b"]).top_logprobs == 0


def test_answer_probabilities_need_each_value_to_be_a_token_of_its_own() -> None:
    from autointerp.llm.base import TokenLogprobs
    from autointerp.score import answer_probabilities

    def toks(*pieces: str) -> list[TokenLogprobs]:
        return [TokenLogprobs(top={"1": np.log(0.75), "0": np.log(0.25)}, token=p) for p in pieces]

    assert answer_probabilities("Sure: [1, 0]", toks("Sure", ":", " [", "1", ",", " 0", "]")) == [0.75, 0.75]
    assert answer_probabilities("[1, 0]", toks("[1", ",", " 0", "]")) is None  # "[1": not its own token
    assert answer_probabilities("[1, 0]", toks("[", "1", ", 0]")) is None
    assert answer_probabilities("[1, 0]", toks("[", "1", ",", " 0")) is None  # tokens do not spell the text
    assert answer_probabilities("[1, 0]", []) is None
    assert answer_probabilities("no list", toks("no", " list")) is None


async def test_positives_convention_and_highlight_threshold_are_settings() -> None:
    rec = synthetic_record(3)
    s = await FuzzingScorer(FakeLLM(chat_fn=_oracle), ClassifierSettings(positives="top")).score("cat", rec)
    assert s.details["n_examples"] == len(rec.test_top) + len(rec.test_random)
    assert s.settings["positives"] == "top" and s.settings["highlight_threshold"] == 0.0
    with pytest.raises(UserError):
        ClassifierSettings(positives="everything")
    with pytest.raises(UserError):
        ClassifierSettings(highlight_threshold=1.5)
