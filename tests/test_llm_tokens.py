"""Token accounting of logprob requests: every prompt sent is counted, cache use where the server reports it,
and each backend path (echo, prompt logprobs, prefix list) is chosen and counted against a loopback server
that keeps exact counts of what it received and evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_fixtures import fast_config

from autointerp.llm import TopLogprobsRequest, make_client
from autointerp.llm.anthropic_backend import mark_cache_prefix
from autointerp.llm.testing import FakeOpenAIServer
from autointerp.llm.usage import Price
from autointerp.records import Usage

PROMPTS = [
    "Explain: the word cat\nthe\t0\n cat\t0\n sat\t0\n",
    "Explain: the word cat\na\t0\n dog\t0\n ran\t0\n far\t0\n",
    "Explain: dogs\nthe\t0\n dog\t0\n",
]


def _request(prompt: str) -> TopLogprobsRequest:
    slots = tuple(i + 1 for i, ch in enumerate(prompt) if ch == "\t")
    return TopLogprobsRequest(prompt=prompt, positions=slots, top_k=3)


async def _send_all(srv: FakeOpenAIServer, tmp_path: Path) -> tuple[Usage, str]:
    # One request at a time, as the one-slot server reads them: its cache derivation is then exact.
    client = make_client(f"openai-compatible:{srv.url}/v1/m", fast_config(tmp_path, cache=False, max_concurrency=1))
    total = Usage()
    for p in PROMPTS:
        r = await client.top_logprobs(_request(p))
        assert len(r.logprobs) == p.count("\t")
        total = total + r.usage
    strategy = client.logprob_strategy()
    await client.aclose()
    assert client.meter.total.prompt_tokens == total.prompt_tokens
    return total, strategy


async def test_prefix_list_counts_every_prompt_with_the_servers_tokenizer(tmp_path: Path) -> None:
    """llama.cpp-like server: usage for the first prompt only, /tokenize with pieces, echo ignored."""
    async with FakeOpenAIServer(usage_mode="first", tokenize=True, logprobs_format="llamacpp") as srv:
        used, strategy = await _send_all(srv, tmp_path)
        assert strategy == "prefix-list"
        # Everything the server received, including the first request's echo attempt, is counted ...
        assert used.prompt_tokens == srv.prompt_tokens_received
        # ... and the tokens it computed are the ones it did not read from its cache.
        assert used.cache_reported == used.requests
        assert used.evaluated_prompt_tokens() == (srv.prompt_tokens_evaluated, "")


async def test_prefix_list_keeps_usage_of_a_server_that_counts_all_prompts(tmp_path: Path) -> None:
    async with FakeOpenAIServer(usage_mode="sum") as srv:
        used, strategy = await _send_all(srv, tmp_path)
        assert strategy == "prefix-list"
        assert used.prompt_tokens == srv.prompt_tokens_received
        assert used.evaluated_prompt_tokens() == (srv.prompt_tokens_evaluated, "")


async def test_prefix_list_without_tokenizer_estimates_every_prompt_not_the_first(tmp_path: Path) -> None:
    async with FakeOpenAIServer(usage_mode="first") as srv:
        used, _ = await _send_all(srv, tmp_path)
        assert 0.7 * srv.prompt_tokens_received <= used.prompt_tokens <= 1.3 * srv.prompt_tokens_received
        # Cache use of the prompts after the first is not reported, so the evaluated count is undefined.
        evaluated, reason = used.evaluated_prompt_tokens()
        assert evaluated is None and "did not report" in reason


async def test_echo_answers_each_record_in_one_request_with_the_prefix_lists_distributions(tmp_path: Path) -> None:
    async with (
        FakeOpenAIServer(echo=True, prefix_logprobs=True) as echo_srv,
        FakeOpenAIServer(usage_mode="first", tokenize=True, prefix_logprobs=True) as list_srv,
    ):
        answers = {}
        for name, srv in (("echo", echo_srv), ("list", list_srv)):
            client = make_client(f"openai-compatible:{srv.url}/v1/m", fast_config(tmp_path / name, cache=False))
            answers[name] = [[t.top for t in (await client.top_logprobs(_request(p))).logprobs] for p in PROMPTS]
            assert client.logprob_strategy() == ("echo" if name == "echo" else "prefix-list")
            if name == "echo":
                assert client.meter.total.requests == len(PROMPTS)
                assert client.meter.total.prompt_tokens == echo_srv.prompt_tokens_received
            await client.aclose()
        assert answers["echo"] == answers["list"]
        assert echo_srv.prompt_tokens_received * 2 < list_srv.prompt_tokens_received


def test_cost_bills_cached_and_cache_written_tokens_at_their_prices() -> None:
    usage = Usage(prompt_tokens=1_000_000, cached_prompt_tokens=600_000, cache_write_tokens=100_000)
    assert Price(1.0, 5.0, cached_input_per_mtok=0.1, cache_write_per_mtok=1.25).cost(usage) == pytest.approx(
        0.3 + 0.06 + 0.125
    )
    assert Price(1.0, 5.0).cost(usage) == pytest.approx(1.0)  # a table without cache prices bills all alike


def test_usage_json_of_earlier_versions_still_reads() -> None:
    old = {"prompt_tokens": 5, "completion_tokens": 2, "requests": 1, "cache_hits": 0, "cost_usd": None}
    u = Usage.from_json(old)
    assert (u.prompt_tokens, u.cached_prompt_tokens, u.cache_reported) == (5, 0, 0)
    assert Usage.from_json((u + Usage(cached_prompt_tokens=3, cache_reported=1)).to_json()).cached_prompt_tokens == 3


def test_anthropic_marks_only_a_long_enough_shared_prefix() -> None:
    short = {"messages": [{"role": "user", "content": "x" * 100}], "system": "s" * 100}
    mark_cache_prefix(short, 1024)
    assert short["system"] == "s" * 100 and short["messages"][0]["content"] == "x" * 100
    shots = [{"role": "user", "content": "e" * 3000}, {"role": "assistant", "content": "a" * 2000}]
    long = {"messages": [*shots, {"role": "user", "content": "now"}], "system": "s" * 400}
    mark_cache_prefix(long, 1024)
    assert long["messages"][1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert long["messages"][2]["content"] == "now"


# -- the run plan: strategy in the manifest, estimates, refusals ------------------------------------------


def _priced(tmp_path: Path, input_per_mtok: float) -> str:
    import json

    path = tmp_path / "prices.json"
    price = {"input_per_mtok": input_per_mtok, "output_per_mtok": 1}
    path.write_text(json.dumps({"models": {"openai-compatible:*": price}}))
    return str(path)


async def test_billed_simulator_without_prompt_logprobs_refuses_logprob_and_auto_takes_json(tmp_path: Path) -> None:
    from fake_llm import synthetic_record

    from autointerp.errors import UserError
    from autointerp.pipeline import ExplainConfig, run_explain
    from autointerp.rundir import RunDir

    async with FakeOpenAIServer(usage_mode="first", tokenize=True) as srv:
        spec = f"openai-compatible:{srv.url}/v1/m"
        base = dict(explainer=spec, simulator=spec, prices=_priced(tmp_path, 2.0), max_records_per_split=2)
        records = [synthetic_record(i) for i in range(2)]
        with pytest.raises(UserError, match=r"serves no prompt logprobs.*--simulator-kind json"):
            await run_explain(ExplainConfig(**base, simulator_kind="logprob", llm_cache=False), tmp_path / "a", records)
        with pytest.raises(UserError, match="exceeds --max-cost"):
            await run_explain(ExplainConfig(**base, max_cost=1e-9, llm_cache=False), tmp_path / "b", records)
        assert not any("messages" in b for b in srv.bodies)  # refused before any chat request
        await run_explain(ExplainConfig(**base, llm_cache=False, baseline=False), tmp_path / "c", records)
        plan = RunDir.open(tmp_path / "c").manifest()["llm"]
        assert plan["logprob_strategy"] == "prefix-list" and plan["simulator_kind"] == "json"
        assert plan["estimate"]["simulator"]["prompt_tokens"] > 0 and plan["estimated_cost_usd"] > 0
