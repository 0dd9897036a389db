"""Prior-subtracted simulation (issue #15): the simulation under a neutral label is subtracted token by token,
made once per record and shared by every explanation of the feature, and scored apart."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from fake_llm import FakeLLM, keyword_oracle, synthetic_record
from test_pipeline import KEYWORDS, smart_chat

from autointerp.errors import UserError
from autointerp.pipeline import Clients, ExplainConfig, run_explain, run_score
from autointerp.records import Simulation
from autointerp.rundir import load_run, read_jsonl
from autointerp.simulate import LogprobSimulator, PriorSubtractedSimulator, subtract_prior

PRIOR_WORDS = (" sat", " ran", " flew")
"""Words this fake simulator finds salient whatever the label says (its prior about the text)."""


def prior_and_label(prompt: str, pos: int) -> dict[str, float]:
    """A simulator with a label-independent prior: tokens the label names get 9 (the keyword oracle), and the
    salient PRIOR_WORDS get 6 under any label, the neutral one included."""
    line = prompt[:pos].rsplit("\n", 1)[-1].lower()
    if keyword_oracle(prompt, pos).get("9", -math.inf) > math.log(0.5):
        return {"9": math.log(0.9), "0": math.log(0.1)}
    if any(w.strip() in line for w in PRIOR_WORDS):
        return {"6": math.log(0.9), "0": math.log(0.1)}
    return {"0": math.log(0.95), "1": math.log(0.05)}


def _records(n: int = 4):  # type: ignore[no-untyped-def]
    return [synthetic_record(i, KEYWORDS[i % len(KEYWORDS)]) for i in range(n)]


def _neutral_requests(fake: FakeLLM) -> int:
    return sum(bool(re.search(r"Feature explanation: unknown\n", r.prompt)) for r in fake.logprob_requests)


def test_subtract_prior_is_the_difference_and_fails_with_either_side() -> None:
    a = Simulation(np.array([3.0, 9.0, 1.0], dtype=np.float32))
    n = Simulation(np.array([2.0, 1.0, 1.0], dtype=np.float32))
    assert subtract_prior(a, n).expected.tolist() == [1.0, 8.0, 0.0]  # type: ignore[union-attr]
    failed = subtract_prior(a, Simulation(None, failed="timeout"))
    assert failed.expected is None and "neutral-label simulation failed: timeout" in str(failed.failed)
    assert subtract_prior(Simulation(None, failed="x"), n).failed == "x"
    assert subtract_prior(a, Simulation(np.zeros(2, dtype=np.float32))).expected is None


async def test_prior_subtracted_simulator_is_a_simulator_that_removes_the_prior() -> None:
    fake = FakeLLM(logprob_fn=prior_and_label)
    tokens = ["the", " cat", " sat", " on", " a", " mat"]
    sim = PriorSubtractedSimulator(LogprobSimulator(fake, "the word cat"), LogprobSimulator(fake, "unknown"))
    raw = await LogprobSimulator(fake, "the word cat").simulate(tokens)
    out = await sim.simulate(tokens)
    assert raw.expected is not None and out.expected is not None
    assert raw.expected[2] > 5  # " sat": the prior
    assert out.expected[1] > 5 and abs(out.expected[2]) < 1e-5 and sim.usage.requests == 2
    assert sim.spec.startswith("prior-subtracted[")


async def test_prior_subtraction_raises_the_score_and_lowers_label_dependence_on_rescoring(tmp_path: Path) -> None:
    """A simulator that predicts its prior words under any label: the raw correlation is diluted by them and
    its simulations under the label and a shuffled label correlate; rescored with --subtract-prior, only the
    neutral simulations are requested (once per record, shared by the label and its baseline), the
    correlation rises and the label prior correlation falls. Both sets of scores stay, stored apart."""
    cfg = ExplainConfig(scorers="simulation", n_top_examples=4, max_records_per_split=3)
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat, logprob_fn=prior_and_label)
    run = tmp_path / "run"
    raw = await run_explain(cfg, run, _records(), Clients(fake, fake, fake))
    n_before = len(fake.logprob_requests)
    assert _neutral_requests(fake) == 0
    summary = await run_score(run, "simulation", clients=Clients(fake, fake, fake), settings={"subtract_prior": True})
    new = fake.logprob_requests[n_before:]
    # per feature: 3 test_top + 3 test_random + 1 valid and 1 test_random calibration record, each simulated
    # once under the neutral label (not once for the label and once for the baseline); nothing else is asked
    assert len(new) == _neutral_requests(fake) == 4 * 8
    judges = {r["judge"] for r in read_jsonl(run / "scores.jsonl")}
    assert any(j.endswith("+prior-subtracted") for j in judges) and len(judges) == 2
    labels = sorted(k for k in summary.paired_gain if k.startswith("correlation@"))
    plain, subtracted = (labels[0], labels[1]) if labels[1].endswith("+prior-subtracted") else labels[::-1]
    assert summary.scores[subtracted]["explained"][0] > summary.scores[plain]["explained"][0] + 0.1
    prior_sub = next(v for k, v in summary.label_prior.items() if k.endswith("+prior-subtracted"))
    assert prior_sub[0] < raw.label_prior["label_prior_correlation"][0] - 0.2, (prior_sub, raw.label_prior)
    data = load_run(run)
    assert {k[0] for k in data.simulations if k[0].endswith("#neutral")} == {f"{r.id}#neutral" for r in _records()}


async def test_explain_with_prior_subtraction_resumes_without_new_requests(tmp_path: Path) -> None:
    cfg = ExplainConfig(scorers="simulation", n_top_examples=4, max_records_per_split=3, subtract_prior=True)
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat, logprob_fn=prior_and_label)
    first = await run_explain(cfg, tmp_path / "run", _records(), Clients(fake, fake, fake))
    assert _neutral_requests(fake) == 4 * 8
    n = len(fake.logprob_requests) + len(fake.chat_requests)
    again = await run_explain(cfg, tmp_path / "run", _records(), Clients(fake, fake, fake))
    assert len(fake.logprob_requests) + len(fake.chat_requests) == n
    assert again.scores == first.scores


def test_an_empty_neutral_label_is_refused() -> None:
    with pytest.raises(UserError, match="neutral-label"):
        ExplainConfig(subtract_prior=True, neutral_label=" ")
