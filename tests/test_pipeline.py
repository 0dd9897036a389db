"""Pipeline: run directory schema, best-of-N, baseline, resume without duplicates, error isolation, rescoring."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from fake_llm import FakeLLM, synthetic_record

from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients, ExplainConfig, run_explain, run_score
from autointerp.rundir import RunDir, read_jsonl

KEYWORDS = [" cat", " dog", " bird", " mat"]


def smart_chat(req: ChatRequest) -> str:
    system = req.messages[0].content
    last = req.messages[-1].content
    if "Summarize" in system or "summarize" in system:
        tops = re.findall(r"^(.*)\t10$", last, re.M)
        if "boom" in last:
            raise RuntimeError("explainer exploded")
        return f"Explanation: {tops[0].strip()} tokens" if tops else "Explanation:"
    word = re.findall(r"Feature explanation: (\w+)", last)[0]
    lines = [ln for ln in last.splitlines() if ln.startswith("Example ")]
    if "marked between" in system:
        spans = [re.findall(r"<<(.*?)>>", ln) for ln in lines]
        return str([int(bool(sp) and all(re.fullmatch(rf"( {word})+", x) for x in sp)) for sp in spans])
    return str([int(f" {word}" in ln) for ln in lines])


def _records(n: int = 4):  # type: ignore[no-untyped-def]
    return [synthetic_record(i, KEYWORDS[i % len(KEYWORDS)]) for i in range(n)]


def _count(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path))


async def test_run_writes_schema_and_beats_baseline(tmp_path: Path) -> None:
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    cfg = ExplainConfig(scorers="simulation,detection", n_top_examples=4, max_records_per_split=3)
    summary = await run_explain(cfg, tmp_path / "run", _records(), Clients(fake, fake, fake))
    run = tmp_path / "run"
    assert summary.n_features == 4 and summary.n_explained == 4 and not summary.errors
    expl = list(read_jsonl(run / "explanations.jsonl"))
    assert {r["explanation_id"] for r in expl} >= {"toy/L0/mlp_neurons:0#0", "toy/L0/mlp_neurons:0#baseline"}
    sel = [r for r in expl if r["selected"]]
    assert len(sel) == 4 and sel[0]["text"] == "cat tokens"
    base = [r for r in expl if r["baseline"]]
    assert len(base) == 4 and all(b["text"] != f"{b['feature']}" for b in base)
    sims = list(read_jsonl(run / "simulations.jsonl"))
    assert {"explanation_id", "feature", "split", "record_index", "simulator", "simulation"} <= set(sims[0])
    scores = list(read_jsonl(run / "scores.jsonl"))
    assert {"explanation_id", "feature", "baseline", "score"} <= set(scores[0])
    corr = summary.scores["correlation"]
    assert corr["explained"] is not None and corr["baseline"] is not None
    assert corr["explained"][0] > 0.9 > corr["baseline"][0]
    assert summary.scores["detection"]["explained"][0] == 1.0  # type: ignore[index]
    manifest = RunDir.open(run).manifest()
    assert "simulate_all_at_once.j2" in manifest["prompts"] and manifest["stages"]["explain"]["status"] == "done"
    assert (run / "usage.json").exists() and summary.usage["explainer"].requests == 4
    assert summary.run_usage["explainer"]["requests"] == 4 and summary.run_usage["total"]["cost_usd"] == 0.0
    assert summary.run_usage["cost_reason"] is None  # local:* is priced at 0 in the packaged table

    # resume: nothing recomputed, nothing duplicated
    n_req = len(fake.chat_requests) + len(fake.logprob_requests)
    sizes = [_count(run / f) for f in ("explanations.jsonl", "simulations.jsonl", "scores.jsonl")]
    await run_explain(cfg, run, _records(), Clients(fake, fake, fake))
    assert len(fake.chat_requests) + len(fake.logprob_requests) == n_req
    assert [_count(run / f) for f in ("explanations.jsonl", "simulations.jsonl", "scores.jsonl")] == sizes

    # a different config in the same run dir is refused
    with pytest.raises(UserError):
        await run_explain(ExplainConfig(seed=3), run, _records(), Clients(fake, fake, fake))

    # rescoring with another scorer adds only its rows
    s2 = await run_score(run, "fuzzing", clients=Clients(fake, fake, fake))
    assert s2.scores["fuzzing"]["explained"][0] == 1.0  # type: ignore[index]
    assert _count(run / "scores.jsonl") == sizes[2] + 12  # 4 features x (selected, baseline, token-list yardstick)


async def test_rescoring_some_features_without_baseline_scores_only_their_selected_labels(tmp_path: Path) -> None:
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    run = tmp_path / "run"
    await run_explain(ExplainConfig(scorers="simulation", n_top_examples=4, max_records_per_split=3), run, _records(),
                      Clients(fake, fake, fake))
    before = _count(run / "scores.jsonl")
    want = ["toy/L0/mlp_neurons:1", "toy/L0/mlp_neurons:3"]
    only_selected = {"baseline": False, "yardstick": False}
    await run_score(run, "detection", clients=Clients(fake, fake, fake), settings=only_selected, features=want)
    new = [r for r in read_jsonl(run / "scores.jsonl")][before:]
    assert sorted((r["feature"], r["baseline"], r["score"]["name"]) for r in new) == [
        (f, False, "detection") for f in want
    ]
    with pytest.raises(UserError, match="holds no feature toy/L0/mlp_neurons:9"):
        await run_score(run, "detection", clients=Clients(fake, fake, fake), features=["toy/L0/mlp_neurons:9"])


async def test_best_of_n_and_error_isolation(tmp_path: Path) -> None:
    recs = _records(3)
    recs[2].train[0].tokens[0] = "boom"  # the fake explainer raises on this feature
    answers = iter(["Explanation: sat tokens"] * 100)

    def chat(req: ChatRequest) -> str:
        # candidate 0 (greedy) is wrong, candidate 1 (temperature > 0) is right
        if req.temperature > 0 and "summarize" in req.messages[0].content.lower():
            return smart_chat(req)
        if "summarize" in req.messages[0].content.lower():
            if "boom" in req.messages[-1].content:
                raise RuntimeError("explainer exploded")
            return next(answers)
        return smart_chat(req)

    fake = FakeLLM(chat_fn=chat)
    cfg = ExplainConfig(n_candidates=2, baseline=True)
    summary = await run_explain(cfg, tmp_path / "r", recs, Clients(fake, fake, fake))
    assert len(summary.errors) == 1 and summary.errors[0]["stage"] == "explain"
    assert _count(tmp_path / "r" / "errors.jsonl") == 1
    expl = {r["explanation_id"]: r for r in read_jsonl(tmp_path / "r" / "explanations.jsonl")}
    assert expl["toy/L0/mlp_neurons:0#1"]["selected"] and not expl["toy/L0/mlp_neurons:0#0"]["selected"]
    sims = list(read_jsonl(tmp_path / "r" / "simulations.jsonl"))
    assert any(s["explanation_id"].endswith("#0") and s["split"] == "valid" for s in sims)
    assert summary.n_explained == 2


async def test_failed_explanation_is_recorded_not_scored(tmp_path: Path) -> None:
    fake = FakeLLM(chat_fn=lambda r: "Explanation: ...")
    summary = await run_explain(ExplainConfig(baseline=False), tmp_path / "f", _records(2), Clients(fake, fake, fake))
    rows = list(read_jsonl(tmp_path / "f" / "explanations.jsonl"))
    assert all(r["failed"] and not r["selected"] for r in rows)
    assert summary.n_failed_explanations == 2 and _count(tmp_path / "f" / "scores.jsonl") == 0


async def test_export_formats_and_cli(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from autointerp.cli import main
    from autointerp.export import export_run

    fake = FakeLLM(chat_fn=smart_chat)
    run = tmp_path / "run"
    await run_explain(ExplainConfig(max_records_per_split=2), run, _records(3), Clients(fake, fake, fake))
    n = export_run(run, "parquet", tmp_path / "o.parquet")
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert n == 3 and list(df["explanation"]) == ["cat tokens", "dog tokens", "bird tokens"]
    assert {"score_correlation", "baseline_correlation", "prompt_hash", "frequency", "hook", "index"} <= set(df.columns)
    assert df["score_correlation"].min() > 0.9
    export_run(run, "csv", tmp_path / "o.csv")
    assert pd.read_csv(tmp_path / "o.csv").shape[0] == 3
    main(["export", str(run), "--format", "neuronpedia", "--out", str(tmp_path / "np.jsonl"),
          "--neuronpedia-user", "u1"])
    np_rows = [json.loads(line) for line in (tmp_path / "np.jsonl").read_text().splitlines()]
    assert np_rows[0]["description"] == "cat tokens" and np_rows[0]["index"] == "0"
    assert {"id", "modelId", "layer", "explanationModelName", "typeName", "authorId", "notes"} <= set(np_rows[0])
    main(["export", str(run), "--format", "jsonl", "--out", str(tmp_path / "o.jsonl")])
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--format", "xml", "--out", str(tmp_path / "o.xml")])
    assert e.value.code == 2


async def test_unpriced_spec_makes_the_run_cost_undefined(tmp_path: Path) -> None:
    """With a price table that lacks the run's LLM, usage.json says the cost is undefined and why (not $0),
    and the undefined cost survives a resumed session."""
    import json

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"openai:gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}}))
    fake = FakeLLM(chat_fn=smart_chat)
    cfg = ExplainConfig(n_top_examples=4, max_records_per_split=2, baseline=False, prices=str(prices))
    summary = await run_explain(cfg, tmp_path / "run", _records(2), Clients(fake, fake, fake))
    usage = summary.run_usage
    assert usage["total"]["cost_usd"] is None and usage["explainer"]["cost_usd"] is None
    assert "fake:oracle" in usage["cost_reason"] and str(prices) in usage["cost_reason"]
    assert usage["explainer"]["requests"] == 2 and usage["explainer"]["spec"] == "fake:oracle"
    again = await run_explain(cfg, tmp_path / "run", _records(2), Clients(fake, fake, fake))
    assert again.run_usage["total"]["cost_usd"] is None and again.run_usage["explainer"]["requests"] == 2


def test_bad_prices_file_is_a_user_error(tmp_path: Path) -> None:
    from autointerp.pipeline import open_clients

    bad = tmp_path / "prices.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read prices"):
        open_clients(ExplainConfig(prices=str(bad)))
    with pytest.raises(UserError, match="llm-concurrency"):
        ExplainConfig(llm_concurrency=0)


async def test_label_prior_correlation_flags_a_simulator_that_ignores_the_label(tmp_path: Path) -> None:
    """The keyword oracle reads the label: its simulations under a feature's label and under a shuffled
    label differ (low label prior correlation, no flag, positive paired gain). A simulator that predicts from
    the text alone (any word of the vocabulary, whatever the label says) gives the same simulation under
    both labels: correlation 1, flagged in the summary."""
    cfg = ExplainConfig(scorers="simulation", n_top_examples=4, max_records_per_split=3)
    reads = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    summary = await run_explain(cfg, tmp_path / "reads", _records(), Clients(reads, reads, reads))
    assert summary.label_prior["label_prior_correlation"][1] == 4
    assert summary.label_prior["label_prior_correlation"][0] < 0.5 and not summary.flags
    gain = summary.paired_gain["correlation"]
    assert gain is not None and gain[1] > 0 and summary.n_paired["correlation"] == 4
    rows = [r for r in read_jsonl(tmp_path / "reads" / "scores.jsonl")
            if r["score"]["name"] == "label_prior_correlation"]
    assert len(rows) == 4 and not any(r["baseline"] for r in rows)
    assert "label_prior_correlation" not in summary.scores  # reported apart, not as a mean score

    def prior_only(prompt: str, pos: int) -> dict[str, float]:
        line = prompt[:pos].rsplit("\n", 1)[-1].lower()
        hit = any(w.strip() in line for w in KEYWORDS)
        return {"9": math.log(0.9), "0": math.log(0.1)} if hit else {"0": math.log(0.9), "1": math.log(0.1)}

    ignores = FakeLLM(spec="local:fake", chat_fn=smart_chat, logprob_fn=prior_only)
    summary = await run_explain(cfg, tmp_path / "ignores", _records(), Clients(ignores, ignores, ignores))
    assert summary.label_prior["label_prior_correlation"][0] == pytest.approx(1.0)
    assert summary.flags and "barely reads the label" in summary.flags[0]
    gain = summary.paired_gain["correlation"]
    assert gain is not None and gain[0] == pytest.approx(0.0, abs=1e-6)


async def test_simulations_of_one_explanation_are_requested_together(tmp_path: Path) -> None:
    """Requests that share a prefix (template + explanation) reach the backend one explanation after another,
    not interleaved with other features' (so a prefix cache serves them)."""
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    cfg = ExplainConfig(baseline=False, max_records_per_split=3, concurrency=4)
    await run_explain(cfg, tmp_path / "run", _records(4), Clients(fake, fake, fake))
    labels = [re.findall(r"Feature explanation: (.*)", r.prompt)[-1] for r in fake.logprob_requests]
    runs = [lab for i, lab in enumerate(labels) if i == 0 or labels[i - 1] != lab]
    assert len(set(labels)) == 8 and len(runs) == 8, runs  # 4 features x (label, token-list yardstick)
