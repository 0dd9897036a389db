"""Usage metered at the client, per role, and logged as it happens: a priced judge costs tokens x price, and a
run killed with SIGKILL then resumed reports the server's request count, minus at most the requests in flight.

Both tests run the real openai-compatible backend against a loopback server that plays explainer, simulator
and judge by model name and counts what it served per model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_llm import synthetic_record

from autointerp.llm.testing import HTTPReply, LoopbackHTTPServer, json_reply
from autointerp.pipeline import ExplainConfig, run_explain
from autointerp.rundir import load_run_usage

TESTS = Path(__file__).parent


class RoleServer(LoopbackHTTPServer):
    """Chat completions answered by prompt: an explainer prompt gets a label, a simulator prompt a JSON
    simulation, a judge prompt "yes" to every example. Counts requests and the tokens it reports, per model
    (the backend's capability probes apart, as ``<model>/probe``: they belong to no role)."""

    def __init__(self, latency_s: float = 0.0) -> None:
        super().__init__()
        self.latency_s = latency_s
        self.served: dict[str, dict[str, int]] = {}

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        req = json.loads(body or b"{}")
        model = str(req.get("model", ""))
        prompt_text = req.get("prompt")
        if isinstance(prompt_text, list):
            prompt_text = prompt_text[0] if prompt_text else ""
        if isinstance(prompt_text, str) and prompt_text.startswith("a\t"):
            # The backend's own probe of the server's logprob support ("a\tb\tc"), sent outside any role.
            model += "/probe"
        tally = self.served.setdefault(model, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        tally["requests"] += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if path.endswith("/v1/completions"):  # a judge reading the probability of "yes" at each answer slot
            prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
            top = {"1": -0.1, "0": -2.5}
            choices = [{"index": i, "text": "1", "finish_reason": "length", "logprobs": {
                "tokens": ["1"], "token_logprobs": [-0.1], "top_logprobs": [top], "text_offset": [len(p)]}}
                for i, p in enumerate(prompts)]
            prompt = sum(len(p) // 4 + 1 for p in prompts)
            tally["prompt_tokens"] += prompt
            tally["completion_tokens"] += len(prompts)
            usage = {"prompt_tokens": prompt, "completion_tokens": len(prompts)}
            return json_reply({"id": "x", "object": "text_completion", "created": 0, "model": model,
                               "choices": choices, "usage": usage})
        last = req["messages"][-1]["content"]
        if "summarize" in req["messages"][0]["content"].lower():
            answer = "Explanation: cat tokens"
        elif "Tokens (index" in last:
            lines = re.findall(r"^(\d+)\t(.*)$", last, re.M)
            answer = json.dumps([[int(i), 9 if "cat" in t else 0] for i, t in lines])
        else:
            answer = str([1] * sum(ln.startswith("Example ") for ln in last.splitlines()))
        prompt = sum(len(m["content"]) for m in req["messages"]) // 4 + 1
        completion = len(answer) // 4 + 1
        tally["prompt_tokens"] += prompt
        tally["completion_tokens"] += completion
        return json_reply({
            "id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        })


PRICES = {"expl": (1.0, 2.0), "sim": (3.0, 5.0), "judge": (7.0, 11.0)}  # USD per million tokens: in, out


def _prices_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "prices.json"
    models = {f"openai-compatible:{url}/v1/{m}": {"input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in
              PRICES.items()}
    path.write_text(json.dumps({"models": models}))
    return path


async def test_each_role_reports_tokens_times_its_price(tmp_path: Path) -> None:
    async with RoleServer() as srv:
        spec = f"openai-compatible:{srv.url}/v1/"
        cfg = ExplainConfig(
            explainer=spec + "expl", simulator=spec + "sim", judge=spec + "judge", simulator_kind="json",
            scorers="simulation,detection", classifier_examples=4, examples_per_prompt=4, n_top_examples=4,
            max_records_per_split=2, baseline=False, llm_cache=False, timeout_s=30,
            prices=str(_prices_file(tmp_path, srv.url)),
        )
        summary = await run_explain(cfg, tmp_path / "run", [synthetic_record(i, " cat") for i in range(2)])
    usage = json.loads((tmp_path / "run" / "usage.json").read_text())
    for role, model in (("explainer", "expl"), ("simulator", "sim"), ("judge", "judge")):
        served, u = srv.served[model], usage[role]
        assert served["requests"] > 0 and u["spec"] == spec + model
        assert (u["requests"], u["prompt_tokens"], u["completion_tokens"]) == (
            served["requests"], served["prompt_tokens"], served["completion_tokens"])
        p_in, p_out = PRICES[model]
        expected = (served["prompt_tokens"] * p_in + served["completion_tokens"] * p_out) / 1e6
        assert u["cost_usd"] == pytest.approx(expected)
        assert summary.usage[role].requests == served["requests"]
    roles = ("explainer", "simulator", "judge")
    assert usage["total"]["cost_usd"] == pytest.approx(sum(usage[r]["cost_usd"] for r in roles))
    assert usage["cost_reason"] is None


CHILD = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from fake_llm import synthetic_record
from autointerp.pipeline import ExplainConfig, run_explain
cfg = ExplainConfig(**{cfg!r})
asyncio.run(run_explain(cfg, Path({run!r}), [synthetic_record(i, " cat") for i in range(8)]))
"""


async def test_usage_survives_kill_9_and_resume(tmp_path: Path) -> None:
    async with RoleServer(latency_s=0.02) as srv:
        spec = f"openai-compatible:{srv.url}/v1/sim"  # one spec: one client, so at most 2 requests in flight
        cfg: dict[str, Any] = dict(
            explainer=spec, simulator=spec, judge=spec, simulator_kind="json", scorers="simulation",
            n_top_examples=4, max_records_per_split=2, baseline=False, llm_cache=False, llm_concurrency=2,
            concurrency=1, timeout_s=30, prices=str(_prices_file(tmp_path, srv.url)),
        )
        run = tmp_path / "run"
        script = CHILD.format(tests=str(TESTS), cfg=cfg, run=str(run))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
        try:
            for _ in range(3000):  # kill it after the server has answered some of its requests
                if srv.served.get("sim", {}).get("requests", 0) >= 15 or child.returncode is not None:
                    break
                await asyncio.sleep(0.01)
        finally:
            if child.returncode is None:
                os.kill(child.pid, signal.SIGKILL)
            await child.wait()
        assert child.returncode == -signal.SIGKILL, f"the run finished before it could be killed: {srv.served}"
        killed_at = srv.served["sim"]["requests"]
        assert not (run / "usage.json").exists()
        assert 13 <= load_run_usage(run)["total"]["requests"] <= killed_at  # logged as it happened

        await run_explain(ExplainConfig(**cfg), run, [synthetic_record(i, " cat") for i in range(8)])
    served = srv.served["sim"]["requests"]
    usage = json.loads((run / "usage.json").read_text())
    assert usage == load_run_usage(run)
    assert served - 2 <= usage["total"]["requests"] <= served  # only the requests in flight at the kill are lost
    assert served > killed_at
