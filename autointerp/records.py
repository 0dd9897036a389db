"""The core data types that flow through the pipeline, and their JSON form.

    FeatureRecord  (sampling)  ->  Explanation (explain)  ->  Simulation (simulate)  ->  Score (score)

Every number that can be undefined is ``None`` with a ``reason``; never NaN, never a silent 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, order=True)
class FeatureId:
    """One feature: a source address plus an index.

    String form ``<source>:<index>``, e.g. ``gemma2-9b/L20:1234`` or ``gemma3-270m/L6/mlp_neurons:17``.
    """

    source: str
    """Address of the feature source (an SAE registry address, or ``<model>/<hook>`` for neurons)."""
    index: int
    """Index of the feature (neuron or latent) within its source."""

    def __str__(self) -> str:
        return f"{self.source}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> FeatureId:
        source, sep, index = text.rpartition(":")
        if not sep or not source or not (index.isascii() and index.isdigit()):
            raise ValueError(f"not a feature id: {text!r} (expected '<source>:<index>', e.g. 'gemma2-9b/L20:12')")
        return cls(source, int(index))


@dataclass
class ActivationRecord:
    """One token window and a feature's activation on each of its tokens."""

    tokens: list[str]
    """Decoded text of each token, exactly as the tokenizer produced it (not escaped for display)."""
    token_ids: list[int]
    """Token ids, same length as ``tokens``."""
    activations: FloatArray
    """float32 activation per token, same length as ``tokens``."""
    window: int = -1
    """Index of this window in the sampled corpus (-1 if unknown); train/test disjointness is by window."""

    def __post_init__(self) -> None:
        self.activations = np.asarray(self.activations, dtype=np.float32)
        if not (len(self.tokens) == len(self.token_ids) == len(self.activations)):
            raise ValueError(
                f"ActivationRecord lengths differ: {len(self.tokens)} tokens, {len(self.token_ids)} ids, "
                f"{len(self.activations)} activations"
            )

    @property
    def max_activation(self) -> float:
        return float(self.activations.max()) if len(self.activations) else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "activations": [float(a) for a in self.activations],
            "window": self.window,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ActivationRecord:
        return cls(
            tokens=list(d["tokens"]),
            token_ids=[int(t) for t in d["token_ids"]],
            activations=np.asarray(d["activations"], dtype=np.float32),
            window=int(d.get("window", -1)),
        )


@dataclass
class FeatureStats:
    """Statistics of one feature over every token of the sampled corpus."""

    n_tokens: int
    """Number of tokens the statistics were computed over."""
    frequency: float
    """Fraction of tokens where the activation is > 0 (firing frequency)."""
    max: float
    """Largest activation seen."""
    mean: float
    """Mean activation over all tokens."""
    mean_active: float | None = None
    """Mean activation over firing tokens; None when the feature never fired."""
    quantile_edges: list[float] = field(default_factory=list)
    """Edges of the activation-quantile bins the quantile examples were drawn from (of the per-window max)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureStats:
        return cls(**d)


SPLITS = ("train", "valid", "test_top", "test_quantiles", "test_random", "train_random")
"""The example splits of a :class:`FeatureRecord` (disjoint windows): ``train`` for the explainer, ``valid``
for best-of-N selection and calibration, ``test_*`` for scoring, ``train_random`` (random windows on the
train side, for the contrastive explainer's hard negatives; empty unless sampled with ``n_train_random``).
The one list of split names."""

TEST_SPLITS = ("test_top", "test_random", "test_quantiles")
"""The scored splits, in the order their simulations are requested."""


@dataclass
class FeatureRecord:
    """Everything sampled for one feature. ``train`` is for explainers only; ``test_*`` for scorers only.

    Train and test examples come from disjoint windows (by construction in the sampler)."""

    id: FeatureId
    stats: FeatureStats
    train: list[ActivationRecord]
    """Examples shown to the explainer (top-activating and quantile examples)."""
    test_top: list[ActivationRecord]
    """Held-out top-activating examples, for scoring."""
    test_quantiles: list[ActivationRecord]
    """Held-out examples across activation quantiles, for scoring."""
    test_random: list[ActivationRecord]
    """Held-out random windows (mostly non-activating), for scoring."""
    valid: list[ActivationRecord] = field(default_factory=list)
    """Held-out examples for best-of-N explanation selection; disjoint from train and test."""
    vocab_projection: dict[str, Any] | None = None
    """Tokens the feature's output direction promotes and suppresses (logit lens), as
    ``{"top": [[token, logit], ...], "bottom": [...], "method": ...}``; None when not computed (see
    autointerp/steering.py). Absent from older records."""
    train_random: list[ActivationRecord] = field(default_factory=list)
    """Random windows on the train side (mostly non-activating), disjoint from every other split: the pool
    the contrastive explainer's hard negatives come from, so no held-out ``test_*`` window is ever shown to
    an explainer. Empty unless sampled (``--n-train-random``) and in older records."""

    @property
    def dead(self) -> bool:
        """True when the feature never fired in the sampled corpus."""
        return self.stats.max <= 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "stats": self.stats.to_json(),
            "train": [r.to_json() for r in self.train],
            "test_top": [r.to_json() for r in self.test_top],
            "test_quantiles": [r.to_json() for r in self.test_quantiles],
            "test_random": [r.to_json() for r in self.test_random],
            "valid": [r.to_json() for r in self.valid],
            **({"vocab_projection": self.vocab_projection} if self.vocab_projection is not None else {}),
            **({"train_random": [r.to_json() for r in self.train_random]} if self.train_random else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureRecord:
        def recs(key: str) -> list[ActivationRecord]:
            return [ActivationRecord.from_json(r) for r in d.get(key, [])]

        return cls(
            id=FeatureId.parse(d["id"]),
            stats=FeatureStats.from_json(d["stats"]),
            train=recs("train"),
            test_top=recs("test_top"),
            test_quantiles=recs("test_quantiles"),
            test_random=recs("test_random"),
            valid=recs("valid"),
            vocab_projection=d.get("vocab_projection"),
            train_random=recs("train_random"),
        )


@dataclass
class Usage:
    """Token and request counts of LLM calls.

    ``prompt_tokens`` counts every prompt token sent (all prompts of a multi-prompt request), cached or not.
    ``cached_prompt_tokens`` is the part of them the server served from its prefix cache and
    ``cache_write_tokens`` the part it wrote to a billed cache (Anthropic), counted over the
    ``cache_reported`` requests whose server reported its cache use; on other requests cache use is unknown.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    """Requests actually sent to a backend (cache hits excluded)."""
    cache_hits: int = 0
    cost_usd: float = 0.0
    cached_prompt_tokens: int = 0
    """Prompt tokens the server read from its prefix cache instead of computing them (where it reports them)."""
    cache_write_tokens: int = 0
    """Prompt tokens written to a billed prompt cache (Anthropic ``cache_creation_input_tokens``)."""
    cache_reported: int = 0
    """Requests whose server reported its cache use (the cache counts above cover these requests only)."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.requests + other.requests,
            self.cache_hits + other.cache_hits,
            self.cost_usd + other.cost_usd,
            self.cached_prompt_tokens + other.cached_prompt_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_reported + other.cache_reported,
        )

    def evaluated_prompt_tokens(self) -> tuple[int | None, str]:
        """(prompt tokens the servers computed, "") when every request reported its cache use, else
        (None, reason)."""
        if self.cache_reported < self.requests:
            return None, f"{self.requests - self.cache_reported} of {self.requests} requests did not report cache use"
        return self.prompt_tokens - self.cached_prompt_tokens, ""

    def to_json(self) -> dict[str, Any]:
        return {  # asdict's result, without its deep copies (called once per LLM answer)
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "cost_usd": self.cost_usd,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_reported": self.cache_reported,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Usage:
        """Reads this form and the older one without the cache fields; an undefined cost (None) reads as 0."""
        return cls(
            prompt_tokens=int(d.get("prompt_tokens") or 0),
            completion_tokens=int(d.get("completion_tokens") or 0),
            requests=int(d.get("requests") or 0),
            cache_hits=int(d.get("cache_hits") or 0),
            cost_usd=float(d.get("cost_usd") or 0.0),
            cached_prompt_tokens=int(d.get("cached_prompt_tokens") or 0),
            cache_write_tokens=int(d.get("cache_write_tokens") or 0),
            cache_reported=int(d.get("cache_reported") or 0),
        )


@dataclass
class Explanation:
    """A natural-language label for one feature."""

    feature: FeatureId
    text: str
    """The label, e.g. "names of cities, mostly in Europe"."""
    explainer: str
    """Spec of the explainer: kind, LLM spec and settings, e.g. "token_activation_pair[openai:gpt-4o-mini]"."""
    prompt_hash: str
    """sha256 (first 16 hex) of the prompt template(s) used."""
    raw: str = ""
    """The LLM's full response, before parsing."""
    usage: Usage = field(default_factory=Usage)
    candidate: int = 0
    """Index among the N candidates generated for this feature."""
    baseline: bool = False
    """True for a shuffled-baseline explanation (another feature's label), scored to show the null."""

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": str(self.feature),
            "text": self.text,
            "explainer": self.explainer,
            "prompt_hash": self.prompt_hash,
            "raw": self.raw,
            "usage": self.usage.to_json(),
            "candidate": self.candidate,
            "baseline": self.baseline,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Explanation:
        return cls(
            feature=FeatureId.parse(d["feature"]),
            text=d["text"],
            explainer=d["explainer"],
            prompt_hash=d["prompt_hash"],
            raw=d.get("raw", ""),
            usage=Usage.from_json(d.get("usage", {})),
            candidate=int(d.get("candidate", 0)),
            baseline=bool(d.get("baseline", False)),
        )


@dataclass
class Simulation:
    """A simulator's prediction of a feature's activation on each token of one record.

    Either ``expected`` is set (one value per token, on the simulator's scale), or ``failed`` holds the
    reason the simulation could not be made. A failed simulation is never turned into zeros."""

    expected: FloatArray | None
    """Expected activation per token, or None when failed."""
    distribution: npt.NDArray[np.float32] | None = None
    """Optional [n_tokens, n_values] probabilities over the discrete scale values."""
    failed: str | None = None
    """Why the simulation failed; None when it succeeded."""

    def __post_init__(self) -> None:
        if (self.expected is None) == (self.failed is None):
            raise ValueError("a Simulation has exactly one of `expected` and `failed`")
        if self.expected is not None:
            self.expected = np.asarray(self.expected, dtype=np.float32)
            if not np.all(np.isfinite(self.expected)):
                raise ValueError("simulated values must be finite; record the simulation as failed instead")

    @property
    def ok(self) -> bool:
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": None if self.expected is None else [float(x) for x in self.expected],
            "distribution": None if self.distribution is None else np.asarray(self.distribution).tolist(),
            "failed": self.failed,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Simulation:
        exp = d.get("expected")
        dist = d.get("distribution")
        return cls(
            expected=None if exp is None else np.asarray(exp, dtype=np.float32),
            distribution=None if dist is None else np.asarray(dist, dtype=np.float32),
            failed=d.get("failed"),
        )


@dataclass
class Score:
    """One scorer's rating of one explanation. ``value`` is None (with a ``reason``) when undefined."""

    name: str
    """Scorer name, e.g. "correlation", "correlation_top", "detection", "fuzzing"."""
    value: float | None
    reason: str | None = None
    """Why ``value`` is None (e.g. "true activations are constant"); None when defined."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The scorer's settings, so scores from different settings are never mixed silently."""
    details: dict[str, Any] = field(default_factory=dict)
    """Scorer-specific extras (per-example correctness, counts, ...). ``undefined_by: "configuration"`` marks a
    score undefined because the run's settings did not ask for it (e.g. r_squared under --no-calibrate): readers
    may leave such a score out, unlike one that failed."""

    @property
    def by_configuration(self) -> bool:
        """Undefined because the run's settings did not ask for it (see ``details``), not because it failed."""
        return self.value is None and self.details.get("undefined_by") == "configuration"

    def __post_init__(self) -> None:
        if self.value is not None:
            v = float(self.value)
            if not math.isfinite(v):
                raise ValueError(f"score {self.name} is not finite ({v}); return None with a reason instead")
            self.value = v
        elif not self.reason:
            raise ValueError(f"score {self.name} is undefined but has no reason")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Score:
        return cls(**d)
