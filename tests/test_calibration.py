"""Linear calibration as OpenAI defined it: fitted on held-out top and random records 1:1 (never on the
scored ones), and refused fits (slope <= 0, constant simulation) counted per score in the run summary."""

from __future__ import annotations

import math
from pathlib import Path

from fake_llm import FakeLLM, keyword_oracle, synthetic_record

from autointerp.pipeline import Clients, ExplainConfig, run_explain
from autointerp.rundir import load_run
from autointerp.score import calibration_indices


def _inverted(prompt: str, pos: int) -> dict[str, float]:
    """A simulator that predicts high exactly where the keyword oracle predicts low: anti-correlated."""
    if "9" in keyword_oracle(prompt, pos):
        return {"0": math.log(0.9), "1": math.log(0.05), "unknown": math.log(0.05)}
    return {"9": math.log(0.8), "8": math.log(0.1), "0": math.log(0.1)}


def test_calibration_set_is_top_and_unscored_random_records_one_to_one() -> None:
    rec = synthetic_record(0)  # 3 valid (top) records, 4 test_random records
    assert calibration_indices(rec, 2) == ([0, 1], [2, 3])  # test_random 0, 1 are scored: not calibration
    assert calibration_indices(rec, 3) == ([0], [3])
    assert calibration_indices(rec, 0) == ([], [])  # every random record is scored: none is spare


async def test_calibration_fits_on_top_and_random_records(tmp_path: Path) -> None:
    fake = FakeLLM()
    cfg = ExplainConfig(max_records_per_split=2, baseline=False)
    await run_explain(cfg, tmp_path / "run", [synthetic_record(i) for i in range(2)], Clients(fake, fake, fake))
    run = load_run(tmp_path / "run")
    for f in run.features():
        eid = run.selected(f).explanation_id  # type: ignore[union-attr]
        assert {(eid, "test_random", 2), (eid, "test_random", 3), (eid, "valid", 0), (eid, "valid", 1)} <= set(
            run.simulations
        )
        r2 = run.scores_of(run.selected(f))["r_squared"]
        assert r2.value is not None and r2.details["n_calibration"] == 4
        assert "1:1" in r2.settings["calibration"]


async def test_refused_calibrations_are_counted_per_score(tmp_path: Path) -> None:
    fake = FakeLLM(logprob_fn=_inverted)
    cfg = ExplainConfig(max_records_per_split=2)
    records = [synthetic_record(i) for i in range(3)]
    summary = await run_explain(cfg, tmp_path / "run", records, Clients(fake, fake, fake))
    assert summary.scores["correlation"]["explained"][0] < 0  # type: ignore[index]
    refused = summary.n_calibration_refused
    assert refused["r_squared"]["explained"] == 3 and refused["absolute_deviation_explained"]["explained"] == 3
    assert summary.n_scored["r_squared"]["explained"] == 0


async def test_no_calibrate_skips_the_calibration_records_and_leaves_the_correlations_unchanged(
    tmp_path: Path,
) -> None:
    records = [synthetic_record(i) for i in range(3)]  # 3 valid, 4 test_random: 1 top + 1 random calibrate
    summaries, requests = {}, {}
    for calibrate in (True, False):
        fake = FakeLLM()
        cfg = ExplainConfig(max_records_per_split=3, calibrate=calibrate)
        summaries[calibrate] = await run_explain(cfg, tmp_path / str(calibrate), records, Clients(fake, fake, fake))
        requests[calibrate] = len(fake.logprob_requests)
    # per feature, label, baseline and token-list yardstick: 3 test_top + 3 test_random, plus 2 calibration
    # records when calibrating
    assert requests == {True: 3 * 3 * 8, False: 3 * 3 * 6}
    on, off = summaries[True], summaries[False]
    assert off.scores["correlation"] == on.scores["correlation"]
    assert on.n_scored["r_squared"]["explained"] == 3 and off.n_scored["r_squared"]["explained"] == 0
    run = load_run(tmp_path / "False")
    for f in run.features():
        r2 = run.scores_of(run.selected(f))["r_squared"]  # type: ignore[arg-type]
        assert r2.value is None and "not calibrated (--no-calibrate)" in (r2.reason or "")
        assert not any(k[1] == "valid" for k in run.simulations)


async def test_the_estimate_counts_the_simulations_the_run_sends(tmp_path: Path) -> None:
    """The cost estimate reads the scorer's own list of simulated records: calibration records, and with
    --subtract-prior the neutral simulations (once per record, shared by the label and its baseline)."""
    import json

    records = [synthetic_record(i) for i in range(2)]
    for calibrate, prior in ((True, False), (False, False), (True, True)):
        fake = FakeLLM()
        cfg = ExplainConfig(max_records_per_split=3, calibrate=calibrate, subtract_prior=prior)
        run = tmp_path / f"{calibrate}-{prior}"
        await run_explain(cfg, run, records, Clients(fake, fake, fake))
        estimate = json.loads((run / "manifest.json").read_text())["llm"]["estimate"]["simulator"]
        assert estimate["requests"] == len(fake.logprob_requests), (calibrate, prior)
