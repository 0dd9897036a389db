"""The one name -> scorer table. Adding a scorer is one entry here; the pipeline, the CLI's ``--scorers``
help, the sweep's scorer axis and the report read this table.

Each :class:`ScorerEntry` names what the scorer writes (``score_names``), which side of the feature it rates
(``input``: what makes it fire; ``output``: what it does to the model's output), its prompt templates
(hashed into the manifest), a ``check`` run before any work (bad input is a one-line UserError, exit 2), and
``build``, which makes the scorer from the run's :class:`~autointerp.scorers.base.ScoreContext`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from autointerp.errors import UserError
from autointerp.records import FeatureRecord, Score, Usage
from autointerp.scorers.base import Models, ScoreContext, Scored, Scorer, usage_of

if TYPE_CHECKING:
    from autointerp.pipeline import ExplainConfig
    from autointerp.score import ClassifierSettings, _Classifier
    from autointerp.scorers.intervention import SteeringCache


@dataclass(frozen=True)
class ScorerEntry:
    name: str
    help: str
    side: Literal["input", "output"]
    score_names: tuple[str, ...]
    build: Callable[[ScoreContext], Scorer]
    prompts: tuple[str, ...] = ()
    check: Callable[[ExplainConfig, Sequence[str], Models], None] | None = None
    """Validation before any work: (config, source addresses of the run's features, models)."""
    headline: str = ""
    """The score name that stands for this scorer in tables and the agreement matrix."""


# -- adapters for the scorers of autointerp.score -----------------------------------------------------


def simulation_judge(cfg: ExplainConfig, simulator_spec: str) -> str:
    """The ``judge`` of simulation scores: the simulator kind and spec, ``+records-per-prompt=K`` when ``K``
    records share a prompt, and ``+prior-subtracted`` (with its neutral label when not the default) when the
    neutral-label simulation is subtracted: such scores are stored and reported apart."""
    from autointerp.simulate import NEUTRAL_LABEL

    k = cfg.records_per_prompt
    judge = f"{cfg.simulator_kind}[{simulator_spec}]" + (f"+records-per-prompt={k}" if k > 1 else "")
    if cfg.subtract_prior:
        judge += "+prior-subtracted" + ("" if cfg.neutral_label == NEUTRAL_LABEL else f"[{cfg.neutral_label}]")
    return judge


def neutral_id(cfg: ExplainConfig, feature: str) -> str:
    """The explanation id under which a feature's neutral-label simulations are stored (``--subtract-prior``);
    one per neutral label, shared by every explanation of the feature."""
    from autointerp.simulate import NEUTRAL_LABEL

    return f"{feature}#neutral" + ("" if cfg.neutral_label == NEUTRAL_LABEL else f"[{cfg.neutral_label}]")


def grouping(cfg: ExplainConfig) -> str:
    """Appended to the judge of detection / fuzzing scores made with several latents per prompt or with the
    examples before the explanation."""
    k = cfg.latents_per_prompt
    return (f"+latents-per-prompt={k}" if k > 1 else "") + ("+examples-first" if cfg.judge_examples_first else "")


class _SimulationScorer:
    def __init__(self, ctx: ScoreContext) -> None:
        from autointerp.score import SIMULATION_SCORES

        self.ctx = ctx
        self.judge = simulation_judge(ctx.config, ctx.simulator.spec)
        self.score_names: tuple[str, ...] = SIMULATION_SCORES

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        from autointerp.score import simulation_scores

        cfg = self.ctx.config
        plan = cfg.simulated_records(record)  # the scored test splits, then the calibration records
        # Every simulation of this explanation is asked for at once, so its requests (which share the template
        # and the explanation, the prompt's prefix) reach the backend together and reuse its prefix cache.
        done = await asyncio.gather(
            *(self.ctx.simulations(eid, text, record, split, idx) for split, idx in plan), return_exceptions=True
        )
        failed = next((d for d in done if isinstance(d, BaseException)), None)
        if failed is not None:
            raise failed
        results = [d for d in done if not isinstance(d, BaseException)]
        usage = sum((u for _, u in results), Usage())
        recs = [[getattr(record, split)[i] for i in idx] for split, idx in plan]
        sims = [s for s, _ in results]
        n = len(cfg.scored_test_splits)
        splits = {split: (recs[j], sims[j]) for j, (split, _) in enumerate(plan[:n])}
        cal = ([r for rs in recs[n:] for r in rs], [x for xs in sims[n:] for x in xs]) if cfg.calibrate else None
        return Scored(simulation_scores(splits, cal, cfg.max_failed_fraction), usage)


class _One:
    """Wraps a scorer whose ``score(text, record)`` returns one Score with its usage in its details."""

    def __init__(self, inner: object, judge: str, names: tuple[str, ...]) -> None:
        self.inner = inner
        self.judge = judge
        self.score_names = names

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        sc: Score = await self.inner.score(text, record)  # type: ignore[attr-defined]
        return Scored([sc], usage_of(sc.details))


class _Many:
    """Runs several scorers as one (SAEBench's uncorrected and corrected versions)."""

    def __init__(self, parts: Sequence[_One]) -> None:
        self.parts = list(parts)
        self.judge = parts[0].judge
        self.score_names = tuple(n for p in parts for n in p.score_names)

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        out = Scored([])
        for p in self.parts:
            r = await p.score(eid, text, record)
            out.scores += r.scores
            out.usage = out.usage + r.usage
        return out


def classifier_settings(cfg: ExplainConfig) -> ClassifierSettings:
    from autointerp.score import ClassifierSettings

    return ClassifierSettings(
        n_positive=cfg.classifier_examples,
        n_negative=cfg.classifier_examples,
        per_prompt=cfg.examples_per_prompt,
        seed=cfg.seed,
        negatives=cfg.negatives,
        judge_probabilities=cfg.judge_probabilities,
        examples_first=cfg.judge_examples_first,
    )


HARD = "+hard-negatives"
"""Appended to the judge of scores made with hard negatives, so they are stored and reported apart from the
same scorer's random-negative scores (scores are keyed by explanation, name and judge)."""


def _negatives(cfg: ExplainConfig) -> str:
    return HARD if cfg.negatives == "hard" else ""


def _classifier(ctx: ScoreContext, cls: type[_Classifier]) -> _One:
    """A detection / fuzzing scorer; with ``latents_per_prompt`` > 1 it shares the run's grouper of its kind."""
    from autointerp.score import JudgeGrouper

    cfg = ctx.config
    scorer = cls(ctx.judge, classifier_settings(cfg))
    if cfg.latents_per_prompt > 1:
        key = f"judge-group:{cls.name}:{ctx.judge.spec}:{classifier_settings(cfg)}:{cfg.latents_per_prompt}"
        scorer.grouper = ctx.models.memo.setdefault(key, JudgeGrouper(cfg.latents_per_prompt))
    judge = ctx.judge.spec + _negatives(cfg) + grouping(cfg)
    return _One(scorer, judge, (cls.name,))


def _detection(ctx: ScoreContext) -> _One:
    from autointerp.score import DetectionScorer

    return _classifier(ctx, DetectionScorer)


def _fuzzing(ctx: ScoreContext) -> _One:
    from autointerp.score import FuzzingScorer

    return _classifier(ctx, FuzzingScorer)


def _saebench(ctx: ScoreContext) -> _Many:
    from autointerp.score import SAEBenchDetectionScorer, SAEBenchSettings

    parts = []
    for check in (False, True):
        sb = SAEBenchDetectionScorer(ctx.judge, SAEBenchSettings(check_random=check, seed=ctx.config.seed))
        parts.append(_One(sb, ctx.judge.spec, (sb.name,)))
    return _Many(parts)


def _embedding(ctx: ScoreContext) -> Scorer:
    from autointerp.scorers.embedding import EmbeddingScorer

    emb = ctx.models.embedder(ctx.config.embedding_model)
    scorer = EmbeddingScorer(emb, classifier_settings(ctx.config))
    scorer.judge += _negatives(ctx.config)
    return scorer


def _surprisal(ctx: ScoreContext) -> Scorer:
    from autointerp.scorers.surprisal import SurprisalScorer

    name = ctx.config.surprisal_model
    plain = ctx.models.memo.setdefault(f"surprisal-plain:{name}", {})
    scorer = SurprisalScorer(ctx.models.subject(name), classifier_settings(ctx.config), plain=plain)
    scorer.judge += _negatives(ctx.config)
    return scorer


def _steer_cache(ctx: ScoreContext) -> SteeringCache:
    from autointerp.scorers.intervention import SteeringCache

    settings = ctx.config.steer_settings()
    key = f"steering:{settings}"
    if key not in ctx.models.memo:
        ctx.models.memo[key] = SteeringCache(ctx.models, settings)
    cache: SteeringCache = ctx.models.memo[key]
    return cache


def _intervention(ctx: ScoreContext) -> Scorer:
    from autointerp.scorers.intervention import InterventionScorer

    return InterventionScorer(ctx.judge, _steer_cache(ctx), ctx.config.judge_probabilities)


def _intervention_kl(ctx: ScoreContext) -> Scorer:
    from autointerp.scorers.intervention import InterventionKLScorer

    return InterventionKLScorer(_steer_cache(ctx))


# -- checks before any work ------------------------------------------------------------------------


def _check_embedding(cfg: ExplainConfig, addresses: Sequence[str], models: Models) -> None:
    from autointerp.embedding import check_embedding_model

    check_embedding_model(cfg.embedding_model)


def _check_surprisal(cfg: ExplainConfig, addresses: Sequence[str], models: Models) -> None:
    from autointerp.embedded import SUBJECT_MODELS, part_paths
    from autointerp.subject import _resolve_path

    if models.has_subject(cfg.surprisal_model):
        return
    if cfg.surprisal_model in SUBJECT_MODELS:
        part_paths(cfg.surprisal_model)  # the embedded model's packages are installed (UserError otherwise)
    else:
        _resolve_path(cfg.surprisal_model)


def _check_steering(cfg: ExplainConfig, addresses: Sequence[str], models: Models) -> None:
    from autointerp.scorers.intervention import parse_alpha
    from autointerp.sources.neurons import NeuronSource
    from autointerp.steering import STEER_MODES, require_decoder

    parse_alpha(cfg.alpha)
    if cfg.steer_mode not in STEER_MODES:
        raise UserError(f"--steer-mode {cfg.steer_mode!r} is unknown; use one of {', '.join(STEER_MODES)}")
    for address in dict.fromkeys(addresses):
        source, _ = models.source_and_subject(address)
        require_decoder(source, "steering (the intervention scorers)")
        if cfg.steer_mode == "clamp" and not isinstance(source, NeuronSource):
            raise UserError("--steer-mode clamp sets one neuron's activation: use it with neuron sources only")


SCORERS: dict[str, ScorerEntry] = {
    e.name: e
    for e in (
        ScorerEntry(
            "simulation", "the simulator predicts activations from the label: correlation, r_squared, ...",
            "input", (), lambda ctx: _SimulationScorer(ctx),
            prompts=("simulate_all_at_once.j2", "simulate_json.j2"), headline="correlation",
        ),
        ScorerEntry(
            "detection", "the judge tells activating from non-activating windows (balanced accuracy; AUC)",
            "input", ("detection",), _detection, prompts=("score_detection.j2",), headline="detection",
        ),
        ScorerEntry(
            "fuzzing", "the judge tells whether the marked tokens are the ones the feature fires on",
            "input", ("fuzzing",), _fuzzing, prompts=("score_fuzzing.j2",), headline="fuzzing",
        ),
        ScorerEntry(
            "saebench_detection", "SAEBench's detection accuracy, as published and corrected",
            "input", ("saebench_detection", "saebench_detection_checked"), _saebench,
            prompts=("score_saebench.j2",), headline="saebench_detection_checked",
        ),
        ScorerEntry(
            "embedding", "AUC of the similarity of the label (query) to activating vs other windows; no LLM",
            "input", ("embedding",), _embedding, check=_check_embedding, headline="embedding",
        ),
        ScorerEntry(
            "surprisal", "AUC of how much the label as a prefix lowers a base LM's loss on activating windows",
            "input", ("surprisal",), _surprisal, prompts=("score_surprisal.j2",),
            check=_check_surprisal, headline="surprisal",
        ),
        ScorerEntry(
            "intervention", "the judge tells the steered continuation from the unsteered one (accuracy; AUC)",
            "output", ("intervention",), _intervention, prompts=("score_intervention.j2",),
            check=_check_steering, headline="intervention",
        ),
        ScorerEntry(
            "intervention_kl", "steering's KL divergence and the logit shift of the label's words; no judge",
            "output", ("intervention_kl", "intervention_logit_shift"), _intervention_kl,
            check=_check_steering, headline="intervention_logit_shift",
        ),
    )
}
"""Every scorer, by the name ``--scorers`` takes."""


def scorer_entries(names: Sequence[str]) -> list[ScorerEntry]:
    """The entries of ``names``; a one-line UserError naming the known ones for an unknown name."""
    bad = [n for n in names if n not in SCORERS]
    if bad:
        raise UserError(f"unknown scorer(s) {', '.join(bad)}; use a comma list of {', '.join(SCORERS)}")
    return [SCORERS[n] for n in names]


def check_scorers(cfg: ExplainConfig, addresses: Sequence[str], models: Models) -> None:
    """Run every chosen scorer's check (bad input fails here, before any work)."""
    for e in scorer_entries(cfg.scorer_list):
        if e.check is not None:
            e.check(cfg, addresses, models)


def score_names(side: str | None = None) -> list[str]:
    """Every score name the registry's scorers write (of one side, if given)."""
    return [n for e in SCORERS.values() if side is None or e.side == side for n in e.score_names]


def score_side(label: str) -> Literal["input", "output"] | None:
    """Which side of a feature the score ``label`` rates (``input``: what makes it fire; ``output``: what it
    does to the model's output), from the registry; a run's score labels may carry the judge
    (``detection@<judge>``, see :mod:`autointerp.rundir`). None for a name no scorer writes (a diagnostic
    such as ``label_prior_correlation``)."""
    from autointerp.score import SIMULATION_SCORES

    name = label.split("@", 1)[0]
    for e in SCORERS.values():
        if name in e.score_names or (e.name == "simulation" and name in SIMULATION_SCORES):
            return e.side
    return None
