"""Usage and cost accounting: a price table and a per-run :class:`UsageMeter`.

Prices are USD per million tokens, keyed by client spec (exact match first, then fnmatch patterns such as
``local:*``). The packaged table is ``autointerp/data/prices.json``; a user file replaces it. A spec with
no price makes the run's cost undefined (None, with the reason naming the spec), never a silent 0.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest, CompletionRequest, LLMClient, LLMError, LLMResponse, TopLogprobsRequest
from autointerp.records import Usage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input_per_mtok + usage.completion_tokens * self.output_per_mtok) / 1e6


class PriceTable:
    """Prices by spec; ``load(None)`` reads the packaged table, ``load(path)`` a user's JSON file."""

    def __init__(self, prices: dict[str, Price], source: str) -> None:
        self.prices = prices
        self.source = source

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        try:
            if path is None:
                text = resources.files("autointerp").joinpath("data/prices.json").read_text()
                source = "autointerp/data/prices.json"
            else:
                text = Path(path).read_text()
                source = str(path)
            raw = json.loads(text)
            models = raw.get("models", raw)
            prices = {
                str(k): Price(float(v["input_per_mtok"]), float(v["output_per_mtok"]))
                for k, v in models.items()
                if not str(k).startswith("_")
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            where = path or "the packaged price table"
            raise UserError(
                f"cannot read prices from {where} ({e}); give a JSON file "
                '{"models": {"openai:gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}}'
            ) from e
        return cls(prices, source)

    def price(self, spec: str) -> Price | None:
        if spec in self.prices:
            return self.prices[spec]
        for pattern, p in self.prices.items():
            if fnmatch.fnmatchcase(spec, pattern):
                return p
        return None


@dataclass
class UsageMeter:
    """Sums the usage of every request of a run, per spec: tokens, requests sent, cache hits, failures, $."""

    prices: PriceTable = field(default_factory=PriceTable.load)
    by_spec: dict[str, Usage] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    unpriced: set[str] = field(default_factory=set)

    def add(self, spec: str, usage: Usage) -> None:
        self.by_spec[spec] = self.by_spec.get(spec, Usage()) + usage

    def add_failure(self, spec: str) -> None:
        self.failures[spec] = self.failures.get(spec, 0) + 1

    def price_response(self, spec: str, response: LLMResponse) -> None:
        """Fill ``response.usage.cost_usd`` from the table (no change for cache hits or unpriced specs)."""
        if response.cached:
            return
        p = self.prices.price(spec)
        if p is None:
            if spec not in self.unpriced:
                logger.info("no price for %s in %s: cost reported as undefined", spec, self.prices.source)
            self.unpriced.add(spec)
            return
        response.usage.cost_usd = p.cost(response.usage)

    @property
    def total(self) -> Usage:
        out = Usage()
        for u in self.by_spec.values():
            out = out + u
        return out

    def cost_usd(self) -> tuple[float | None, str]:
        """(total $, "") or (None, reason) when some spec that sent requests has no price."""
        missing = sorted(s for s in self.unpriced if self.by_spec.get(s, Usage()).requests > 0)
        if missing:
            return None, f"no price for {', '.join(missing)} in {self.prices.source}; pass a price file"
        return self.total.cost_usd, ""

    def to_json(self) -> dict[str, object]:
        cost, reason = self.cost_usd()
        return {
            "total": self.total.to_json(),
            "by_spec": {k: v.to_json() for k, v in self.by_spec.items()},
            "failures": dict(self.failures),
            "cost_usd": cost,
            "cost_reason": reason or None,
        }


class MeteredClient:
    """Prices each answer and adds its usage (or its failure) to a :class:`UsageMeter`."""

    def __init__(self, inner: LLMClient, meter: UsageMeter) -> None:
        self.inner = inner
        self.meter = meter
        self.spec = inner.spec
        self.supports_completion = inner.supports_completion
        self.supports_logprobs = inner.supports_logprobs

    def _account(self, response: LLMResponse) -> LLMResponse:
        self.meter.price_response(self.spec, response)
        self.meter.add(self.spec, response.usage)
        return response

    async def chat(self, request: ChatRequest) -> LLMResponse:
        try:
            return self._account(await self.inner.chat(request))
        except LLMError:
            self.meter.add_failure(self.spec)
            raise

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        try:
            return self._account(await self.inner.complete(request))
        except LLMError:
            self.meter.add_failure(self.spec)
            raise

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        try:
            return self._account(await self.inner.top_logprobs(request))
        except LLMError:
            self.meter.add_failure(self.spec)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()
