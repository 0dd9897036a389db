"""Before a run: how many prompt tokens each LLM role will send, and what they will cost.

:func:`estimate_run` builds the run's real prompts (explainer prompts from each feature's train examples,
all-at-once simulation prompts of every record to simulate, judge prompts of detection/fuzzing) with a
stand-in label of :data:`LABEL_CHARS` characters, and counts the prompt tokens each role *sends* with the
simulator's logprob strategy: a prefix list sends the text before every slot, the other strategies send
each prompt once. Characters become tokens at the backend's own ratio where its tokenizer can be asked
(llama.cpp ``/tokenize``), else at :data:`DEFAULT_CHARS_PER_TOKEN`. It covers the whole run (work a
resumed run already did is counted again), so it is an upper bound for a resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autointerp.llm.base import ChatRequest, CompletionRequest, LLMClient, LLMError, LLMResponse, TopLogprobsRequest
from autointerp.llm.usage import PriceTable
from autointerp.records import FeatureRecord, Usage

LABEL_CHARS = 60
"""Length of the stand-in label used in simulation and judge prompts (labels are typically 30-80 characters)."""
DEFAULT_CHARS_PER_TOKEN = 3.0
"""Characters per token when the backend's tokenizer cannot be asked (token listings run at about 2-3)."""
_LABEL = "x" * LABEL_CHARS


@dataclass(frozen=True)
class RoleEstimate:
    """Estimated prompt tokens sent and requests of one LLM role, and their cost (None: unpriced spec)."""

    role: str
    spec: str
    prompt_tokens: int
    requests: int
    cost_usd: float | None
    how: str
    """The simulator's strategy and the characters-per-token source, in words."""

    def to_json(self) -> dict[str, object]:
        return {
            "spec": self.spec,
            "prompt_tokens": self.prompt_tokens,
            "requests": self.requests,
            "cost_usd": self.cost_usd,
            "how": self.how,
        }


def _chat_chars(request: ChatRequest) -> int:
    return sum(len(m.content) for m in request.messages)


def simulation_chars(texts: Sequence[Sequence[str]], strategy: str, simulator_kind: str) -> tuple[int, int]:
    """(characters sent, requests) to simulate token lists ``texts`` once each with a stand-in label."""
    from autointerp.prompts import load_template
    from autointerp.simulate import JsonSimulator, build_all_at_once_prompt

    chars = 0
    if simulator_kind == "json" or strategy == "none":
        json_sim = JsonSimulator(NoClient(), _LABEL)
        for tokens in texts:
            chars += _chat_chars(json_sim.build_request(tokens))
        return chars, len(texts)
    template = load_template("simulate_all_at_once.j2")
    for tokens in texts:
        prompt = build_all_at_once_prompt(template, _LABEL, tokens)
        chars += sum(prompt.slots) if strategy == "prefix-list" else len(prompt.text)
    return chars, len(texts)


class NoClient:
    """A client that is never called: prompts are built, not sent."""

    spec = "none"
    supports_completion = False
    supports_logprobs = False

    async def chat(self, request: ChatRequest) -> LLMResponse:
        raise LLMError("estimates send no requests")

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        raise LLMError("estimates send no requests")

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        raise LLMError("estimates send no requests")

    async def aclose(self) -> None:
        return None


def estimate_run(
    config: object,
    records: Iterable[FeatureRecord],
    specs: dict[str, str],
    strategy: str,
    prices: PriceTable,
    chars_per_token: dict[str, tuple[float, str]],
) -> dict[str, RoleEstimate]:
    """Prompt tokens per role for explaining and scoring ``records`` with ``config`` (an ExplainConfig).

    ``specs``: LLM spec per role (explainer, simulator, judge); ``strategy``: the simulator's logprob strategy
    (prefix-list, echo, prompt-logprobs, forward-pass, none); ``chars_per_token``: per role, the ratio and
    where it comes from."""
    from autointerp.explain import explainer_request_for, select_train_examples
    from autointerp.pipeline import ExplainConfig
    from autointerp.score import ClassifierSettings, DetectionScorer, FuzzingScorer
    from autointerp.scorers.base import limit_records as _limit

    assert isinstance(config, ExplainConfig)
    cfg = config
    chars = {"explainer": 0, "simulator": 0, "judge": 0}
    requests = {"explainer": 0, "simulator": 0, "judge": 0}
    client: LLMClient = NoClient()
    kinds = [cfg.explainer_settings(k) for k in cfg.explainer_kinds]
    # candidates per kind (the no-LLM tokens kind gives one and sends nothing), and a --refine revision
    per_kind = [1 if s.kind == "tokens" else cfg.n_candidates for s in kinds]
    candidates = sum(per_kind) + (1 if cfg.refine else 0)
    # each feature's label, a baseline label from another feature, and the token-list yardstick
    scored = 1 + int(cfg.baseline) + int(cfg.yardstick)
    classifiers = [
        cls(client, ClassifierSettings(cfg.classifier_examples, cfg.classifier_examples, cfg.examples_per_prompt))
        for name, cls in (("detection", DetectionScorer), ("fuzzing", FuzzingScorer))
        if name in cfg.scorer_list
    ]
    import numpy as np

    for record in records:
        examples = select_train_examples(record, cfg.n_top_examples, cfg.n_quantile_examples)
        if examples:
            for s, n_cand in zip(kinds, per_kind, strict=True):
                if s.kind != "tokens":
                    chars["explainer"] += n_cand * _chat_chars(explainer_request_for(s, record))
                    requests["explainer"] += n_cand
            if cfg.refine:  # about the size of the first kind's request
                chars["explainer"] += _chat_chars(explainer_request_for(kinds[0], record))
                requests["explainer"] += 1
        texts = [getattr(record, s)[i].tokens for s, idx in cfg.simulated_records(record) for i in idx]
        valid = [r.tokens for r in _limit(record.valid, cfg.max_records_per_split)]
        if "simulation" in cfg.scorer_list:
            c, n = simulation_chars(texts, strategy, cfg.simulator_kind)
            # each explanation's simulations, and with --subtract-prior the feature's neutral ones (shared)
            times = scored + (1 if cfg.subtract_prior else 0)
            chars["simulator"] += times * c
            requests["simulator"] += times * n
        if candidates > 1:  # candidates are compared by simulation on the valid records
            c, n = simulation_chars(valid, strategy, cfg.simulator_kind)
            chars["simulator"] += candidates * c
            requests["simulator"] += candidates * n
        for clf in classifiers:
            ex_texts, _ = clf.examples(record, np.random.default_rng([cfg.seed, record.id.index]))
            per = max(1, cfg.examples_per_prompt)
            for start in range(0, len(ex_texts), per):
                chars["judge"] += scored * _chat_chars(clf.request(_LABEL, ex_texts[start : start + per]))
                requests["judge"] += scored
    out: dict[str, RoleEstimate] = {}
    for role, n_chars in chars.items():
        ratio, source = chars_per_token.get(role, (DEFAULT_CHARS_PER_TOKEN, "assumed"))
        tokens = round(n_chars / ratio)
        price = prices.price(specs[role])
        cost = None if price is None else price.cost(Usage(prompt_tokens=tokens))
        how = f"{ratio:.2f} characters/token ({source})"
        if role == "simulator":
            how = f"{strategy if cfg.simulator_kind != 'json' else 'json'}; {how}"
        out[role] = RoleEstimate(role, specs[role], tokens, requests[role], cost, how)
    return out


def total_cost(estimates: dict[str, RoleEstimate]) -> tuple[float | None, str]:
    """(sum of the roles' estimated costs, "") or (None, reason naming the unpriced specs)."""
    missing = sorted({e.spec for e in estimates.values() if e.cost_usd is None and e.prompt_tokens})
    if missing:
        return None, f"no price for {', '.join(missing)}"
    return sum(e.cost_usd or 0.0 for e in estimates.values()), ""


def describe(estimates: dict[str, RoleEstimate]) -> str:
    """One line: estimated prompt tokens sent per role, and the cost."""
    parts = [f"{r} ~{e.prompt_tokens:,} in {e.requests:,} requests ({e.how})" for r, e in estimates.items()]
    cost, reason = total_cost(estimates)
    money = f"~${cost:.4f} of prompt tokens" if cost is not None else f"cost undefined ({reason})"
    return "estimated prompt tokens to send: " + "; ".join(parts) + f"; {money}"


async def settle_strategy(client: LLMClient) -> str:
    """The logprob strategy of ``client`` (settled with one tiny request where the backend must ask);
    ``none`` for chat-only clients, ``unknown`` for clients that do not say."""
    if not client.supports_logprobs:
        return "none"
    settle = getattr(client, "settle_logprob_strategy", None)
    if settle is None:
        return "unknown"
    return str(await settle())


async def measured_chars_per_token(client: LLMClient, sample: str) -> tuple[float, str]:
    """Characters per token of ``sample`` by the backend's own tokenizer where it has one (llama.cpp
    ``/tokenize``), else :data:`DEFAULT_CHARS_PER_TOKEN` (assumed)."""
    backend = getattr(client, "backend", None)
    tokenize = getattr(backend, "tokenize_pieces", None)
    if tokenize is not None and sample and getattr(backend, "tokenizer_endpoint", None) is not False:
        try:
            pieces = await tokenize(sample)
        except LLMError:
            pieces = None
        if pieces:
            return len(sample) / len(pieces), "server tokenizer"
    return DEFAULT_CHARS_PER_TOKEN, "assumed"
