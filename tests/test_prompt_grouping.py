"""Fewer prompts per latent (issue #12 item 4): several records per simulation prompt, several latents'
judge examples per detection / fuzzing prompt. Each answer must land on its own record / latent / example,
and fewer prompt tokens must be sent."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import numpy as np
import pytest
from fake_llm import FakeLLM, synthetic_record
from test_pipeline import smart_chat

from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients, ExplainConfig, run_explain, run_score
from autointerp.records import Score, Usage
from autointerp.rundir import read_jsonl
from autointerp.score import ClassifierSettings, DetectionScorer, FuzzingScorer, JudgeGrouper, JudgePart, split_usage
from autointerp.simulate import LogprobSimulator

KEYWORDS = [" cat", " dog", " bird", " mat"]


# -- several records per simulation prompt ------------------------------------------------------------


async def test_records_in_one_prompt_get_the_values_of_their_own_tokens() -> None:
    docs = [["a", " cat"], [" dog"], [" cat", " sat", " cat"]]
    fake = FakeLLM()
    sims = await LogprobSimulator(fake, "the word cat").simulate_many(docs)
    assert len(fake.logprob_requests) == 1  # one request for the three records
    assert [len(s.expected) for s in sims if s.expected is not None] == [2, 1, 3]
    high = [[bool(v > 7) for v in s.expected] for s in sims if s.expected is not None]
    assert high == [[False, True], [False], [True, False, True]]
    alone = [await LogprobSimulator(FakeLLM(), "the word cat").simulate(d) for d in docs]
    for together, single in zip(sims, alone, strict=True):
        assert together.expected is not None and single.expected is not None
        assert np.allclose(together.expected, single.expected)


async def test_a_record_failing_the_digit_rules_fails_alone() -> None:
    def lp(prompt: str, pos: int) -> dict[str, float]:
        return {"ing": -0.01} if prompt[:pos].endswith("odd\t") else {"0": -0.01}

    sims = await LogprobSimulator(FakeLLM(logprob_fn=lp), "x").simulate_many([["a"], ["odd"], [], ["b", "c"]])
    assert [s.failed is None for s in sims] == [True, False, False, True]
    assert sims[1].failed is not None and "no digit" in sims[1].failed
    assert sims[2].failed == "no tokens to simulate"
    assert sims[3].expected is not None and len(sims[3].expected) == 2


async def test_a_failed_request_fails_every_record_of_the_prompt() -> None:
    class Broken(FakeLLM):
        async def top_logprobs(self, request):  # type: ignore[no-untyped-def]
            from autointerp.llm.base import LLMError

            raise LLMError("down")

    sims = await LogprobSimulator(Broken(), "x").simulate_many([["a"], ["b"]])
    assert all(s.expected is None and s.failed and "down" in s.failed for s in sims)


async def test_records_per_prompt_sends_fewer_prompts_and_tokens_for_the_same_scores(tmp_path: Path) -> None:
    records = [synthetic_record(i, KEYWORDS[i]) for i in range(3)]
    out = {}
    for k in (1, 5):
        fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
        cfg = ExplainConfig(scorers="simulation", n_top_examples=4, max_records_per_split=3, records_per_prompt=k)
        summary = await run_explain(cfg, tmp_path / f"k{k}", records, Clients(fake, fake, fake))
        assert not summary.errors
        scores = {
            (r["explanation_id"], r["score"]["name"]): (r["score"]["value"], r["judge"])
            for r in read_jsonl(tmp_path / f"k{k}" / "scores.jsonl")
        }
        out[k] = (len(fake.logprob_requests), summary.usage["simulator"].prompt_tokens, scores)
    (req1, tok1, s1), (req5, tok5, s5) = out[1], out[5]
    assert req5 < req1 and tok5 < tok1
    # the fake simulator reads only each slot's own line, so every correlation must come out the same
    corr1 = {k: v for k, (v, _) in s1.items() if k[1] == "correlation"}
    corr5 = {k: v for k, (v, _) in s5.items() if k[1] == "correlation"}
    assert corr1 and corr1.keys() == corr5.keys()
    for key in corr1:
        assert corr1[key] == pytest.approx(corr5[key])
    assert all(j.endswith("+records-per-prompt=5") for (_, name), (_, j) in s5.items() if name == "correlation")
    assert not any("records-per-prompt" in j for _, j in s1.values())


# -- several latents per judge prompt -------------------------------------------------------------------


def grouped_judge(req: ChatRequest) -> str:
    """A perfect judge that reads grouped prompts: each example is judged against the explanation it is
    listed under (detection: its text holds the word; fuzzing: its marks hold the word only)."""
    body = req.messages[-1].content
    marked = "marked between" in req.messages[0].content
    answers: list[int] = []
    word = ""
    for ln in body.splitlines():
        m = re.match(r"Feature (?:\d+ )?explanation: (\w+)", ln)
        if m:
            word = m.group(1)
        elif ln.startswith("Example "):
            if marked:
                spans = re.findall(r"<<(.*?)>>", ln)
                answers.append(int(bool(spans) and all(re.fullmatch(rf"( {word})+", x) for x in spans)))
            else:
                answers.append(int(f" {word}" in ln))
    return str(answers)


def _feature_of_example(req: ChatRequest) -> list[str]:
    out, word = [], ""
    for ln in req.messages[-1].content.splitlines():
        m = re.match(r"Feature (?:\d+ )?explanation: (\w+)", ln)
        if m:
            word = m.group(1)
        elif ln.startswith("Example "):
            out.append(word)
    return out


async def _score_three_latents_grouped(cls: type[DetectionScorer], fake: FakeLLM) -> tuple[JudgeGrouper, list[Score]]:
    """Latents 0-2 (keywords cat, dog, bird) scored at once by ``cls`` with one grouper of 3 latents."""
    records = [synthetic_record(i, KEYWORDS[i]) for i in range(3)]
    grouper = JudgeGrouper(3)
    scorers = [cls(fake) for _ in records]
    for s in scorers:
        s.grouper = grouper
    jobs = (s.score(KEYWORDS[i].strip(), r) for i, (s, r) in enumerate(zip(scorers, records, strict=True)))
    return grouper, list(await asyncio.gather(*jobs))


@pytest.mark.parametrize("cls", [DetectionScorer, FuzzingScorer])
async def test_grouped_judge_maps_each_answer_to_its_latent_and_example(cls: type[DetectionScorer]) -> None:
    fake = FakeLLM(chat_fn=grouped_judge)
    grouper, scores = await _score_three_latents_grouped(cls, fake)
    # a perfect judge scores 1.0 only when every answer went back to its own latent and example
    assert [sc.value for sc in scores] == [1.0, 1.0, 1.0]
    assert all(sc.details["n_classified"] == sc.details["n_examples"] == 10 for sc in scores)
    assert all(sc.details["n_with_probability"] == 10 for sc in scores)
    # 10 examples each at 5 per prompt: 2 grouped judge requests hold all 3 latents' parts
    assert len(fake.chat_requests) == 2 and grouper.batcher.batch_sizes == [3, 3]
    assert all(sorted(set(_feature_of_example(r))) == ["bird", "cat", "dog"] for r in fake.chat_requests)
    assert len(fake.logprob_requests) == 2  # one P(yes) request per grouped prompt
    # each latent is charged its share of the requests' usage; the shares add up to what was sent
    sent = sum(len("".join(m.content for m in r.messages)) // 4 for r in fake.chat_requests)
    sent += sum(len(r.prompt) // 4 for r in fake.logprob_requests)
    assert sum(sc.details["prompt_tokens"] for sc in scores) == sent


async def test_a_wrong_mapping_would_show_a_judge_that_flags_one_latent_only() -> None:
    """The judge says 1 for every example listed under 'cat' and 0 elsewhere: the cat latent gets recall 1,
    the others recall 0, whatever the order in which their parts joined the prompt."""

    def only_cat(req: ChatRequest) -> str:
        return str([int(w == "cat") for w in _feature_of_example(req)])

    fake = FakeLLM(chat_fn=only_cat)
    _, scores = await _score_three_latents_grouped(DetectionScorer, fake)
    recall = [sc.details["metrics"]["recall"] for sc in scores]
    assert recall == [1.0, 0.0, 0.0]
    assert [sc.details["confusion"]["fp"] for sc in scores] == [4, 0, 0]


async def test_parts_of_one_latent_never_share_a_prompt() -> None:
    fake = FakeLLM(chat_fn=grouped_judge)
    grouper = JudgeGrouper(4)
    det = DetectionScorer(fake)
    det.grouper = grouper
    parts = [JudgePart("f:0", "cat", ("a cat",)), JudgePart("f:0", "dog", ("a cat",)), JudgePart("f:1", "dog", ("x",))]
    await asyncio.gather(*(grouper.submit(det, p) for p in parts))
    assert sorted(grouper.batcher.batch_sizes) == [1, 2]


async def test_a_failed_grouped_request_fails_every_latent_of_the_group() -> None:
    from autointerp.llm.base import LLMError

    fake = FakeLLM(fail_chat=True)
    grouper = JudgeGrouper(2)
    scorers = [DetectionScorer(fake) for _ in range(2)]
    for s in scorers:
        s.grouper = grouper
    recs = [synthetic_record(i, KEYWORDS[i]) for i in range(2)]
    jobs = (s.score("x", r) for s, r in zip(scorers, recs, strict=True))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(r, LLMError) for r in results)


async def test_latents_per_prompt_in_a_run_sends_fewer_judge_tokens_for_the_same_scores(tmp_path: Path) -> None:
    records = [synthetic_record(i, KEYWORDS[i]) for i in range(4)]
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    cfg = ExplainConfig(scorers="simulation", n_top_examples=4, max_records_per_split=3, concurrency=8)
    await run_explain(cfg, tmp_path / "run", records, Clients(fake, fake, fake))
    out = {}
    for k in (1, 3):
        judge = FakeLLM(spec="local:judge", chat_fn=grouped_judge)
        clients = Clients(judge, judge, judge)
        summary = await run_score(
            tmp_path / "run", "detection,fuzzing", clients=clients, settings={"latents_per_prompt": k}
        )
        assert not summary.errors
        out[k] = (len(judge.chat_requests), summary.usage["judge"].prompt_tokens)
    rows = list(read_jsonl(tmp_path / "run" / "scores.jsonl"))
    by = {}
    for r in rows:
        if r["score"]["name"] in ("detection", "fuzzing"):
            grouped = r["judge"].endswith("+latents-per-prompt=3")
            by[(r["explanation_id"], r["score"]["name"], grouped)] = r["score"]["value"]
    keys = {(e, n) for e, n, _ in by}
    assert len(keys) == 24  # 4 latents x (selected + baseline + yardstick) x 2 scorers, each scored both ways
    for e, n in keys:  # the perfect judge reads each part against its own label: the same scores both ways
        assert by[(e, n, False)] == pytest.approx(by[(e, n, True)])
    (req1, tok1), (req3, tok3) = out[1], out[3]
    assert req3 < req1 and tok3 < tok1


def test_split_usage_shares_add_up_to_the_whole() -> None:
    u = Usage(prompt_tokens=101, completion_tokens=7, requests=2, cached_prompt_tokens=50, cost_usd=0.3)
    parts = split_usage(u, [5, 5, 3])
    total = parts[0] + parts[1] + parts[2]
    assert (total.prompt_tokens, total.completion_tokens, total.requests, total.cached_prompt_tokens) == (101, 7, 2, 50)
    assert math.isclose(total.cost_usd, 0.3)
    assert parts[0].prompt_tokens >= parts[2].prompt_tokens


@pytest.mark.parametrize("field", ["records_per_prompt", "latents_per_prompt"])
def test_group_sizes_below_one_are_refused(field: str) -> None:
    with pytest.raises(UserError, match=field.replace("_", "-")):
        ExplainConfig(**{field: 0})


# -- examples before the explanation --------------------------------------------------------------------


def _common_prefix(a: str, b: str) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:n]


class OneSlotCacheLLM(FakeLLM):
    """FakeLLM whose chat usage reports the prompt's common prefix with the previous chat prompt as cached
    (one cache slot, as llama.cpp keeps it); 4 characters a token."""

    def __init__(self, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.slot = ""
        self.usages: list[Usage] = []

    async def chat(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        resp = await super().chat(request)
        text = "\n".join(f"<{m.role}>{m.content}" for m in request.messages)
        common = len(_common_prefix(self.slot, text))
        self.slot = text
        resp.usage = Usage(prompt_tokens=len(text) // 4, cached_prompt_tokens=common // 4, requests=1)
        self.usages.append(resp.usage)
        return resp


async def test_examples_first_prompts_of_two_labels_share_every_example_as_their_prefix() -> None:
    rec = synthetic_record(0, " cat")
    for first in (False, True):
        settings = ClassifierSettings(examples_first=first, judge_probabilities=False)
        fake = FakeLLM(chat_fn=grouped_judge)
        for label in ("cat", "dog"):
            await DetectionScorer(fake, settings).score(label, rec)
        a, b = fake.chat_requests[0].messages[-1].content, fake.chat_requests[2].messages[-1].content
        common = _common_prefix(a, b)
        shared = all(ln in common for ln in a.splitlines() if ln.startswith("Example "))
        assert shared == first


async def test_examples_first_lets_a_prefix_cache_serve_the_baseline_labels_examples() -> None:
    rec = synthetic_record(0, " cat")
    uncached = {}
    for first in (False, True):
        settings = ClassifierSettings(examples_first=first, judge_probabilities=False)
        fake = OneSlotCacheLLM(chat_fn=grouped_judge)
        cat, dog = DetectionScorer(fake, settings), DetectionScorer(fake, settings)
        for start in range(0, 10, 5):  # the baseline's prompt right after the label's, as a backend sees them
            for scorer, label in ((cat, "cat"), (dog, "dog")):
                texts, _ = scorer.examples(rec, np.random.default_rng([0, 0]))
                await scorer.judge_parts([JudgePart("f", label, tuple(texts[start : start + 5]))])
        uncached[first] = sum(r.prompt_tokens - r.cached_prompt_tokens for r in fake.usages)
    assert uncached[True] < 0.8 * uncached[False]


def test_examples_first_with_several_latents_per_prompt_is_refused() -> None:
    with pytest.raises(UserError, match="one latent per prompt"):
        ExplainConfig(judge_examples_first=True, latents_per_prompt=3)
