"""The one scorer contract, the context every scorer gets, and cost accounting.

A :class:`Scorer` rates one explanation of one feature: ``await scorer.score(eid, text, record)`` returns
:class:`Scored`: the :class:`Score` rows it produces and the LLM usage spent (one scorer may give several,
e.g. ``simulation`` gives correlation, r_squared, ...). Every scorer is built by its registry entry
(:mod:`autointerp.scorers.registry`) from a :class:`ScoreContext`: the run's config, its LLM clients, the
run-dir-cached simulations, and :class:`Models`, which loads the subject model, the feature source and
embedding / LM scorer models lazily, once per run, with the sampler's own loaders
(``autointerp.subject.load_subject``, ``autointerp.sources.registry.resolve_source``).

Cost: :func:`with_cost` adds ``details["cost"] = {requests, prompt_tokens, completion_tokens, seconds}`` to
every score of one call. ``seconds`` is the wall time of the call; for LLM-judged scorers run concurrently it
includes time waiting for the shared client, so compare per-latent costs from runs with the same
concurrency. Scorers with no LLM calls report 0 requests and tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autointerp.records import ActivationRecord, FeatureRecord, Score, Simulation, Usage

if TYPE_CHECKING:
    from autointerp.embedding import Embedder
    from autointerp.llm.base import LLMClient
    from autointerp.pipeline import ExplainConfig
    from autointerp.sources.base import FeatureSource
    from autointerp.subject import Subject

log = logging.getLogger(__name__)

class SimulationsFn(Protocol):
    """(explanation_id, text, record, split, indices) -> simulations of that split's records (run-dir cached;
    ``indices`` None: the first ``max_records_per_split``) and the simulator usage spent on the missing ones."""

    def __call__(
        self, eid: str, text: str, record: FeatureRecord, split: str, indices: Sequence[int] | None = None
    ) -> Awaitable[tuple[list[Simulation], Usage]]: ...


@dataclass
class Scored:
    """What one scorer call produced: its scores and the LLM usage it cost."""

    scores: list[Score]
    usage: Usage = field(default_factory=Usage)


class Scorer(Protocol):
    """One way of rating an explanation."""

    judge: str
    """What produced the scores (an LLM spec, a simulator, an embedding or LM model), the ``judge`` column of
    scores.jsonl; scores are keyed by (explanation, score name, judge)."""
    score_names: tuple[str, ...]
    """Names of the Score rows this scorer writes (all present means done on resume)."""

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored: ...


@dataclass
class Models:
    """Models needed at scoring time, loaded on first use and kept for the run (threads / device set once)."""

    device: str = "cpu"
    threads: int | None = None
    loaded: dict[str, str] = field(default_factory=dict)
    """What was loaded, and how (recorded in the run's manifest)."""
    memo: dict[str, Any] = field(default_factory=dict)
    """Per-run caches of scorers (built afresh per call) that outlive one call: unsteered outputs, ..."""
    _subjects: dict[str, Subject] = field(default_factory=dict)
    _sources: dict[str, tuple[FeatureSource, Subject]] = field(default_factory=dict)
    _embedders: dict[str, Embedder] = field(default_factory=dict)

    def subject(self, model: str) -> Subject:
        """A subject / base LM loaded with the sampler's loader (``autointerp.subject.load_subject``)."""
        if model not in self._subjects:
            from autointerp.subject import load_subject

            self._subjects[model] = load_subject(model, device=self.device, threads=self.threads)
            self.loaded[f"model:{model}"] = f"autointerp.subject.load_subject on {self.device} (the sampler's loader)"
        return self._subjects[model]

    def source_and_subject(self, address: str) -> tuple[FeatureSource, Subject]:
        """The feature source at ``address`` (a FeatureId's source) and the subject model it reads."""
        if address not in self._sources:
            from autointerp.sources.registry import resolve_address, resolve_source

            subject = self.subject(resolve_address(address).model)
            self._sources[address] = (resolve_source(address, subject=subject), subject)
            self.loaded[f"source:{address}"] = "autointerp.sources.registry.resolve_source (the sampler's resolver)"
        return self._sources[address]

    def has_subject(self, model: str) -> bool:
        return model in self._subjects

    def add_subject(self, model: str, subject: Subject) -> None:
        """Use an already-loaded model under ``model`` (tests, notebooks, a sampler in the same process)."""
        self._subjects[model] = subject
        self.loaded[f"model:{model}"] = "given by the caller"

    def loaded_sources(self) -> list[str]:
        """Addresses of the sources loaded so far."""
        return list(self._sources)

    def add_source(self, address: str, source: FeatureSource, subject: Subject) -> None:
        """Use an already-built source (and the subject it reads) for features of ``address``."""
        self._sources[address] = (source, subject)
        self.loaded[f"source:{address}"] = "given by the caller"

    def embedder(self, name: str) -> Embedder:
        if name not in self._embedders:
            from autointerp.embedding import Embedder

            self._embedders[name] = Embedder(name, device=self.device)
            self.loaded[f"embedding:{name}"] = "sentence-transformers"
        return self._embedders[name]


@dataclass
class ScoreContext:
    """What a registry entry needs to build its scorer."""

    config: ExplainConfig
    judge: LLMClient
    simulator: LLMClient
    simulations: SimulationsFn
    models: Models


def with_cost(scores: Sequence[Score], usage: Usage, seconds: float) -> list[Score]:
    """The same scores with ``details["cost"]`` (requests, prompt and completion tokens, seconds) set."""
    cost = {
        "requests": usage.requests,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "seconds": round(seconds, 4),
    }
    for sc in scores:
        sc.details = {**sc.details, "cost": cost}
    return list(scores)


def usage_of(details: dict[str, Any]) -> Usage:
    """LLM usage a score recorded in its details (requests, prompt_tokens, completion_tokens)."""
    return Usage(
        int(details.get("prompt_tokens", 0)), int(details.get("completion_tokens", 0)), int(details.get("requests", 0))
    )


def limit_records(records: list[ActivationRecord], n: int) -> list[ActivationRecord]:
    """The first ``n`` records (all when ``n <= 0``)."""
    return records if n <= 0 else records[:n]


class Timer:
    """Wall time since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
