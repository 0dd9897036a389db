"""Usage and cost accounting: a price table and a per-run :class:`UsageMeter`.

Prices are USD per million tokens, keyed by client spec (exact match first, then fnmatch patterns such as
``local:*``). The packaged table is ``autointerp/data/prices.json``; a user file replaces it. A spec with
no price makes the run's cost undefined (None, with the reason naming the spec), never a silent 0.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

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

    async def _metered(self, call: Awaitable[LLMResponse]) -> LLMResponse:
        """Await one call; price and count its answer, or count its failure."""
        try:
            response = await call
        except LLMError:
            self.meter.add_failure(self.spec)
            raise
        self.meter.price_response(self.spec, response)
        self.meter.add(self.spec, response.usage)
        return response

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._metered(self.inner.chat(request))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._metered(self.inner.complete(request))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._metered(self.inner.top_logprobs(request))

    async def aclose(self) -> None:
        await self.inner.aclose()


def read_run_usage(path: Path) -> dict[str, Any]:
    """A run's ``usage.json`` (see :func:`run_usage_json`); ``{}`` when it is missing, and ``{}`` with a
    warning when it cannot be read or is not a JSON object."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("cannot read %s (%s); its usage is left out", path, e)
        return {}
    if not isinstance(data, dict):
        logger.warning("%s is not a JSON object; its usage is left out", path)
        return {}
    return data


def _usage_from(d: object) -> Usage:
    """A :class:`Usage` from one role's entry of ``usage.json`` (an undefined cost reads as 0: it is kept
    undefined separately, through the unpriced list)."""
    if not isinstance(d, dict):
        return Usage()
    return Usage(
        prompt_tokens=int(d.get("prompt_tokens") or 0),
        completion_tokens=int(d.get("completion_tokens") or 0),
        requests=int(d.get("requests") or 0),
        cache_hits=int(d.get("cache_hits") or 0),
        cost_usd=float(d.get("cost_usd") or 0.0),
    )


def run_usage_json(
    previous: dict[str, Any],
    session: dict[str, Usage],
    specs: dict[str, str],
    prices: PriceTable,
    client_stats: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The content of a run's ``usage.json`` once this session's usage is added to what an earlier session
    of the same run wrote (``previous``, ``{}`` for a new run).

    ``session``: usage per role (explainer, simulator, scorer) this session; ``specs``: the LLM spec of each
    role. A role that sent requests to a spec with no price in ``prices`` has cost None, and so has the
    total; ``cost_reason`` names the specs and the fix. ``client_stats``: per spec, counters such as
    attempts, retries, cache hits/misses and coalesced requests, summed over sessions.
    """
    unpriced: dict[str, list[str]] = {
        str(k): [str(s) for s in v] for k, v in dict(previous.get("unpriced") or {}).items() if isinstance(v, list)
    }
    out: dict[str, Any] = {}
    total = Usage()
    for role, used in session.items():
        spec = specs.get(role, "")
        if used.requests and prices.price(spec) is None and spec not in unpriced.get(role, []):
            unpriced.setdefault(role, []).append(spec)
        merged = _usage_from(previous.get(role)) + used
        total = total + merged
        row: dict[str, Any] = {**merged.to_json(), "spec": spec}
        if unpriced.get(role):
            row["cost_usd"] = None
        out[role] = row
    unpriced = {k: v for k, v in unpriced.items() if v}
    missing = sorted({s for v in unpriced.values() for s in v})
    out["total"] = {**total.to_json(), "cost_usd": None if missing else total.cost_usd}
    out["cost_reason"] = (
        f"no price for {', '.join(missing)} in {prices.source}; pass a price table with --prices FILE"
        if missing
        else None
    )
    out["unpriced"] = unpriced
    out["prices"] = prices.source
    stats: dict[str, dict[str, int]] = {}
    for source in (previous.get("clients"), client_stats):
        for spec, counters in dict(source or {}).items():
            row_stats = stats.setdefault(str(spec), {})
            for k, v in dict(counters).items():
                if isinstance(v, int) and not isinstance(v, bool):
                    row_stats[k] = row_stats.get(k, 0) + v
    out["clients"] = stats
    return out
