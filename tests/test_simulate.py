"""Simulators: slot offsets, digit distributions, JSON validation, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fake_llm import FakeLLM

from autointerp.prompts import load_template
from autointerp.records import ActivationRecord
from autointerp.simulate import (
    CalibrationError,
    JsonSimulator,
    LinearCalibratedSimulator,
    LogprobSimulator,
    PercentileCalibratedSimulator,
    build_all_at_once_prompt,
    digit_distribution,
    fit_linear,
    make_simulator,
    parse_json_simulation,
)


def test_slot_offsets_point_after_each_tab() -> None:
    toks = ["Hello", "\n", " cat", "\t9"]
    p = build_all_at_once_prompt(load_template("simulate_all_at_once.j2"), "the word cat", toks)
    assert len(p.slots) == 4
    for s in p.slots:
        assert p.text[s - 1] == "\t" and p.text[s] == "0"
    # the text before each slot ends with the escaped token then a tab, whatever the token text is
    assert p.text[: p.slots[1]].endswith("\n\\n\t")
    assert p.text[: p.slots[3]].endswith("\\t9\t")
    assert p.text.rstrip().endswith("<end>")


def test_digit_distribution() -> None:
    probs, mass = digit_distribution({"3": math.log(0.5), " 3": math.log(0.1), "x": math.log(0.4)})
    assert mass == pytest.approx(0.6)
    assert probs[3] == pytest.approx(0.6)


def test_digit_distribution_ignores_unicode_digits_int_cannot_read() -> None:
    """Real top-k lists hold tokens such as "₀" or "²", which str.isdigit() calls digits (measured on the
    embedded Qwen): they are not scale values and must not crash the simulation."""
    probs, mass = digit_distribution({"₀": math.log(0.2), "²": math.log(0.1), " 7": math.log(0.5)})
    assert mass == pytest.approx(0.5) and probs[7] == pytest.approx(0.5)


async def test_logprob_simulator_expected_values() -> None:
    fake = FakeLLM()
    sim = await LogprobSimulator(fake, "the word cat").simulate(["a", " cat", " sat"])
    assert sim.expected is not None and sim.distribution is not None
    assert sim.expected[1] > 7 and sim.expected[0] < 1
    assert np.allclose(sim.distribution.sum(axis=1), 1)
    assert len(fake.logprob_requests) == 1  # all slots in one request


async def test_low_digit_mass_fails_instead_of_guessing() -> None:
    fake = FakeLLM(logprob_fn=lambda prompt, pos: {"unknown": -0.01, "5": -8.0})
    sim = await LogprobSimulator(fake, "x").simulate(["a", "b"])
    assert sim.expected is None and sim.failed is not None and "digit probability" in sim.failed
    fake = FakeLLM(logprob_fn=lambda prompt, pos: {"unknown": -0.01})
    sim = await LogprobSimulator(fake, "x").simulate(["a", "b"])
    assert sim.failed is not None and "no digit" in sim.failed


async def test_few_flagged_slots_are_tolerated() -> None:
    # one slot of 20 (5% <= 10%) has low digit mass: renormalised, not failed
    def lp(prompt: str, pos: int) -> dict[str, float]:
        if prompt[:pos].endswith("odd\t"):
            return {"ing": -0.01, "7": -6.0}
        return {"0": -0.01}

    sim = await LogprobSimulator(FakeLLM(logprob_fn=lp), "x").simulate(["a"] * 19 + ["odd"])
    assert sim.expected is not None and sim.expected[-1] == pytest.approx(7.0) and sim.expected[0] == 0


def test_parse_json_simulation_strict() -> None:
    ok = parse_json_simulation("[[0, 1], [1, 9]]", 2)
    assert isinstance(ok, np.ndarray) and ok.tolist() == [1, 9]
    assert not isinstance(parse_json_simulation('```json\n{"activations": [[1, 2], [0, 0]]}\n```', 2), str)
    for bad in [
        "[[0, 1]]",
        "[[0, 1], [0, 2]]",
        "[[0, 10], [1, 0]]",
        "[[0, true], [1, 0]]",
        "nope",
        '[[0, "1"], [1, 0]]',
    ]:
        assert isinstance(parse_json_simulation(bad, 2), str), bad


async def test_json_simulator_failed_on_invalid_answer() -> None:
    good = JsonSimulator(FakeLLM(chat_fn=lambda r: "[[0, 0], [1, 7]]"), "cat")
    sim = await good.simulate(["a", " cat"])
    assert sim.expected is not None and sim.expected.tolist() == [0, 7]
    bad = JsonSimulator(FakeLLM(chat_fn=lambda r: "I think token 1"), "cat")
    sim = await bad.simulate(["a", " cat"])
    assert sim.expected is None and sim.failed


def test_make_simulator_auto() -> None:
    fake = FakeLLM()
    assert isinstance(make_simulator("auto", fake, "x"), LogprobSimulator)
    fake.supports_logprobs = False
    assert isinstance(make_simulator("auto", fake, "x"), JsonSimulator)


def test_fit_linear_refuses_non_positive_slope() -> None:
    t = [np.array([0.0, 1.0, 2.0])]
    assert fit_linear(t, [np.array([0.0, 2.0, 4.0])]).slope == pytest.approx(0.5)
    with pytest.raises(CalibrationError):
        fit_linear(t, [np.array([4.0, 2.0, 0.0])])
    with pytest.raises(CalibrationError):
        fit_linear(t, [np.array([1.0, 1.0, 1.0])])


def _recs() -> list[ActivationRecord]:
    toks = ["a", " cat", "b", " cat"]
    return [ActivationRecord(tokens=toks, token_ids=[0, 1, 2, 3], activations=np.array([0, 20.0, 0, 20.0]))]


async def test_calibrated_simulators() -> None:
    lin = LinearCalibratedSimulator(LogprobSimulator(FakeLLM(), "cat"))
    with pytest.raises(CalibrationError):
        await lin.simulate(["a"])
    await lin.calibrate(_recs())
    sim = await lin.simulate(["x", " cat"])
    assert sim.expected is not None
    assert sim.expected[1] == pytest.approx(20.0, abs=0.5) and sim.expected[0] == pytest.approx(0.0, abs=0.5)
    pct = PercentileCalibratedSimulator(LogprobSimulator(FakeLLM(), "cat"))
    await pct.calibrate(_recs())
    sim = await pct.simulate(["x", " cat"])
    assert sim.expected is not None and sim.expected[1] > sim.expected[0]


async def test_linear_calibration_refused_on_anticorrelated_simulator() -> None:
    lin = LinearCalibratedSimulator(LogprobSimulator(FakeLLM(), "nothing"))
    recs = _recs()
    recs[0].activations[:] = [20.0, 0, 20.0, 0]
    lin_inner = LogprobSimulator(FakeLLM(), "cat")
    lin = LinearCalibratedSimulator(lin_inner)
    with pytest.raises(CalibrationError, match="slope"):
        await lin.calibrate(recs)
    assert lin.fit is None
