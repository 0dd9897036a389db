"""Usage and cost accounting: a price table, :class:`UsageMeter` and :class:`MeteredClient`, and the
append-only usage log of a run.

Prices are USD per million tokens, keyed by client spec (exact match first, then fnmatch patterns such as
``local:*``). The packaged table is ``autointerp/data/prices.json``; a user file replaces it. A spec with
no price makes the run's cost undefined (None, with the reason naming the spec), never a silent 0.

**Per-role metering.** A run gives each LLM role (:data:`ROLES`: explainer, simulator, judge) its own
:class:`MeteredClient` around a possibly shared underlying client, with a :class:`UsageMeter` of that role.
What those meters count is the only source of a run's usage: every answer (or failure) is appended, as it
arrives, to the run's :class:`UsageLog` (``usage.jsonl``), and ``usage.json`` is derived from that log by
:func:`usage_from_log`. A killed run therefore loses at most the usage of the requests in flight.

Usage-log lines (one JSON object per line)::

    {"session": "<time>", "prices": "<price table source>"}        a session (run_explain / run_score) starts
    {"role", "spec", "kind", "usage": Usage.to_json(), "priced": bool}  one answer (cost filled when priced)
    {"role", "spec", "kind", "failed": true}                        one request that failed for good
    {"clients": {spec: {attempts, retries, cache_hits, ...}}}       client counters at the end of a session

``kind`` is the request type (:data:`KINDS`: chat, complete, top_logprobs), so a role's tokens can be told
apart by what they were spent on (e.g. the judge's answers against its P(yes) requests); lines written
before it existed have none and are counted under "unknown".

Sums over :class:`Usage` go through its fields generically, so new counters added to ``Usage`` are summed
without changes here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import (
    ChatRequest,
    ClientWrapper,
    CompletionRequest,
    LLMClient,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
)
from autointerp.records import Usage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Prompt tokens read from the provider's prompt cache cost
    ``cached_input_per_mtok`` and tokens written to it ``cache_write_per_mtok`` (both default to the input
    price: a table without them bills every prompt token alike)."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = usage.cached_prompt_tokens
        written = usage.cache_write_tokens
        full = usage.prompt_tokens - cached - written
        read_price = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write_price = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        return (
            full * self.input_per_mtok
            + cached * read_price
            + written * write_price
            + usage.completion_tokens * self.output_per_mtok
        ) / 1e6


_PRICE_KEYS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")


def _price(v: dict[str, Any]) -> Price:
    unknown = sorted(set(v) - set(_PRICE_KEYS))
    if unknown:
        raise ValueError(f"unknown price keys {', '.join(unknown)} (known: {', '.join(_PRICE_KEYS)})")

    def optional(key: str) -> float | None:
        return None if v.get(key) is None else float(v[key])

    return Price(
        float(v["input_per_mtok"]),
        float(v["output_per_mtok"]),
        optional("cached_input_per_mtok"),
        optional("cache_write_per_mtok"),
    )


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
            prices = {str(k): _price(v) for k, v in models.items() if not str(k).startswith("_")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            where = path or "the packaged price table"
            raise UserError(
                f"cannot read prices from {where} ({e}); give a JSON file "
                '{"models": {"openai:gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6, '
                '"cached_input_per_mtok": 0.075}}}'
            ) from e
        return cls(prices, source)

    def price(self, spec: str) -> Price | None:
        if spec in self.prices:
            return self.prices[spec]
        for pattern, p in self.prices.items():
            if fnmatch.fnmatchcase(spec, pattern):
                return p
        return None


ROLES = ("explainer", "simulator", "judge")
"""The LLM roles of a run, each metered by its own client."""

KINDS = ("chat", "complete", "top_logprobs")
"""The request types of :class:`~autointerp.llm.base.LLMClient`, as the usage log names them."""


def usage_from_json(d: object) -> Usage:
    """A :class:`Usage` from its JSON form, over whatever fields ``Usage`` has (missing or null: the default)."""
    if not isinstance(d, dict):
        return Usage()
    return Usage(**{f.name: d[f.name] for f in dataclasses.fields(Usage) if d.get(f.name) is not None})


class UsageLog:
    """The append-only usage log of a run directory (``usage.jsonl``; lines in the module doc).

    Each line is written whole and flushed to the operating system at once, so it survives the process
    being killed (``close`` also fsyncs). A torn last line left by a crash is cut off before appending."""

    def __init__(self, path: Path) -> None:
        from autointerp.rundir import repair_jsonl

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        if self._f.closed:
            raise ValueError(f"{self.path} is closed")
        self._f.write(json.dumps(row, sort_keys=True) + "\n")
        self._f.flush()

    def start_session(self, prices: PriceTable) -> None:
        self.append({"session": time.strftime("%Y-%m-%dT%H:%M:%S"), "prices": prices.source})

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


@dataclass
class UsageMeter:
    """Sums the usage of every request, per spec: tokens, requests sent, cache hits, failures, $. A role's
    meter (``role`` set) also appends each answer and failure to the run's ``log``."""

    prices: PriceTable = field(default_factory=PriceTable.load)
    by_spec: dict[str, Usage] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    unpriced: set[str] = field(default_factory=set)
    role: str = ""
    """The LLM role this meter counts (see :data:`ROLES`); empty for a client's own meter."""
    log: UsageLog | None = None
    """Where each answer is appended as it arrives (the run's usage log), if anywhere."""

    def add(self, spec: str, usage: Usage, kind: str = "") -> None:
        """Count one answer of ``spec``; ``kind`` (one of :data:`KINDS`) is written to the log line."""
        self.by_spec[spec] = self.by_spec.get(spec, Usage()) + usage
        if self.log is not None:
            priced = spec not in self.unpriced
            self.log.append(
                {"role": self.role, "spec": spec, "kind": kind, "usage": usage.to_json(), "priced": priced}
            )

    def add_failure(self, spec: str, kind: str = "") -> None:
        self.failures[spec] = self.failures.get(spec, 0) + 1
        if self.log is not None:
            self.log.append({"role": self.role, "spec": spec, "kind": kind, "failed": True})

    def price_response(self, spec: str, response: LLMResponse) -> None:
        """Fill ``response.usage.cost_usd`` from the table (no change for cache hits); an unpriced spec that
        sent a request is remembered, so the cost is undefined rather than 0."""
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


class MeteredClient(ClientWrapper):
    """Prices each answer and adds its usage (or its failure) to a :class:`UsageMeter`. A run wraps the
    (possibly shared) client of each role in one, with that role's meter; ``aclose`` closes ``inner``, so
    close the underlying clients instead when they are shared."""

    def __init__(self, inner: LLMClient, meter: UsageMeter) -> None:
        super().__init__(inner)
        self.meter = meter

    async def _metered(self, kind: str, call: Awaitable[LLMResponse]) -> LLMResponse:
        """Await one call of request type ``kind``; price and count its answer, or count its failure."""
        try:
            response = await call
        except LLMError:
            self.meter.add_failure(self.spec, kind)
            raise
        self.meter.price_response(self.spec, response)
        self.meter.add(self.spec, response.usage, kind)
        return response

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._metered("chat", self.inner.chat(request))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._metered("complete", self.inner.complete(request))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._metered("top_logprobs", self.inner.top_logprobs(request))

    async def aclose(self) -> None:
        await self.inner.aclose()


def read_usage_json(path: Path) -> dict[str, Any]:
    """A ``usage.json`` written by an earlier version (before the usage log); ``{}`` when it is missing, and
    ``{}`` with a warning when it cannot be read or is not a JSON object."""
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


def usage_from_log(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``usage.json``, derived from the lines of a run's usage log (all sessions).

    Per role (:data:`ROLES`, plus any other role found): the summed :class:`Usage` fields, ``spec`` (the
    specs it used, comma-separated), ``by_spec`` (usage per spec), ``by_kind`` (usage per request type,
    :data:`KINDS`, "unknown" for lines written without one), ``failures``; ``total``: summed over
    roles. A role that sent a request to a spec with no price has ``cost_usd`` None, and so has the total;
    ``cost_reason`` names the specs and the fix and ``unpriced`` maps role -> specs. ``prices``: the price
    table of the last session; ``clients``: per spec, client counters summed over sessions."""
    by_role: dict[str, dict[str, Usage]] = {}
    kinds: dict[str, dict[str, Usage]] = {}
    failures: dict[str, int] = {}
    unpriced: dict[str, list[str]] = {}
    clients: dict[str, dict[str, int]] = {}
    prices = ""
    for row in rows:
        if "session" in row:
            prices = str(row.get("prices", ""))
        elif "clients" in row:
            for spec, counters in dict(row["clients"] or {}).items():
                acc = clients.setdefault(str(spec), {})
                for k, v in dict(counters).items():
                    if isinstance(v, int) and not isinstance(v, bool):
                        acc[k] = acc.get(k, 0) + v
        elif "role" in row:
            role, spec = str(row["role"]), str(row.get("spec", ""))
            specs = by_role.setdefault(role, {})
            if row.get("failed"):
                specs.setdefault(spec, Usage())
                failures[role] = failures.get(role, 0) + 1
                continue
            used = usage_from_json(row.get("usage"))
            specs[spec] = specs.get(spec, Usage()) + used
            kind = str(row.get("kind") or "unknown")
            role_kinds = kinds.setdefault(role, {})
            role_kinds[kind] = role_kinds.get(kind, Usage()) + used
            if not row.get("priced", True) and used.requests and spec not in unpriced.get(role, []):
                unpriced.setdefault(role, []).append(spec)
    out: dict[str, Any] = {}
    total = Usage()
    for role in [*ROLES, *sorted(set(by_role) - set(ROLES))]:
        specs = by_role.get(role, {})
        used = Usage()
        for u in specs.values():
            used = used + u
        total = total + used
        out[role] = {
            **used.to_json(),
            "spec": ", ".join(specs),
            "by_spec": {k: v.to_json() for k, v in specs.items()},
            "by_kind": {k: v.to_json() for k, v in kinds.get(role, {}).items()},
            "failures": failures.get(role, 0),
        }
        if unpriced.get(role):
            out[role]["cost_usd"] = None
    missing = sorted({s for v in unpriced.values() for s in v})
    out["total"] = {**total.to_json(), "cost_usd": None if missing else total.cost_usd}
    out["cost_reason"] = (
        f"no price for {', '.join(missing)} in {prices}; pass a price table with --prices FILE" if missing else None
    )
    out["unpriced"] = unpriced
    out["prices"] = prices
    out["clients"] = clients
    return out
