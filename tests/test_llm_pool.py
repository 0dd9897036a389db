"""Endpoint pools: least-loaded routing over loopback servers, failover when one dies mid-run (nothing lost
or duplicated, results equal a one-endpoint run), and bad pool specs refused before any request."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from llm_fixtures import fast_config

from autointerp.errors import UserError
from autointerp.llm import ChatMessage, ChatRequest, make_client
from autointerp.llm.factory import check_spec, probe_endpoint
from autointerp.llm.pool import PoolBackend, parse_pool
from autointerp.llm.testing import FakeOpenAIServer


def _chat(i: int) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", f"request {i}"),), max_tokens=8)


def _pool_spec(servers: list[FakeOpenAIServer]) -> str:
    urls = [f"{s.url}/v1" for s in servers]
    return "openai-compatible:" + ",".join([*urls[:-1], urls[-1] + "/m"])


async def test_pool_spreads_requests_over_its_endpoints(tmp_path: Path) -> None:
    servers = [await FakeOpenAIServer(latency_s=0.02).start() for _ in range(3)]
    try:
        client = make_client(_pool_spec(servers), fast_config(tmp_path, cache=False, max_concurrency=4))
        assert isinstance(client.backend, PoolBackend) and client.config.max_concurrency == 12
        out = await asyncio.gather(*(client.chat(_chat(i)) for i in range(120)))
        assert [r.text for r in out] == [f"t=0.0 request {i}" for i in range(120)]
        counts = [sum("messages" in b for b in s.bodies) for s in servers]
        assert sum(counts) == 120 and min(counts) >= 30, counts  # least-loaded routing uses every endpoint
        await client.aclose()
    finally:
        for s in servers:
            await s.stop()


async def test_pool_survives_an_endpoint_killed_mid_run_with_nothing_lost_or_duplicated(tmp_path: Path) -> None:
    n = 300
    single = await FakeOpenAIServer().start()
    one = make_client(f"openai-compatible:{single.url}/v1/m", fast_config(tmp_path / "one", cache=False))
    expected = [r.text for r in await asyncio.gather(*(one.chat(_chat(i)) for i in range(n)))]
    await one.aclose()
    await single.stop()

    servers = [await FakeOpenAIServer(latency_s=0.01).start() for _ in range(3)]
    client = make_client(_pool_spec(servers), fast_config(tmp_path / "pool", cache=False, max_concurrency=8))
    done = 0

    async def one_request(i: int) -> str:
        nonlocal done
        r = await client.chat(_chat(i))
        done += 1
        if done == n // 3:
            await servers[1].stop()  # killed with requests in flight on it
        return r.text

    got = await asyncio.gather(*(one_request(i) for i in range(n)))
    assert got == expected  # every request answered once, in order, as by one endpoint
    stats = client.backend.stats()  # type: ignore[attr-defined]
    assert sum(v["answered"] for v in stats.values()) == n
    assert stats[f"openai-compatible:{servers[1].url}/v1/m"]["down"] == 1
    await client.aclose()
    for s in servers:
        await s.stop()


async def test_unreachable_endpoint_at_start_is_reported_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alive = await FakeOpenAIServer().start()
    dead = await FakeOpenAIServer().start()
    await dead.stop()  # its port now refuses connections
    spec = _pool_spec([dead, alive])
    await asyncio.to_thread(probe_endpoint, spec, 2)  # the CLI's check before a run
    assert f"{dead.url}/v1/m" in caplog.text and "unreachable" in caplog.text
    caplog.clear()
    client = make_client(spec, fast_config(tmp_path, cache=False))
    out = await asyncio.gather(*(client.chat(_chat(i)) for i in range(20)))
    assert len(out) == 20 and alive.requests >= 20
    assert f"{dead.url}/v1/m is unreachable" in caplog.text  # the pool's own start-up probe
    await client.aclose()
    await alive.stop()
    with pytest.raises(UserError, match="no endpoint of the pool answers"):
        await asyncio.to_thread(probe_endpoint, _pool_spec([dead, dead]), 2)


@pytest.mark.parametrize(
    ("spec_or_yaml", "message"),
    [
        ("openai-compatible:http://127.0.0.1:8001/v1,htp:/bad/v1/m", "expected http"),
        ("openai-compatible:http://127.0.0.1:8001/v1,,http://127.0.0.1:8002/v1/m", "empty entry"),
        ("openai-compatible:http://127.0.0.1:99999/v1,http://127.0.0.1:8002/v1/m", "not a valid URL"),
        ("model: m\nendpoints: []\n", "endpoint list is empty"),
        ("model: m\nendpoint: [http://127.0.0.1:8001/v1]\n", "unknown key(s) endpoint"),
        ("model: m\nendpoints:\n  - url: http://127.0.0.1:8001/v1\n    concurrency: 4\n", "unknown key(s) concurrency"),
        ("model: m\nendpoints:\n  - url: http://127.0.0.1:8001/v1\n    max_concurrency: 0\n", "positive number"),
    ],
)
def test_bad_pool_specs_are_one_line_errors_before_any_request(tmp_path: Path, spec_or_yaml: str, message: str) -> None:
    spec = spec_or_yaml
    if not spec.startswith("openai-compatible:"):
        path = tmp_path / "pool.yaml"
        path.write_text(spec_or_yaml)
        spec = f"pool:{path}"
    with pytest.raises(UserError, match=re.escape(message)) as e:
        check_spec(spec, fast_config(tmp_path))
    assert "\n" not in str(e.value)


def test_pool_yaml_gives_each_endpoint_its_limits(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(
        "kind: vllm-server\nmodel: qwen\nendpoints:\n"
        "  - url: http://127.0.0.1:8001/v1\n    max_concurrency: 32\n    requests_per_minute: 600\n"
        "  - http://127.0.0.1:8002/v1\n"
    )
    pool = parse_pool(f"pool:{path}")
    assert pool.kind == "vllm-server" and pool.model == "qwen"
    assert [(e.url, e.max_concurrency, e.requests_per_minute) for e in pool.endpoints] == [
        ("http://127.0.0.1:8001/v1", 32, 600.0),
        ("http://127.0.0.1:8002/v1", None, None),
    ]


def test_explain_with_a_bad_pool_exits_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autointerp.cli import main

    run = tmp_path / "run"
    empty = tmp_path / "empty.yaml"
    empty.write_text("model: m\nendpoints: []\n")
    for spec, message in (
        ("openai-compatible:http://127.0.0.1:8001/v1,http://:8002/v1/m", "bad spec"),
        (f"pool:{empty}", "endpoint list is empty"),
    ):
        with pytest.raises(SystemExit) as e:
            main(
                [
                    "explain",
                    "--model",
                    "gemma3-270m",
                    "--hook",
                    "L0/mlp_neurons",
                    "--run-dir",
                    str(run),
                    "--simulator",
                    spec,
                ]
            )
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err
        assert not run.exists()
