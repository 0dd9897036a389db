"""Chat-only endpoints degrade instead of crashing: capabilities are probed, not assumed.

Many hosted APIs and gateways serve ``/v1/chat/completions`` only. Against such a loopback server (404 for
``/v1/completions`` and ``/tokenize``, answers with usage and ``finish_reason``), the first refused request
marks the capability missing for the endpoint, for the rest of the run and in the manifest; ``auto``
simulates with JSON, an explicit ``--simulator-kind logprob`` is refused before any work (exit 2), and the
judge's P(yes) is undefined with its reason while its answers still score. No traceback on any path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bad_input import assert_one_line_error, run_cli
from test_failed_not_final import cache_run  # noqa: F401  (a module-scoped fixture of a tiny sample run)
from test_pipeline import _records

from autointerp.llm.base import ChatMessage, ChatRequest, ClientConfig, TopLogprobsRequest, Unsupported
from autointerp.llm.factory import make_client
from autointerp.llm.testing import ChatOnlyServer, serving_in_thread
from autointerp.pipeline import Clients, ExplainConfig, run_explain
from autointerp.rundir import read_jsonl


def answer(messages: list[dict[str, str]]) -> str:
    """A chat model that follows the project's prompts: a label for the explainer, a JSON simulation naming the
    label's word, a 0/1 list for the detection judge."""
    system, last = messages[0]["content"], messages[-1]["content"]
    if "[token_index, value]" in system:
        word = re.findall(r"Feature explanation: (\w+)", last)[-1]
        rows = re.findall(r"^(\d+)\t(.*)$", last, re.M)
        return json.dumps([[int(i), 9 if word in tok else 0] for i, tok in rows])
    if "Example " in last:
        n = len([ln for ln in last.splitlines() if ln.startswith("Example ")])
        return str([i % 2 for i in range(n)])
    return "Explanation: the word cat"


@pytest.fixture
def chat_only() -> Iterator[ChatOnlyServer]:
    with serving_in_thread(ChatOnlyServer(answer)) as srv:
        yield srv


def _explain(run: Path, sample: Path, spec: str, *extra: str) -> list[str]:
    return ["explain", "--sample-run", str(sample), "--features", "0,1", "--run-dir", str(run),
            "--explainer", spec, "--simulator", spec, "--judge", spec, "--max-records-per-split", "1",
            "--no-llm-cache", *extra]


def test_a_chat_only_endpoint_explains_simulates_with_json_and_scores_detection_without_p_yes(
    cache_run: Path, chat_only: ChatOnlyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    spec = f"openai-compatible:{chat_only.url}/v1/m"
    run = tmp_path / "run"
    args = _explain(run, cache_run, spec, "--scorers", "simulation,detection,fuzzing", "--no-calibrate")
    assert run_cli(args) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    llm = json.loads((run / "manifest.json").read_text())["llm"]
    assert llm["simulator_kind"] == "json" and llm["logprob_strategy"] == "none"
    assert "completions" in llm["missing_capabilities"]["simulator"]
    scores = [s for s in read_jsonl(run / "scores.jsonl") if not s["baseline"]]
    judged = [s["score"] for s in scores if s["score"]["name"] in ("detection", "fuzzing")]
    assert len(judged) == 8 and all(d["details"]["failed_prompts"] == 0 for d in judged)
    assert all(d["details"]["metric_reasons"]["auc"].startswith("P(yes) undefined") for d in judged)
    sims = list(read_jsonl(run / "simulations.jsonl"))
    assert sims and all(s["simulator"].startswith("json[") for s in sims)
    assert all(s["simulation"].get("failed") is None for s in sims)
    # /completions was asked once (the probe): after its 404 the capability is known missing and never re-asked
    assert sum(p.endswith("/v1/completions") for p in chat_only.paths) == 1
    # a rerun (a new run of the same command) probes once more, finds everything done and asks no chat question
    before = len(chat_only.paths)
    assert run_cli(args) == 0
    assert "Traceback" not in capsys.readouterr().err
    again = chat_only.paths[before:]
    assert again.count("/v1/completions") == 1 and "/v1/chat/completions" not in again


async def test_the_judge_s_answers_score_while_p_yes_is_undefined_on_a_chat_only_endpoint(
    chat_only: ChatOnlyServer, tmp_path: Path
) -> None:
    client = make_client(f"openai-compatible:{chat_only.url}/v1/m", ClientConfig(cache=False))
    try:
        cfg = ExplainConfig(scorers="detection,fuzzing", n_top_examples=4, max_records_per_split=3, baseline=False)
        summary = await run_explain(cfg, tmp_path / "run", _records(2), Clients(client, client, client))
    finally:
        await client.aclose()
    assert not summary.errors
    judged = [s["score"] for s in read_jsonl(tmp_path / "run" / "scores.jsonl")]
    assert {d["name"] for d in judged} == {"detection", "fuzzing"} and len(judged) == 8  # 2 x (label, yardstick) x 2
    assert all(isinstance(d["value"], float) and d["details"]["failed_prompts"] == 0 for d in judged)
    assert all(d["details"]["metrics"]["auc"] is None for d in judged)
    assert all(d["details"]["metric_reasons"]["auc"].startswith("P(yes) undefined") for d in judged)


def test_an_explicit_logprob_simulator_on_a_chat_only_endpoint_is_refused_before_any_work(
    cache_run: Path, chat_only: ChatOnlyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    spec = f"openai-compatible:{chat_only.url}/v1/m"
    run = tmp_path / "run"
    assert run_cli(_explain(run, cache_run, spec, "--simulator-kind", "logprob", "--scorers", "simulation")) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "--simulator-kind logprob needs top logprobs" in err and "--simulator-kind auto" in err
    assert not run.exists()
    assert not any(p.endswith("/chat/completions") for p in chat_only.paths)


def test_a_pool_of_chat_only_endpoints_shares_what_one_refused(
    cache_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    with serving_in_thread(ChatOnlyServer(answer)) as a, serving_in_thread(ChatOnlyServer(answer)) as b:
        spec = f"openai-compatible:{a.url}/v1,{b.url}/v1/m"
        run = tmp_path / "run"
        assert run_cli(_explain(run, cache_run, spec, "--scorers", "simulation,detection", "--no-calibrate")) == 0
        assert "Traceback" not in capsys.readouterr().err
        refused = sum(p.endswith("/v1/completions") for p in [*a.paths, *b.paths])
        assert refused == 1  # the pool learned it once for all its endpoints
        llm = json.loads((run / "manifest.json").read_text())["llm"]
        assert llm["simulator_kind"] == "json" and "completions" in llm["missing_capabilities"]["judge"]


async def test_each_client_layer_reports_a_capability_once_the_backend_found_it_missing(
    chat_only: ChatOnlyServer, tmp_path: Path
) -> None:
    client = make_client(f"openai-compatible:{chat_only.url}/v1/m")
    try:
        assert client.supports_logprobs
        with pytest.raises(Unsupported) as e:
            await client.top_logprobs(TopLogprobsRequest(prompt="a\tb", positions=(2,)))
        assert e.value.capability == "completions" and e.value.status == 404
        assert not client.supports_logprobs and not client.reliable.supports_logprobs
        assert client.reliable.attempts == 1  # never retried
        sent = len(chat_only.paths)
        with pytest.raises(Unsupported):  # known missing: refused without a request
            await client.top_logprobs(TopLogprobsRequest(prompt="a\tb", positions=(2,)))
        assert len(chat_only.paths) == sent
        r = await client.chat(ChatRequest((ChatMessage("user", "hi"),), top_logprobs=5))
        assert r.text and r.logprobs == [] and "chat_logprobs" in client.capabilities.missing
    finally:
        await client.aclose()


def test_a_gateway_answering_200_with_empty_choices_fails_the_features_and_a_rerun_retries_them(
    cache_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    with serving_in_thread(ChatOnlyServer(answer, empty_choices=True)) as srv:
        spec = f"openai-compatible:{srv.url}/v1/m"
        run = tmp_path / "run"
        args = _explain(run, cache_run, spec, "--scorers", "detection")
        assert run_cli(args) == 1
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "rerun" in out
        assert not list(read_jsonl(run / "explanations.jsonl"))  # nothing written as a result
        srv.empty_choices = False
        assert run_cli(args) == 0
        assert len([e for e in read_jsonl(run / "explanations.jsonl") if e["selected"]]) == 2
