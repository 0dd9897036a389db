"""Explain -> simulate -> score over many features, into a resumable run directory.

Entry points:

* :func:`run_explain` ``(config, run_dir, records=None, clients=None) -> RunSummary``: explain, select
  the best of N candidates (simulation correlation on ``valid``), add shuffled-label baselines, simulate
  the test splits, score.
* :func:`run_score` ``(run_dir, scorers, ...) -> RunSummary``: (re)score the explanations of an existing
  run with other scorers.

Run directory files: see :mod:`autointerp.rundir` (which reads and writes them) and
``datasets/labelled-dataset-card.md``.

Feature ranges: :func:`run_explain` works through the features in ranges of ``range_size`` (default 1,024):
it reads one range's records (lazily, from a :class:`RecordStream`), explains, baselines (a derangement within
the range) and scores it, then drops it, so memory holds one range however many features the run has. A
range that finished without failures is marked in the manifest (``ranges_done``) and skipped by a rerun.
``shard`` i/n explains the i-th of n contiguous blocks of ranges into a partial run; ``autointerp merge``
(:func:`autointerp.rundir.merge_explain_runs`) concatenates the parts into the unsplit run's files.
:func:`run_score` still loads the whole run.

Resuming: every row is keyed (explanation id; explanation id + split + record index; explanation id +
score name + judge); a rerun reads what is there and only computes what is missing, so nothing is
duplicated or lost. Features run concurrently (``concurrency``), each bounded further by its clients'
own limits; one feature's error never stops the others.

Failed is not final: an LLM request that fails for good (transport error, timeout, 429/5xx after its
retries, a refused key) is a property of the moment, not of the answer. Its explanation, simulation or
judge score is not written; the feature gets an error row instead, and a rerun computes what is missing.
Failures that are properties of an answer (an unparseable label or simulation) are written, and a rerun
keeps them unless ``retry_failed`` asks to compute them again. The stage status is ``partial`` when any
feature failed (``RunSummary.failed_features``); the CLI then exits 1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.config import config_to_dict
from autointerp.corpus import Shard
from autointerp.errors import RunDirError, UserError
from autointerp.evidence import token_label
from autointerp.explain import (
    EXPLAINER_KINDS,
    Explainer,
    ExplainerSettings,
    ExplanationFailed,
    explainer_templates,
    shown_evidence,
)
from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    ClientWrapper,
    CompletionRequest,
    LLMClient,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
    Unsupported,
    capabilities_of,
)
from autointerp.llm.usage import ROLES, MeteredClient, PriceTable, UsageLog, UsageMeter
from autointerp.prompts import load_template
from autointerp.records import TEST_SPLITS, Explanation, FeatureId, FeatureRecord, Score, Simulation, Usage
from autointerp.rundir import (
    MANIFEST,
    USAGE,
    USAGE_LOG,
    ExplanationRow,
    RunData,
    RunDir,
    atomic_write_json,
    explained_features,
    iter_records,
    load_run,
    load_run_usage,
    record_ids,
    short_hash,
)
from autointerp.score import (
    CALIBRATION_REFUSED,
    LABEL_DEPENDENCE,
    LABEL_PRIOR_FLAG,
    NEGATIVE_SETS,
    bootstrap_ci,
    correlation_score,
    derangement,
    label_prior_correlation,
)
from autointerp.scorers.base import Models, ScoreContext, Timer, limit_records, with_cost
from autointerp.scorers.registry import SCORERS, check_scorers, neutral_id, scorer_entries, simulation_judge
from autointerp.simulate import NEUTRAL_LABEL, SIMULATOR_KINDS, make_simulator, subtract_prior

log = logging.getLogger(__name__)

DEFAULT_LLM = "local:qwen2.5-coder-1.5b"

EXECUTION_SETTINGS: tuple[str, ...] = (
    "concurrency", "threads", "timeout_s", "llm_concurrency", "requests_per_minute", "tokens_per_minute",
    "llm_cache", "max_cost",
)
"""Fields of :class:`ExplainConfig` that change how a run executes, never its results: a run resumes under
other values of these (e.g. a longer timeout after the endpoint was found slow)."""

SCORE_SETTINGS: tuple[str, ...] = (
    "negatives", "judge_probabilities", "embedding_model", "surprisal_model", "alpha", "steer_multiplier",
    "steer_mode", "steer_prompts", "steer_new_tokens", "steer_prompt_tokens", "steer_corpus", "scorer_device",
    "prices", "latents_per_prompt", "judge_examples_first", "subtract_prior", "neutral_label",
    *(s for s in EXECUTION_SETTINGS if s != "max_cost"),  # rescoring makes no cost estimate to hold to it
)
"""Fields of :class:`ExplainConfig` that ``autointerp score`` may change for a rescoring: scorer settings and
LLM client settings. Fields that decide which records or examples a score reads are left out, so a score
already in the run is never recomputed on other data under the same key (``records_per_prompt`` too: stored
simulations are keyed by record, not by how they were asked for; ``latents_per_prompt`` and
``judge_examples_first`` label their scores' judge)."""


@dataclass(frozen=True)
class ExplainConfig:
    """Settings of an explain run (field docstrings are the CLI help)."""

    explainer: str = DEFAULT_LLM
    """LLM spec of the explainer, e.g. local:qwen2.5-coder-1.5b, openai:gpt-4o-mini, anthropic:claude-..."""
    simulator: str = DEFAULT_LLM
    """LLM spec of the simulator (logprob simulation needs a completion backend: local:, transformers:)."""
    judge: str = ""
    """LLM spec of the detection/fuzzing judge; empty: same as the explainer."""
    explainer_kind: str = "token_activation_pair"
    """Explainer kind, or a comma list of kinds that each give candidates (the best on the held-out 'valid'
    split is kept): token_activation_pair (OpenAI style), highlighted (delphi style), contrastive (highlighted
    examples beside hard negatives from the train-side train_random split; needs a sample with --n-train-random,
    which explain sets itself when it samples), evidence (the marked tokens' statistics and snippets; the label
    names what they share and quotes them), tokens (no LLM: the marked tokens with the largest summed
    activation)."""
    contrastive_negatives: int = 5
    """contrastive explainer: counterexamples shown, the non-firing train_random windows that share the most
    top-activating tokens with the feature's train examples."""
    n_top_examples: int = 10
    """Top-activating train examples shown to the explainer."""
    n_quantile_examples: int = 0
    """Quantile train examples shown to the explainer besides the top ones."""
    cot: bool = False
    """Ask the explainer to reason step by step before its label."""
    highlight_threshold: float = 0.1
    """highlighted explainer: mark tokens whose activation exceeds this fraction of the examples' maximum
    (dense features such as MLP neurons are positive almost everywhere)."""
    vocab_projection: int = 0
    """Compute each feature's vocabulary projection (this many top and bottom tokens of its output
    direction through the unembedding; needs the subject model and, for SAEs, W_dec) and store it in the
    feature record; 0: no."""
    show_vocab: bool = False
    """Show the vocabulary projection to the explainer beside the examples (needs --vocab-projection)."""
    token_stats: int = 0
    """Show the explainer the this many tokens most often marked in its examples (with counts) and the this
    many with the largest summed activation over them, after the examples; 0: no."""
    trim_examples: int = 0
    """Show the explainer each example as its marked tokens with this many tokens of context on each side
    ("..." where cut); 0: whole windows."""
    n_candidates: int = 1
    """Candidate explanations per feature; with more than 1 the best by simulation on 'valid' is kept."""
    candidate_temperature: float = 0.7
    """Sampling temperature of candidates after the first (the first is greedy)."""
    refine: bool = False
    """One refinement round: the explainer sees the held-out 'valid' records its selected label predicted worst
    (missed activations, false alarms) and may revise the label; the revision is kept only if it scores better on
    'valid' (the test records are never shown or read). Costs one explainer request and the revision's 'valid'
    simulations per feature."""
    explain_retries: int = 1
    """When every candidate's answer is unusable (its label copies a few-shot example of the prompt, or
    cannot be parsed), ask for up to this many more candidates at --candidate-temperature; the unusable ones
    stay in explanations.jsonl as failed. 0: none."""
    simulator_kind: str = "auto"
    """Simulator: logprob (all-at-once), json (chat APIs), or auto (logprob when the backend can)."""
    subtract_prior: bool = False
    """simulation scorer: score the simulation under the label minus the simulation of the same record under
    --neutral-label, token by token, so a correlation measures what the label adds to the simulator's prior
    about the text. The neutral simulation is made once per record and shared by every explanation of the
    feature (stored as FEATURE#neutral): one more simulation per record, not per explanation. Scores are
    stored apart (judge ...+prior-subtracted)."""
    neutral_label: str = NEUTRAL_LABEL
    """The label of the neutral simulation that --subtract-prior subtracts."""
    scorers: str = "simulation"
    """Comma-separated scorers (see autointerp/scorers/registry.py): simulation (correlation, r_squared,
    ...), detection, fuzzing, saebench_detection, embedding, surprisal (input side); intervention,
    intervention_kl (output side: steer the subject model)."""
    max_records_per_split: int = 5
    """Records simulated per split (test_top, test_random, test_quantiles, valid); 0 for all."""
    records_per_prompt: int = 1
    """Records of one split simulated per all-at-once prompt (logprob simulator; the JSON simulator sends one
    record per request): more share one copy of the template and explanation, so fewer prompt tokens are
    sent with one request per record (echo / prompt_logprobs backends), but with llama.cpp's prefix list
    more are sent (every slot's prefix is longer). The default 1 is kept: see benchmarks/README.md for the
    measured score difference."""
    score_quantiles: bool = False
    """Also simulate the test_quantiles records (for correlation_quantiles; costs one more split)."""
    calibrate: bool = True
    """simulation scorer: also simulate the calibration records (held-out top 'valid' records and as many
    spare 'test_random' ones, OpenAI's 1:1 calibration set) to fit r_squared and absolute_deviation_explained.
    --no-calibrate leaves those two undefined and roughly halves the simulator's requests; the correlation
    scores never read the calibration records."""
    classifier_examples: int = 50
    """Activating and non-activating examples each, per detection/fuzzing scorer (delphi: 50 + 50)."""
    examples_per_prompt: int = 5
    """Examples per detection/fuzzing judge request (delphi: 5)."""
    latents_per_prompt: int = 1
    """detection and fuzzing: judge the examples of up to this many latents (their explanations, each with its
    own examples_per_prompt examples) in one request, grouping the prompts of latents scored at the same
    time (see --concurrency); the system text is sent once per group. The default 1 is kept: see
    benchmarks/README.md for the measured score difference."""
    judge_examples_first: bool = False
    """detection and fuzzing: put the examples before the explanation in the judge prompt, so the shuffled
    baseline's prompts (the same examples under another label) share them as a prefix the backend's cache
    serves. The default (explanation first) is kept: see benchmarks/README.md for the measured difference."""
    negatives: str = "random"
    """Non-activating windows for detection, fuzzing, embedding and surprisal: random, or hard (the
    non-firing random windows that share the most top-activating tokens with the feature's examples)."""
    judge_probabilities: bool = True
    """Read the judge's P(yes) for AUCs when its backend gives logprobs: from the logprobs of the judge's own
    answer (llama.cpp, vLLM, OpenAI), else one extra top-logprobs request per judge prompt."""
    embedding_model: str = "all-minilm-l6-v2"
    """embedding scorer: the embedded all-minilm-l6-v2, or any sentence-transformers folder or hub name."""
    surprisal_model: str = "gemma3-270m"
    """surprisal scorer: base LM (embedded name, transformers folder or hub id)."""
    alpha: str = "auto"
    """intervention scorers: steering strength, a number or auto (steer_multiplier x the feature's largest
    activation)."""
    steer_multiplier: float = 4.0
    """intervention scorers, alpha auto: this many times the feature's largest sampled activation."""
    steer_mode: str = "add"
    """intervention scorers: add (alpha x the decoder direction at the hook) or clamp (neurons: set the
    activation to alpha)."""
    steer_prompts: int = 8
    """intervention scorers: neutral corpus prompts per feature."""
    steer_new_tokens: int = 12
    """intervention scorer: greedy continuation length in tokens."""
    steer_prompt_tokens: int = 12
    """intervention scorers: tokens per neutral prompt (BOS included)."""
    steer_corpus: str = "wiki"
    """intervention scorers: corpus the neutral prompts come from (wiki, lee, a file)."""
    scorer_device: str = "cpu"
    """Torch device of the models loaded at scoring time (subject, surprisal LM, embedding model)."""
    baseline: bool = True
    """Also score a shuffled baseline: each feature gets another feature's label (a derangement)."""
    yardstick: bool = True
    """Also score each feature's token-list label (the tokens explainer's, from the same shown examples): the
    no-LLM bar a label must beat to have earned its LLM calls (the shuffled baseline is the floor)."""
    seed: int = 0
    """Seed of candidate sampling, the baseline permutation and the judges' example order."""
    concurrency: int = 4
    """Features processed at once (each client also limits its own requests in flight)."""
    max_failed_fraction: float = 0.2
    """Largest fraction of failed simulations a correlation may skip before it is undefined."""
    threads: int = 2
    """CPU threads of local LLM backends."""
    timeout_s: float = 0.0
    """Seconds one attempt of an LLM request may take; 0: fitted to each request from its prompt size and
    max_tokens, and pushed back while the endpoint keeps answering other requests (a queue is not a stall).
    Two timeouts of one request report the endpoint as stalled."""
    llm_concurrency: int = 16
    """LLM requests in flight at once, per client (one client per distinct LLM spec)."""
    requests_per_minute: float = 0.0
    """Request rate limit per LLM client (token bucket); 0 for none."""
    tokens_per_minute: float = 0.0
    """Token rate limit per LLM client (prompt estimate + max tokens, token bucket); 0 for none."""
    llm_cache: bool = True
    """Read and write the persistent LLM response cache, so a rerun of the same requests sends none."""
    prices: str = ""
    """JSON price table (USD per million tokens, by LLM spec) replacing the packaged one; see
    autointerp/data/prices.json for the format."""
    max_cost: float = 0.0
    """Refuse to start when the estimated cost of the prompt tokens to send exceeds this many USD (needs
    priced LLM specs); 0 for no limit."""
    range_size: int = 1024
    """Features per range, the run's unit of work: memory holds one range's records at a time, shuffled
    baselines pair features within a range, a rerun skips finished ranges, and --shard i/n splits the
    features at range boundaries."""

    def __post_init__(self) -> None:
        kinds = self.explainer_kinds
        bad = [k for k in kinds if k not in EXPLAINER_KINDS]
        if bad or len(set(kinds)) != len(kinds):
            what = f"kind {bad[0]!r} is unknown" if bad else "gives a kind twice"
            raise UserError(f"--explainer-kind {what}; give one or a comma list of {', '.join(EXPLAINER_KINDS)}")
        if self.simulator_kind not in SIMULATOR_KINDS:
            raise UserError(f"--simulator-kind {self.simulator_kind!r} is unknown; use one of {SIMULATOR_KINDS}")
        scorer_entries(self.scorer_list)  # unknown names: UserError
        if self.negatives not in NEGATIVE_SETS:
            raise UserError(f"--negatives {self.negatives!r} is unknown; use one of {', '.join(NEGATIVE_SETS)}")
        from autointerp.scorers.intervention import parse_alpha

        parse_alpha(self.alpha)  # not a number: UserError
        if self.show_vocab and self.vocab_projection < 1:
            raise UserError("--show-vocab needs the projection: give --vocab-projection N (e.g. 10)")
        if self.token_stats < 0 or self.trim_examples < 0:
            raise UserError("--token-stats and --trim-examples must be 0 (off) or a positive number of tokens")
        if self.vocab_projection < 0:
            raise UserError("--vocab-projection must be 0 (off) or a number of tokens")
        if "contrastive" in self.explainer_kinds and self.contrastive_negatives < 1:
            raise UserError("--contrastive-negatives must be at least 1 for --explainer-kind contrastive")
        if self.n_candidates < 1:
            raise UserError("--n-candidates must be at least 1")
        if self.records_per_prompt < 1:
            raise UserError("--records-per-prompt must be at least 1")
        if self.latents_per_prompt < 1:
            raise UserError("--latents-per-prompt must be at least 1")
        if self.subtract_prior and not self.neutral_label.strip():
            raise UserError("--neutral-label is empty; give a label that says nothing about the feature, e.g. unknown")
        if self.judge_examples_first and self.latents_per_prompt > 1:
            raise UserError("--judge-examples-first takes one latent per prompt: drop --latents-per-prompt")
        if self.llm_concurrency < 1:
            raise UserError("--llm-concurrency must be at least 1")
        if self.max_cost < 0:
            raise UserError("--max-cost must be positive, or 0 for no limit")
        if self.range_size < 1:
            raise UserError("--range-size must be at least 1 (features per range)")
        if self.requests_per_minute < 0 or self.tokens_per_minute < 0:
            raise UserError("--requests-per-minute and --tokens-per-minute must be positive, or 0 for no limit")

    @property
    def explainer_kinds(self) -> list[str]:
        """The explainer kinds of ``explainer_kind``, in order (each gives candidates)."""
        return [k.strip() for k in self.explainer_kind.split(",")]

    def explainer_settings(self, kind: str | None = None) -> ExplainerSettings:
        """How this run's explainer of ``kind`` (default: the first kind) builds its prompt."""
        return ExplainerSettings(
            kind=kind or self.explainer_kinds[0],
            n_top=self.n_top_examples,
            n_quantile=self.n_quantile_examples,
            cot=self.cot,
            highlight_threshold=self.highlight_threshold,
            show_vocab=self.show_vocab,
            token_stats=self.token_stats,
            trim=self.trim_examples,
            n_negatives=self.contrastive_negatives,
        )

    def steer_settings(self) -> Any:
        """The intervention scorers' :class:`~autointerp.scorers.intervention.SteerSettings`."""
        from autointerp.scorers.intervention import SteerSettings

        return SteerSettings(
            alpha=self.alpha,
            steer_multiplier=self.steer_multiplier,
            mode=self.steer_mode,
            n_prompts=self.steer_prompts,
            prompt_tokens=self.steer_prompt_tokens,
            new_tokens=self.steer_new_tokens,
            corpus=self.steer_corpus,
        )

    def client_config(self) -> ClientConfig:
        """How this run's LLM clients talk to their backends."""
        return ClientConfig(
            timeout_s=self.timeout_s or None,
            threads=self.threads,
            max_concurrency=self.llm_concurrency,
            requests_per_minute=self.requests_per_minute or None,
            tokens_per_minute=self.tokens_per_minute or None,
            cache=self.llm_cache,
            prices_path=Path(self.prices) if self.prices else None,
        )

    def role_specs(self) -> dict[str, str]:
        """The LLM spec of each role (see autointerp.llm.usage.ROLES)."""
        return {"explainer": self.explainer, "simulator": self.simulator, "judge": self.judge_spec}

    @property
    def scorer_list(self) -> list[str]:
        return [s.strip() for s in self.scorers.split(",") if s.strip()]

    @property
    def judge_spec(self) -> str:
        return self.judge or self.explainer

    @property
    def scored_test_splits(self) -> list[str]:
        """The test splits simulated and scored: test_top and test_random, and test_quantiles with
        ``score_quantiles``."""
        return [s for s in TEST_SPLITS if s != "test_quantiles" or self.score_quantiles]

    def scored_records(self, record: FeatureRecord) -> list[tuple[str, list[int]]]:
        """The records the test scores read, as (split, record indices): each scored test split's first
        ``max_records_per_split`` records."""
        return [
            (s, list(range(len(limit_records(getattr(record, s), self.max_records_per_split)))))
            for s in self.scored_test_splits
        ]

    def simulated_records(self, record: FeatureRecord) -> list[tuple[str, list[int]]]:
        """What the simulation scorer simulates for ``record`` under one explanation, as (split, record
        indices): :meth:`scored_records`, then, with ``calibrate``, the calibration records
        (:func:`~autointerp.score.calibration_indices`: ``valid``, then ``test_random``). The scorer and the
        cost estimate both read this list."""
        from autointerp.score import calibration_indices

        out = self.scored_records(record)
        if self.calibrate:
            top, rnd = calibration_indices(record, self.max_records_per_split)
            out += [("valid", top), ("test_random", rnd)]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExplainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Clients:
    """The LLM clients of a run (may be the same object for several roles)."""

    explainer: LLMClient
    simulator: LLMClient
    judge: LLMClient

    def missing_capabilities(self) -> dict[str, dict[str, str]]:
        """Per role, what its endpoint turned out not to serve (capability -> reason); roles lacking none are
        left out. For the manifest."""
        roles = {"explainer": self.explainer, "simulator": self.simulator, "judge": self.judge}
        out = {role: dict(capabilities_of(c).missing) for role, c in roles.items()}
        return {role: m for role, m in out.items() if m}

    def metered(self, prices: PriceTable, log: UsageLog) -> tuple[Clients, dict[str, UsageMeter]]:
        """Each role's client wrapped in its own :class:`MeteredClient` (the underlying clients may be
        shared), appending to ``log``; returns the wrapped clients and each role's meter."""
        meters = {role: UsageMeter(prices=prices, role=role, log=log) for role in ROLES}
        wrapped = Clients(
            MeteredClient(self.explainer, meters["explainer"]),
            MeteredClient(self.simulator, meters["simulator"]),
            MeteredClient(self.judge, meters["judge"]),
        )
        return wrapped, meters


@dataclass(frozen=True)
class RecordStream:
    """The features of an explain run, in order, and a loader of their records: ``load(ids)`` yields the
    records of ``ids`` (an ordered subset of ``features``) lazily, in that order, so the pipeline holds one
    feature range at a time (see :attr:`ExplainConfig.range_size`)."""

    features: list[str]
    """Feature ids (``<source>:<index>``) in run order."""
    load: Callable[[Sequence[str]], Iterable[FeatureRecord]]
    origin: str = ""
    """Where the records come from (a sample run's content fingerprint, or a hash of the records), so the
    parts of a split run can be checked to share them."""

    @classmethod
    def of(cls, records: Sequence[FeatureRecord]) -> RecordStream:
        """Records already in memory."""
        by_id = {str(r.id): r for r in records}
        origin = short_hash("\n".join(json.dumps(r.to_json(), sort_keys=True, default=str) for r in records))
        return cls(list(by_id), lambda ids: (by_id[i] for i in ids), origin)

    @classmethod
    def of_run(cls, run_dir: Path) -> RecordStream:
        """The records of an explain run directory (``records.jsonl``), read in one pass."""
        return cls(record_ids(run_dir), lambda ids: iter_records(run_dir, set(ids)), "")

    @classmethod
    def of_sample_run(cls, sample_run: Path, features: Sequence[int] | None = None) -> RecordStream:
        """The records of a sample run (its record store, read one store file at a time), optionally only
        the features with these indices."""
        from autointerp.record_store import iter_feature_records, load_records_meta
        from autointerp.sampling import source_dirs

        dirs = source_dirs(Path(sample_run))
        metas = {d: load_records_meta(d) for d in dirs}
        want = None if features is None else set(features)
        ids: list[str] = []
        dir_of: dict[str, Path] = {}
        for d, meta in metas.items():
            for f in meta["features"]:
                if want is None or int(f) in want:
                    fid = f"{meta['source']}:{int(f)}"
                    ids.append(fid)
                    dir_of[fid] = d

        def load(subset: Sequence[str]) -> Iterator[FeatureRecord]:
            for d, group in itertools.groupby(subset, key=lambda f: dir_of[f]):
                indices = [FeatureId.parse(f).index for f in group]
                for chunk in iter_feature_records(d, indices):
                    yield from chunk

        origin = short_hash(json.dumps([m.get("content_fingerprint") for m in metas.values()]))
        return cls(ids, load, origin)

    def __iter__(self) -> Iterator[FeatureRecord]:
        """Every record, read lazily in order."""
        return iter(self.load(self.features))

    def __len__(self) -> int:
        return len(self.features)

    def ranges(self, size: int) -> list[list[str]]:
        """The features cut into consecutive ranges of ``size``."""
        return [self.features[i : i + size] for i in range(0, len(self.features), size)]

    def sources(self) -> list[str]:
        return list(dict.fromkeys(FeatureId.parse(f).source for f in self.features))


def shard_ranges(ranges: list[list[str]], shard: Shard | None) -> range:
    """Indices of the ranges that ``shard`` (i/n: the i-th of n contiguous blocks of ranges) explains; all
    without a shard. UserError when there are fewer ranges than shards (a shard would be empty)."""
    if shard is None:
        return range(len(ranges))
    if shard.count > len(ranges):
        raise UserError(
            f"--shard {shard} gets no features: the run has {len(ranges)} feature range(s); use at most "
            f"{len(ranges)} shards, or a smaller --range-size"
        )
    return shard.block(len(ranges))


@dataclass
class RunSummary:
    """What a run did; ``scores`` maps score name -> {"explained"|"baseline"|"yardstick": (mean, low, high) or
    None}."""

    run_dir: Path
    n_features: int
    n_explained: int
    n_failed_explanations: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Usage] = field(default_factory=dict)
    """LLM usage per role in this session (from the roles' meters)."""
    failed_features: list[str] = field(default_factory=list)
    """Features of this session that failed: an error (retried on rerun) or no usable explanation."""
    scores: dict[str, dict[str, tuple[float, float, float] | None]] = field(default_factory=dict)
    n_scored: dict[str, dict[str, int]] = field(default_factory=dict)
    run_usage: dict[str, Any] = field(default_factory=dict)
    """usage.json: usage of every session of the run, per role and in total, with cost (None: undefined,
    with ``cost_reason``) and client counters."""
    paired_gain: dict[str, tuple[float, float, float] | None] = field(default_factory=dict)
    """Per score label: mean over features of (explained - shuffled baseline) on the same feature, with its
    bootstrap 95% CI; None when no feature has both."""
    n_paired: dict[str, int] = field(default_factory=dict)
    paired_vs_yardstick: dict[str, tuple[float, float, float] | None] = field(default_factory=dict)
    """Per score label: mean over features of (explained - token-list yardstick) on the same feature, with its
    bootstrap 95% CI: above 0, the labels earned their LLM calls."""
    n_paired_vs_yardstick: dict[str, int] = field(default_factory=dict)
    label_prior: dict[str, tuple[float, int]] = field(default_factory=dict)
    """(median, n) of :func:`autointerp.score.label_prior_correlation` over the explained features, by score
    label (``label_prior_correlation``, or ``...@<judge>`` in a run scored by several simulators): how much the
    simulations under a label equal those under a shuffled label (near 1: the label is ignored)."""
    flags: list[str] = field(default_factory=list)
    """Warnings about what the scores can mean (e.g. simulations that do not depend on the label)."""
    n_calibration_refused: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per score label and group ("explained" / "baseline"): scores left undefined because their calibration
    fit was refused (slope <= 0: the simulation anti-correlates; or a constant simulation), so such
    explanations are visible rather than silently missing from the means. Only labels with refusals."""


def open_clients(config: ExplainConfig) -> tuple[Clients, list[LLMClient]]:
    """Build the clients of ``config`` (one client per distinct spec, one usage meter); returns them and the
    ones to close."""
    from autointerp.llm.factory import make_client

    cc = config.client_config()
    meter = UsageMeter(prices=PriceTable.load(cc.prices_path))
    made: dict[str, LLMClient] = {}

    def get(spec: str) -> LLMClient:
        if spec not in made:
            made[spec] = make_client(spec, cc, meter=meter)
        return made[spec]

    clients = Clients(get(config.explainer), get(config.simulator), get(config.judge_spec))
    return clients, list(made.values())


# -- run state -----------------------------------------------------------------------------------------


class _Session:
    """One session of a run: its data (appended to as results arrive) and each role's metered client, which
    appends every answer's usage to the run's usage log as it arrives."""

    def __init__(self, data: RunData, config: ExplainConfig, clients: Clients) -> None:
        self.data = data
        """The run's data (run_explain: the current feature range's)."""
        self.run = data.run
        prices = PriceTable.load(config.client_config().prices_path)
        self.log = UsageLog(data.run.file(USAGE_LOG))
        self.log.start_session(prices)
        self.clients, self.meters = clients.metered(prices, self.log)

    @property
    def usage(self) -> dict[str, Usage]:
        """This session's usage per role."""
        return {role: m.total for role, m in self.meters.items()}

    def close(self, counters: dict[str, dict[str, int]]) -> None:
        """Log the clients' counters, close the log, and derive usage.json from it."""
        if counters:
            self.log.append({"clients": counters})
        self.log.close()
        atomic_write_json(self.run.file(USAGE), load_run_usage(self.run.path))


class _Counters:
    """Counters (attempts, retries, cache hits, ...) of a run's clients, as a difference from the start of
    the run: clients shared by several runs (a sweep's cells) count each run's own requests only."""

    def __init__(self, clients: Clients) -> None:
        from autointerp.llm.factory import ManagedClient

        unique = {id(c): c for c in (clients.explainer, clients.simulator, clients.judge)}.values()
        self.clients = [c for c in unique if isinstance(c, ManagedClient)]
        self.start = {c.spec: c.counters() for c in self.clients}

    def delta(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for c in self.clients:
            now, start = c.counters(), self.start.get(c.spec, {})
            out[c.spec] = {k: v - start.get(k, 0) for k, v in now.items()}
        return out


class RequestsFailed(Exception):
    """LLM requests of a feature failed for good (transport, timeout, rate limit, key): nothing of that
    unit of work is written, so a rerun retries it."""


class _Watched(ClientWrapper):
    """An LLMClient that passes requests through and remembers the request failures (LLMError) of its inner
    client, also those its caller catches and turns into a failed result."""

    def __init__(self, inner: LLMClient) -> None:
        super().__init__(inner)
        self.failures: list[str] = []

    async def _watch(self, aw: Any) -> LLMResponse:
        try:
            return await aw  # type: ignore[no-any-return]
        except Unsupported:
            raise  # a capability the endpoint lacks: the caller takes another path, the work has not failed
        except LLMError as e:
            self.failures.append(e.reason)
            raise

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._watch(self.inner.chat(request))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._watch(self.inner.complete(request))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._watch(self.inner.top_logprobs(request))

    async def aclose(self) -> None:  # the inner client belongs to the run
        return None

    def check(self, what: str) -> None:
        """Raise :class:`RequestsFailed` when any request failed."""
        if self.failures:
            n = len(self.failures)
            raise RequestsFailed(
                f"{n} {what} request{'s' if n > 1 else ''} failed ({self.failures[0]}); rerun to retry"
            )


class _Runner:
    def __init__(
        self,
        config: ExplainConfig,
        session: _Session,
        models: Models | None = None,
        retry_failed: bool = False,
    ) -> None:
        self.config = config
        data = session.data
        self.stale: set[Any] = set()
        """Failed results stored before this session that ``retry_failed`` computes again."""
        if retry_failed:
            self.stale |= {("sim", k) for k, v in data.simulations.items() if not v.ok}
            self.stale |= {("score", k) for k, v in data.score_rows.items() if v.value is None}
            self.stale |= {("explain", f) for f in data.features() if data.selected(f) is None}
        self.data = session.data
        self.clients = clients = session.clients
        self.models = models or Models(device=config.scorer_device, threads=config.threads)
        self.context = ScoreContext(config, clients.judge, clients.simulator, self.scored_simulations, self.models)
        self._sim_locks: dict[tuple[str, str, tuple[int, ...]], asyncio.Lock] = {}
        self.explainer_settings = {k: config.explainer_settings(k) for k in config.explainer_kinds}
        """Each explainer kind's settings, in the order its candidates are made."""
        self.sem = asyncio.Semaphore(max(1, config.concurrency))

    # -- simulation with the run-dir cache ---------------------------------------------------------
    async def simulations(
        self, eid: str, text: str, record: FeatureRecord, split: str, indices: Sequence[int] | None = None
    ) -> tuple[list[Simulation], Usage]:
        """The simulations of ``record``'s ``split`` under explanation ``eid`` (the records at ``indices``;
        None: the first ``max_records_per_split``): stored ones, the rest computed and stored; and the
        simulator usage spent on them. A simulation whose request failed is not stored:
        :class:`RequestsFailed` after the others are."""
        recs = getattr(record, split)
        if indices is None:
            want = list(range(len(limit_records(recs, self.config.max_records_per_split))))
        else:
            want = list(indices)
        sims = self.data.simulations
        usage = Usage()
        # Callers asking for the same records at once (the selected label and the baseline share a feature's
        # neutral simulations) wait for one computation instead of each sending the requests.
        async with self._sim_locks.setdefault((eid, split, tuple(want)), asyncio.Lock()):
            missing = [i for i in want if (eid, split, i) not in sims or ("sim", (eid, split, i)) in self.stale]
            if missing:
                usage = await self._simulate_missing(eid, text, record, split, missing)
        return [sims[(eid, split, i)] for i in want], usage

    async def scored_simulations(
        self, eid: str, text: str, record: FeatureRecord, split: str, indices: Sequence[int] | None = None
    ) -> tuple[list[Simulation], Usage]:
        """:meth:`simulations` as the scores read them: with ``subtract_prior``, minus the feature's
        neutral-label simulations of the same records (:func:`autointerp.simulate.subtract_prior`)."""
        if not self.config.subtract_prior:
            return await self.simulations(eid, text, record, split, indices)
        neutral_eid, neutral_text = neutral_id(self.config, str(record.id)), self.config.neutral_label
        (sims, usage), (neutral, u2) = await asyncio.gather(
            self.simulations(eid, text, record, split, indices),
            self.simulations(neutral_eid, neutral_text, record, split, indices),
        )
        return [subtract_prior(a, b) for a, b in zip(sims, neutral, strict=True)], usage + u2

    async def _simulate_missing(
        self, eid: str, text: str, record: FeatureRecord, split: str, missing: list[int]
    ) -> Usage:
        """Simulate the records at ``missing`` of ``split`` under ``text`` and store them; the usage spent."""
        recs = getattr(record, split)
        usage = Usage()
        k = self.config.records_per_prompt
        groups = [missing[j : j + k] for j in range(0, len(missing), k)]
        watched = [_Watched(self.clients.simulator) for _ in groups]
        simulators = [make_simulator(self.config.simulator_kind, w, text) for w in watched]
        pairs = zip(simulators, groups, strict=True)
        results = await asyncio.gather(*(s.simulate_many([recs[i].tokens for i in g]) for s, g in pairs))
        done: dict[str, list[tuple[int, Simulation]]] = {}  # by simulator spec: one write each
        for g, s, w, res in zip(groups, simulators, watched, results, strict=True):
            usage = usage + s.usage
            if not w.failures:
                done.setdefault(s.spec, []).extend(zip(g, res, strict=True))
        for spec, batch in done.items():
            self.data.add_simulations(eid, str(record.id), split, spec, batch)
            self.stale -= {("sim", (eid, split, i)) for i, _ in batch}
        for w in watched:
            w.check("simulator")
        return usage

    # -- phase 1: explain and select ----------------------------------------------------------------
    async def explain_feature(self, record: FeatureRecord) -> None:
        fid = str(record.id)
        done = [e for e in self.data.explanations_of(fid) if not e.baseline]
        if done and ("explain", fid) not in self.stale:
            return
        cfg = self.config
        rows: list[dict[str, Any]] = []
        candidates: list[Explanation] = []
        made_by: dict[int, Explainer] = {}  # candidate -> the explainer that made it
        watch = _Watched(self.clients.explainer)
        explainers = [Explainer(watch, s) for s in self.explainer_settings.values()]
        # Each kind gives its candidates (the first greedy, the others sampled; the no-LLM tokens kind one), numbered
        # on across the kinds; past them, more sampled tries of the first LLM kind only while every answer so far
        # was unusable.
        plan = [(ex, j) for ex in explainers for j in range(1 if ex.settings.kind == "tokens" else cfg.n_candidates)]
        retry = next((ex for ex in explainers if ex.settings.kind != "tokens"), None)
        plan += [(retry, cfg.n_candidates + j) for j in range(cfg.explain_retries)] if retry is not None else []
        for c, (explainer, j) in enumerate(plan):
            if j >= cfg.n_candidates and (candidates or not rows[-1]["raw"]):
                break
            temp = 0.0 if j == 0 else cfg.candidate_temperature
            try:
                ex = await explainer.explain(record, candidate=c, temperature=temp, seed=cfg.seed + c)
            except ExplanationFailed as e:
                failed = Explanation(record.id, "", explainer.spec, explainer.prompt_hash, e.raw, e.usage, c)
                rows.append({**failed.to_json(), "explanation_id": f"{fid}#{c}", "selected": False, "failed": e.reason})
                continue
            candidates.append(ex)
            made_by[ex.candidate] = explainer
        watch.check("explainer")  # nothing is written for a feature whose explainer requests failed
        best: Explanation | None = None
        if len(candidates) == 1 and not cfg.refine:
            best = candidates[0]
        elif candidates:
            best_value = -np.inf
            for ex in candidates:
                value = (await self._on_valid(record, ex))[0]
                if best is None or value > best_value:
                    best, best_value = ex, value
            author = made_by[best.candidate] if best is not None else None
            if cfg.refine and best is not None and author is not None and author.settings.kind != "tokens":
                revised = await self._refine(record, author, best, len(plan), rows)
                watch.check("explainer")
                if revised is not None:
                    candidates.append(revised)
                    if (await self._on_valid(record, revised))[0] > best_value:
                        best = revised
        for ex in candidates:
            row = {**ex.to_json(), "explanation_id": f"{fid}#{ex.candidate}", "selected": ex is best}
            rows.append(row)
        rows.sort(key=lambda r: int(r["candidate"]))
        self.data.add_explanations(rows)
        self.stale.discard(("explain", fid))

    async def _on_valid(self, record: FeatureRecord, ex: Explanation) -> tuple[float, list[Simulation]]:
        """The correlation of candidate ``ex`` on the held-out selection split 'valid' (-inf when undefined) and its
        simulations there: what selection and refinement compare (never a test record)."""
        cfg = self.config
        sims, _ = await self.scored_simulations(f"{record.id}#{ex.candidate}", ex.text, record, "valid")
        recs = limit_records(record.valid, cfg.max_records_per_split)
        s = correlation_score("valid_correlation", recs, sims, cfg.max_failed_fraction)
        return (s.value if s.value is not None else -np.inf), sims

    async def _refine(
        self, record: FeatureRecord, explainer: Explainer, best: Explanation, candidate: int, rows: list[dict[str, Any]]
    ) -> Explanation | None:
        """One refinement round of ``best`` (``--refine``): the explainer sees the 'valid' records its label predicted
        worst and may revise it; the revision is a candidate (numbered ``candidate``), kept by the caller only if it
        scores better on 'valid'. None (with the failed answer in ``rows``) when the revision is unusable or there
        is nothing to show."""
        from autointerp.explain import REFINE_RECORDS, misses

        _, sims = await self._on_valid(record, best)
        recs = limit_records(record.valid, self.config.max_records_per_split)
        t = explainer.settings.highlight_threshold
        scored = [(misses(r, s.expected, t)[0], r, s.expected) for r, s in zip(recs, sims, strict=True)
                  if s.expected is not None]
        worst = [(r, e) for _, r, e in sorted(scored, key=lambda x: -x[0])[:REFINE_RECORDS]]
        if not worst:
            return None
        try:
            return await explainer.refine(record, best.text, worst, candidate)
        except ExplanationFailed as e:
            failed = Explanation(record.id, "", explainer.spec + ",refined", explainer.prompt_hash, e.raw, e.usage,
                                 candidate)
            rows.append({**failed.to_json(), "explanation_id": f"{record.id}#{candidate}", "selected": False,
                         "failed": e.reason})
            return None

    # -- phase 2: the yardstick and the shuffled baseline -------------------------------------------
    def add_yardsticks(self, features: list[str]) -> None:
        """Give each explained feature of ``features`` its token-list label (the ``tokens`` explainer's, from the
        same shown examples as the first kind's, :func:`autointerp.explain.shown_evidence`), stored as
        ``<feature>#tokens`` with ``yardstick`` set: scored like any label, never selected."""
        settings = replace(next(iter(self.explainer_settings.values())), kind="tokens")
        explainer = Explainer(self.clients.explainer, settings)
        rows = []
        for f in features:
            eid = f"{f}#tokens"
            if self.data.selected(f) is None or eid in self.data.explanations:
                continue
            record = self.data.records[f]
            label = token_label(shown_evidence(record, settings)[1])
            if label is None:
                continue
            ex = Explanation(record.id, label, explainer.spec, explainer.prompt_hash, "", Usage(), -2)
            rows.append({**ex.to_json(), "explanation_id": eid, "selected": False, "yardstick": True})
        self.data.add_explanations(rows)


    def add_baselines(self, features: list[str], range_index: int = 0) -> None:
        """Give each explained feature of ``features`` (one feature range) the label of another feature of
        the range (a derangement seeded by the seed and the range's index, so a split run pairs the same)."""
        selected = {f: e for f in features if (e := self.data.selected(f)) is not None}
        feats = list(selected)
        if len(feats) < 2:
            if self.config.baseline:
                log.warning("the shuffled baseline needs at least 2 explained features in a range; none added")
            return
        seed = self.config.seed if range_index == 0 else [self.config.seed, range_index]
        perm = derangement(len(feats), np.random.default_rng(seed))
        rows = []
        for i, f in enumerate(feats):
            eid = f"{f}#baseline"
            if eid in self.data.explanations:
                continue
            donor = selected[feats[int(perm[i])]]
            ex = Explanation.from_json(donor.raw)
            base = replace(ex, feature=self.data.records[f].id, baseline=True, usage=Usage(), candidate=-1)
            rows.append({**base.to_json(), "explanation_id": eid, "selected": False, "donor": donor.feature})
        self.data.add_explanations(rows)

    # -- phase 3: score -------------------------------------------------------------------------
    async def score_explanation(self, expl: ExplanationRow) -> None:
        eid = expl.explanation_id
        record = self.data.records[expl.feature]
        fid = str(record.id)
        for name in self.config.scorer_list:
            entry = SCORERS[name]
            judge = _Watched(self.clients.judge)
            scorer = entry.build(replace(self.context, judge=judge))
            if all(self._have_score(eid, n, scorer.judge) for n in scorer.score_names):
                continue
            timer = Timer()
            result = await scorer.score(eid, expl.text, record)
            judge.check("judge")  # a score missing answers the server failed to give is not written
            new: dict[str, Score] = {}
            for sc in with_cost(result.scores, result.usage, timer.seconds):
                if not self._have_score(eid, sc.name, scorer.judge):
                    new.setdefault(sc.name, sc)
            self.data.add_scores(eid, fid, expl.baseline, scorer.judge, list(new.values()))  # one write per scorer
            self.stale -= {("score", (eid, name, scorer.judge)) for name in new}

    def _have_score(self, eid: str, name: str, judge: str) -> bool:
        """A score is stored (an undefined one counts, unless ``retry_failed`` asks to compute it again)."""
        return self.data.has_score(eid, name, judge) and ("score", (eid, name, judge)) not in self.stale

    def _add_score(self, eid: str, feature: str, baseline: bool, judge: str, score: Score) -> None:
        self.data.add_score(eid, feature, baseline, judge, score)
        self.stale.discard(("score", (eid, score.name, judge)))

    def add_label_prior(self, features: Sequence[str]) -> None:
        """Score each feature's selected label by :func:`stored_label_prior` (no LLM request); a feature whose
        simulations are missing (failed requests, retried on rerun) is left for then."""
        cfg = self.config
        if "simulation" not in cfg.scorer_list:
            return
        spec = simulation_judge(cfg, self.clients.simulator.spec)
        for f in features:
            sel = self.data.selected(f)
            if sel is None or self._have_score(sel.explanation_id, LABEL_DEPENDENCE, spec):
                continue
            sc = stored_label_prior(self.data, cfg, f)
            if sc is not None:
                self._add_score(sel.explanation_id, f, False, spec, sc)

    # -- orchestration --------------------------------------------------------------------------
    async def guarded(self, feature: str, stage: str, coro: Any) -> None:
        async with self.sem:
            try:
                await coro
            except Exception as e:  # one feature's failure never stops the run
                self.data.add_error(feature, stage, e)

    async def explain_all(self, features: list[str]) -> None:
        await asyncio.gather(
            *(self.guarded(f, "explain", self.explain_feature(self.data.records[f])) for f in features)
        )

    async def score_all(self, features: list[str]) -> None:
        """Score the selected explanation of each feature, its shuffled baseline unless ``baseline`` is off and its
        token-list yardstick unless ``yardstick`` is off (``run_score(..., settings={"baseline": False,
        "yardstick": False})`` scores the selected labels only)."""
        cfg = self.config
        todo = [
            e
            for f in features
            for e in (self.data.selected(f), self.data.baseline(f) if cfg.baseline else None,
                      self.data.yardstick(f) if cfg.yardstick else None)
            if e is not None and e.feature in self.data.records
        ]
        await asyncio.gather(*(self.guarded(e.feature, "score", self.score_explanation(e)) for e in todo))


def stored_label_prior(data: RunData, cfg: ExplainConfig, feature: str) -> Score | None:
    """:func:`label_prior_correlation` of ``feature``'s selected label against its shuffled baseline, from the
    stored simulations of the scored test splits, as the scores read them (with ``subtract_prior``, both minus
    the neutral-label simulation); None while a simulation it needs is missing."""
    sel, base, record = data.selected(feature), data.baseline(feature), data.records.get(feature)
    if sel is None or base is None or record is None:
        return None
    sims = data.simulations
    neutral = neutral_id(cfg, feature) if cfg.subtract_prior else None
    keys = [(split, i) for split, idx in cfg.scored_records(record) for i in idx]
    eids = [e for e in (sel.explanation_id, base.explanation_id, neutral) if e is not None]
    stored = [[sims[(e, sp, i)] for e in eids] for sp, i in keys if all((e, sp, i) in sims for e in eids)]
    if not keys or len(stored) < len(keys):
        return None
    if neutral is not None:
        stored = [[subtract_prior(a, n), subtract_prior(b, n)] for a, b, n in stored]
    return label_prior_correlation([x[0] for x in stored], [x[1] for x in stored], cfg.max_failed_fraction)


async def settle_simulator_kind(config: ExplainConfig, simulator: LLMClient) -> tuple[ExplainConfig, str]:
    """Settle the simulator's logprob strategy (one tiny probe where the backend must ask) and, where its endpoint
    serves no top logprobs (a chat-only API), the simulator kind: ``auto`` becomes ``json``; an explicit
    ``logprob`` is refused (UserError) before any work. Returns the config to run with and the strategy."""
    from autointerp.estimate import settle_strategy

    strategy = await settle_strategy(simulator)
    if strategy != "none" or config.simulator_kind == "json":
        return config, strategy
    refused = capabilities_of(simulator).missing.get("completions", "it serves no top logprobs")
    why = "/v1/completions refused: " + refused.removeprefix(f"{simulator.spec}: ")[:80]
    if config.simulator_kind == "logprob":
        raise UserError(
            f"--simulator-kind logprob needs top logprobs, but {simulator.spec} serves none ({why}); "
            "use --simulator-kind auto or json, or a simulator that serves /v1/completions"
        )
    log.warning("%s serves no top logprobs (%s): simulating with JSON", simulator.spec, why)
    return replace(config, simulator_kind="json"), strategy


async def plan_llm_use(
    config: ExplainConfig, records: Callable[[], Iterable[FeatureRecord]], clients: Clients
) -> tuple[ExplainConfig, dict[str, Any]]:
    """Before any work: settle the simulator's logprob strategy, estimate the prompt tokens each role will send
    (logged), and refuse what would cost more than asked. Returns the config to run with and the plan for the
    manifest. ``records()`` yields the records to explain (read once per estimate, never all held).

    A billed simulator without prompt logprobs would send every slot's prefix: with ``--simulator-kind auto``
    the JSON simulator is used instead; with ``logprob`` the run is refused with both estimates."""
    from autointerp.estimate import describe, estimate_run, measured_chars_per_token, total_cost
    from autointerp.simulate import build_all_at_once_prompt

    cc = config.client_config()
    prices = PriceTable.load(cc.prices_path)
    specs = config.role_specs()
    config, strategy = await settle_simulator_kind(config, clients.simulator)
    windows = [w for r in itertools.islice(records(), 1) for w in (*r.test_top, *r.valid, *r.train)][:1]
    template = load_template("simulate_all_at_once.j2")
    sample = build_all_at_once_prompt(template, "x", windows[0].tokens).text if windows else ""
    roles = {"explainer": clients.explainer, "simulator": clients.simulator, "judge": clients.judge}
    ratios = {role: await measured_chars_per_token(client, sample) for role, client in roles.items()}
    estimates = estimate_run(config, records(), specs, strategy, prices, ratios)
    price = prices.price(specs["simulator"])
    billed = price is not None and price.input_per_mtok > 0
    if strategy == "prefix-list" and billed and config.simulator_kind != "json" and "simulation" in config.scorer_list:
        as_json = estimate_run(replace(config, simulator_kind="json"), records(), specs, strategy, prices, ratios)
        sim, alt = estimates["simulator"], as_json["simulator"]
        if config.simulator_kind == "logprob":
            raise UserError(
                f"{specs['simulator']} serves no prompt logprobs, so logprob simulation would send every slot's prefix "
                f"(~{sim.prompt_tokens:,} prompt tokens, ~${sim.cost_usd or 0:.2f}); use --simulator-kind json "
                f"(~{alt.prompt_tokens:,} tokens, ~${alt.cost_usd or 0:.2f}), a vllm-server: spec, or a local simulator"
            )
        log.warning(
            "%s serves no prompt logprobs: simulating with JSON (~%s prompt tokens) instead of the prefix list (~%s)",
            specs["simulator"],
            f"{alt.prompt_tokens:,}",
            f"{sim.prompt_tokens:,}",
        )
        config, estimates = replace(config, simulator_kind="json"), as_json
    log.info("%s", describe(estimates))
    cost, reason = total_cost(estimates)
    if config.max_cost > 0:
        if cost is None:
            raise UserError(f"cannot check --max-cost: {reason}; pass a price table with --prices FILE")
        if cost > config.max_cost:
            raise UserError(
                f"the estimated cost ~${cost:.2f} exceeds --max-cost ${config.max_cost:.2f} "
                f"({describe(estimates)}); raise --max-cost, explain fewer features, or use cheaper LLM specs"
            )
    plan = {
        "logprob_strategy": strategy,
        "simulator_kind": config.simulator_kind,
        "missing_capabilities": clients.missing_capabilities(),
        "estimate": {role: e.to_json() for role, e in estimates.items()},
        "estimated_cost_usd": cost,
    }
    return config, plan


def _prompt_names(config: ExplainConfig) -> list[str]:
    """The templates a run sends, each once: every explainer kind's own (the contrastive template for
    contrastive, none for tokens), then the simulators' and the scorers'."""
    kinds = config.explainer_kinds
    names = list(dict.fromkeys(n for k in kinds for n in explainer_templates(config.explainer_settings(k))))
    names += ["explain_refine.j2"] if config.refine else []
    names += ["simulate_all_at_once.j2", "simulate_json.j2"]
    for e in scorer_entries(config.scorer_list):
        names += [n for n in e.prompts if n not in names]
    return names


def summarize(
    run_dir: Path,
    errors: list[dict[str, Any]] | None = None,
    usage: dict[str, Usage] | None = None,
    failed_features: list[str] | None = None,
) -> RunSummary:
    """Counts and run-level means (bootstrap 95% CI) of every score label (see :mod:`autointerp.rundir`:
    one judge's scores are never averaged with another's), over the selected explanations ("explained")
    and the shuffled baselines ("baseline")."""
    data = load_run(Path(run_dir), records=False, simulations=False)
    feats = data.features()
    by: dict[str, dict[str, list[float | None]]] = {}
    gains: dict[str, list[float | None]] = {}
    over_yardstick: dict[str, list[float | None]] = {}
    prior: dict[str, list[float]] = {}
    refused: dict[str, dict[str, int]] = {}
    n_explained = n_failed = 0
    for f in feats:
        sel, base, yard = data.selected(f), data.baseline(f), data.yardstick(f)
        n_explained += sel is not None
        n_failed += sel is None and data.failed_reason(f) not in (None, "not explained")
        for group, e in (("explained", sel), ("baseline", base), ("yardstick", yard)):
            for label, sc in data.scores_of(e).items():
                if sc.name == LABEL_DEPENDENCE:
                    if sc.value is not None and group == "explained":
                        prior.setdefault(label, []).append(sc.value)
                    continue
                by.setdefault(label, {"explained": [], "baseline": []}).setdefault(group, []).append(sc.value)
                if sc.value is None and (sc.reason or "").startswith(CALIBRATION_REFUSED):
                    refused.setdefault(label, {"explained": 0, "baseline": 0})[group] = (
                        refused.get(label, {}).get(group, 0) + 1
                    )
        for other, into in ((base, gains), (yard, over_yardstick)):
            if sel is not None and other is not None:
                mine, theirs = data.scores_of(sel), data.scores_of(other)
                for label in mine.keys() & theirs.keys():
                    a, b = mine[label].value, theirs[label].value
                    into.setdefault(label, []).append(None if a is None or b is None else a - b)
    scores = {name: {g: bootstrap_ci(v, n=1000, seed=0) for g, v in groups.items()} for name, groups in by.items()}
    n_scored = {name: {g: sum(x is not None for x in v) for g, v in groups.items()} for name, groups in by.items()}
    label_prior = {k: (float(np.median(v)), len(v)) for k, v in prior.items() if v}
    flags = [
        f"the simulator barely reads the label ({label}): its predictions under each feature's label and under a "
        f"shuffled label correlate at a median of {median:.2f} (n={n}), so the correlation scores mostly measure "
        "its prior about the text; compare them with the baseline, or rescore with --subtract-prior"
        for label, (median, n) in label_prior.items()
        if median >= LABEL_PRIOR_FLAG
    ]
    return RunSummary(
        run_dir=Path(run_dir),
        n_features=len(data.stats),
        n_explained=n_explained,
        n_failed_explanations=n_failed,
        errors=errors or [],
        usage=usage or {},
        failed_features=failed_features or [],
        scores=scores,
        n_scored=n_scored,
        run_usage=data.usage,
        paired_gain={k: bootstrap_ci(v, n=1000, seed=0) for k, v in gains.items()},
        n_paired={k: sum(x is not None for x in v) for k, v in gains.items()},
        paired_vs_yardstick={k: bootstrap_ci(v, n=1000, seed=0) for k, v in over_yardstick.items()},
        n_paired_vs_yardstick={k: sum(x is not None for x in v) for k, v in over_yardstick.items()},
        label_prior=label_prior,
        flags=flags,
        n_calibration_refused=refused,
    )


def add_vocab_projections(records: Sequence[FeatureRecord], models: Models, k: int) -> list[FeatureRecord]:
    """``records`` with their vocabulary projection (``k`` top and bottom tokens) where it is missing, from
    the subject model and source of each record's address (loaded by ``models``: the sampler's loaders)."""
    from autointerp.steering import require_decoder, vocab_projection

    out = list(records)
    todo: dict[str, list[int]] = {}
    for i, r in enumerate(out):
        if r.vocab_projection is None:
            todo.setdefault(r.id.source, []).append(i)
    for address, idx in todo.items():
        source, subject = models.source_and_subject(address)
        require_decoder(source, "--vocab-projection")
        projections = vocab_projection(subject, source, [out[i].id.index for i in idx], k)
        for i, proj in zip(idx, projections, strict=True):
            out[i] = replace(out[i], vocab_projection=proj.to_json())
    return out


def check_explainer_inputs(config: ExplainConfig, records: Sequence[FeatureRecord]) -> None:
    """Bad input for the explainer, before any work: the contrastive explainer needs train-side random
    windows (the ``train_random`` split) to draw its counterexamples from."""
    if "contrastive" in config.explainer_kinds and records and not any(r.train_random for r in records):
        raise UserError(
            "--explainer-kind contrastive shows train-side counterexamples, but the records have no train_random "
            "windows; sample with --n-train-random 20 (autointerp explain does so itself when it samples)"
        )


def _record_models(run: RunDir, models: Models) -> None:
    """Say in the manifest which models the scorers loaded, and how (the sampler's loaders)."""
    if models.loaded:
        old = dict(run.manifest().get("scoring_models", {}))
        run.update_manifest({"scoring_models": {**old, **models.loaded}})


async def run_explain(
    config: ExplainConfig,
    run_dir: Path,
    records: Sequence[FeatureRecord] | RecordStream | None = None,
    clients: Clients | None = None,
    models: Models | None = None,
    *,
    retry_failed: bool = False,
    shard: Shard | None = None,
) -> RunSummary:
    """Explain, select, baseline, simulate and score ``records`` into ``run_dir`` (resumable), one feature
    range (:attr:`ExplainConfig.range_size` features) at a time: memory holds one range's records and
    results, and a rerun skips the ranges that finished without failures.

    ``records`` None: use the records already in ``run_dir/records.jsonl``; a :class:`RecordStream` reads
    them range by range (a sample run's record store). ``shard`` (i/n): explain only the i-th of n
    contiguous blocks of ranges, into a partial run that ``autointerp merge`` combines with the other n - 1.
    ``clients`` None: built from the config's specs (and closed at the end): a spec that cannot be built
    fails before ``run_dir`` is made. ``models``: models for scorers that need them (the subject for the
    intervention scorers, ...), loaded on demand when None; each scorer's checks run before any work (bad
    input: UserError). ``retry_failed``: also compute again the failures stored as properties of an answer
    (see the module doc); failed requests are always retried."""
    models = models or Models(device=config.scorer_device, threads=config.threads)
    run_dir = Path(run_dir)
    _check_part(run_dir, shard)
    if records is None:
        if not (run_dir / MANIFEST).exists() or not record_ids(run_dir):
            raise UserError(
                f"{run_dir} holds no feature records; pass records or a --sample-run with sampled features"
            )
        stream = RecordStream.of_run(run_dir)
    else:
        stream = records if isinstance(records, RecordStream) else RecordStream.of(records)
    if not stream.features:
        raise UserError(f"no feature records to explain in {run_dir}; pass records or a --sample-run")
    check_scorers(config, stream.sources(), models)
    ranges = stream.ranges(config.range_size)
    if "contrastive" in config.explainer_kinds:  # its inputs are checked on the first range's records
        check_explainer_inputs(config, list(stream.load(ranges[0])))
    mine = shard_ranges(ranges, shard)
    my_features = [f for k in mine for f in ranges[k]]

    def load_all() -> Iterable[FeatureRecord]:
        return stream.load(my_features)

    if config.vocab_projection:  # a source without a decoder fails now, before anything is written
        first = list(dict.fromkeys(FeatureId.parse(f).source for f in my_features))
        firsts = [next(f for f in my_features if FeatureId.parse(f).source == src) for src in first]
        add_vocab_projections(list(stream.load(firsts)), models, config.vocab_projection)
    to_close: list[LLMClient] = []
    if clients is None:
        clients, to_close = open_clients(config)
    try:  # settle, estimate and refuse before the run directory exists
        config, plan = await plan_llm_use(config, load_all, clients)
        legacy = config_to_dict(ExplainConfig())  # settings added later default to the behaviour before them,
        if len(stream.features) > config.range_size:  # except ranges: before them, one range held every feature
            legacy.pop("range_size")
        run = RunDir.create(run_dir, "explain", config_to_dict(config), legacy=legacy, free=EXECUTION_SETTINGS)
    except BaseException:
        for c in to_close:
            await c.aclose()
        raise
    for name in _prompt_names(config):
        run.record_prompt(name, load_template(name).text)
    run.update_manifest(
        {
            "models": {"explainer": config.explainer, "simulator": config.simulator, "judge": config.judge_spec},
            "seeds": {"seed": config.seed},
            "llm": plan,
            "features": {
                "n": len(stream.features),
                "ids_hash": short_hash("\n".join(stream.features)),
                "origin": stream.origin,
                "ranges": len(ranges),
            },
            "shard": None if shard is None else str(shard),
            "ranges": [mine.start, mine.stop],
        }
    )
    done_ranges = dict(run.manifest().get("ranges_done", {}))
    keys = {k: short_hash("\n".join(ranges[k])) for k in mine}
    todo = [k for k in mine if retry_failed or keys[k] not in done_ranges]
    have = set(record_ids(run.path)) | explained_features(run.path)
    counters = _Counters(clients)
    session = _Session(RunData(run, run.manifest()), config, clients)
    errors: list[dict[str, Any]] = []
    failed: list[str] = []
    run.set_stage("explain", "running", ranges_done=len(mine) - len(todo), ranges=len(mine))
    source = iter(stream.load([f for k in todo for f in ranges[k]]))
    try:
        for n_done, k in enumerate(todo):
            ids = ranges[k]
            recs = list(itertools.islice(source, len(ids)))
            if [str(r.id) for r in recs] != ids:
                raise RunDirError(f"the records of range {k} do not match its features; the record source changed")
            if config.vocab_projection:
                recs = add_vocab_projections(recs, models, config.vocab_projection)
            # The range's earlier results (a resumed run); a range nothing was written for starts empty.
            fresh = have.isdisjoint(ids)
            data = RunData(run, run.manifest()) if fresh else load_run(run.path, features=set(ids))
            data.add_records(recs)
            del recs
            session.data = data
            runner = _Runner(config, session, models, retry_failed)
            await runner.explain_all(ids)
            if config.yardstick:
                runner.add_yardsticks(ids)
            if config.baseline:
                runner.add_baselines(ids, k)
            await runner.score_all(ids)
            runner.add_label_prior(ids)
            range_failed = _failed_features(data, ids)
            errors += data.errors
            failed += range_failed
            if not range_failed:
                run.update_manifest({"ranges_done": {keys[k]: len(ids)}})
            run.set_stage("explain", "running", ranges_done=len(mine) - len(todo) + n_done + 1, ranges=len(mine))
            log.info("feature range %d of %d done (%d features, %d failed)", k + 1, len(ranges), len(ids),
                     len(range_failed))
            session.data = RunData(run, run.manifest())
            del data, runner  # drop the range before the next one is read
    except BaseException as e:
        run.set_stage("explain", "interrupted" if isinstance(e, KeyboardInterrupt) else "failed", error=str(e))
        raise
    finally:
        _record_models(run, models)
        run.update_manifest({"llm": {**plan, "missing_capabilities": clients.missing_capabilities()}})
        session.close(counters.delta())
        for c in to_close:
            await c.aclose()
    run.set_stage("explain", "partial" if failed else "done", errors=len(errors), failed_features=len(failed),
                  ranges_done=len(mine), ranges=len(mine))
    return summarize(run.path, errors, session.usage, failed)


def _check_part(run_dir: Path, shard: Shard | None) -> None:
    """A part of a split run is resumed as that part, and a whole run as a whole run."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return
    old = RunDir(Path(run_dir)).manifest()
    if old.get("command") != "explain" or "shard" not in old:
        return
    have = old.get("shard")
    if have != (None if shard is None else str(shard)):
        what = f"part {have} of a split run" if have else "a whole (unsplit) run"
        fix = f"rerun with --shard {have}" if have else "rerun without --shard"
        raise RunDirError(f"{run_dir} holds {what}; {fix}, or use a new --run-dir")


def _failed_features(data: RunData, features: Sequence[str]) -> list[str]:
    """Features of this session with an error (retried on rerun) or without a usable explanation; a dead
    feature (it never fired in the sampled corpus, so there is nothing to explain) is not a failure."""
    with_errors = {str(e["feature"]) for e in data.errors}
    return [
        f
        for f in features
        if f in with_errors or (data.selected(f) is None and not (f in data.records and data.records[f].dead))
    ]


async def run_score(
    run_dir: Path,
    scorers: str,
    judge: str | None = None,
    simulator: str | None = None,
    clients: Clients | None = None,
    models: Models | None = None,
    settings: dict[str, Any] | None = None,
    *,
    retry_failed: bool = False,
    features: Sequence[str] | None = None,
) -> RunSummary:
    """Score the selected and baseline explanations of an existing run with ``scorers`` (comma list).

    ``settings`` overrides fields of the run's config for this scoring (e.g. ``{"negatives": "hard"}``;
    ``{"baseline": False}`` leaves the shuffled baselines unscored). ``features``: only these feature ids
    (default: every feature of the run).

    Other settings come from the run's manifest; ``judge``/``simulator`` override its LLM specs. Scores
    of another judge already in the run are kept beside the new ones (labelled apart, never mixed)."""
    run = RunDir.open(Path(run_dir))
    manifest = run.manifest()
    config = ExplainConfig.from_dict(dict(manifest.get("config", {})))
    config = replace(config, scorers=scorers)
    if judge:
        config = replace(config, judge=judge)
    if simulator:
        config = replace(config, simulator=simulator)
    if settings:
        config = ExplainConfig.from_dict({**config_to_dict(config), **settings})
    models = models or Models(device=config.scorer_device, threads=config.threads)
    data = load_run(run.path)
    if not data.explanations:
        raise UserError(f"{run_dir} holds no explanations; run `autointerp explain` first")
    check_scorers(config, [r.id.source for r in data.records.values()], models)
    unknown = [f for f in features or () if f not in data.records]
    if unknown:
        example = next(iter(data.records))
        raise UserError(f"{run_dir} holds no feature {unknown[0]}; give feature ids of the run (e.g. {example})")
    for name in _prompt_names(config):
        run.record_prompt(name, load_template(name).text)
    to_close: list[LLMClient] = []
    if clients is None:
        clients, to_close = open_clients(config)
    try:
        if "simulation" in config.scorer_list:
            config, _ = await settle_simulator_kind(config, clients.simulator)
    except BaseException:
        for c in to_close:
            await c.aclose()
        raise
    counters = _Counters(clients)
    session = _Session(data, config, clients)
    try:
        runner = _Runner(config, session, models, retry_failed)
        todo = list(data.records) if features is None else list(features)
        if config.yardstick:  # a run explained before the yardstick existed gets it here
            runner.add_yardsticks(todo)
        await runner.score_all(todo)
        runner.add_label_prior(todo)
    finally:
        _record_models(run, models)
        session.close(counters.delta())
        for c in to_close:
            await c.aclose()
    failed = sorted({str(e["feature"]) for e in data.errors})
    run.set_stage("score", "partial" if failed else "done", scorers=scorers, failed_features=len(failed))
    return summarize(run.path, data.errors, session.usage, failed)
