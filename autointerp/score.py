"""Scorers: pure functions over arrays (simulation scores), plus LLM-judged classifiers.

Simulation scores (OpenAI's definitions, ``neuron_explainer/explanations/scoring.py``):

* ``correlation``: pooled Pearson correlation over every token of the ``test_top`` + ``test_random``
  records (OpenAI's ``ev_correlation_score``: flatten true and simulated activations over all records,
  ``np.corrcoef``). Also ``correlation_top``, ``correlation_random``, ``correlation_quantiles``.
* ``r_squared`` = ``1 - mean((true - pred)^2) / mean(true^2)`` and ``absolute_deviation_explained`` =
  ``1 - mean(|true - pred|) / mean(|true|)``, over the pooled top + random tokens, after a linear
  calibration of the simulation. As OpenAI defined it, the calibration is fitted on held-out top and random
  records 1:1 (:func:`calibration_indices`: the ``valid`` records, which are top-activating, and as many
  ``test_random`` records beyond the ones scored), never on the scored records, and not on top records
  alone (a top-only fit sees few zeros and overstates the scale). A fit with slope <= 0 (the simulation
  anti-correlates) or on a constant simulation is refused: the score is undefined, with a reason starting
  with :data:`CALIBRATION_REFUSED`, and the run summary counts such refusals per score.

Classifiers (LLM judge, balanced accuracy, so a judge that always answers the same scores 0.5):

* ``detection`` (delphi): is the feature active anywhere in this example? Positives from
  ``test_quantiles`` + ``test_top`` (records that fire), negatives from ``test_random`` records that
  never fire (checked). ``per_prompt`` examples per request (default 5).
* ``fuzzing`` (delphi): are the marked tokens the ones the feature fires on? Positives: firing records
  with their active tokens marked; negatives: non-firing records with as many random tokens marked.
* ``saebench_detection``: SAEBench's setup, reproduced: 2 top + 2 quantile + 10 random windows shuffled
  into one prompt; the judge lists the examples that activate; score = plain accuracy with every random
  window labelled negative *without checking the latent* (their caveat: a judge answering "None" scores
  10/14 = 0.714). ``check_random=True`` gives the corrected version that labels random windows by whether
  the latent fires in them.

Classifier metrics (``details["metrics"]`` of detection and fuzzing, beside the balanced accuracy that is
the score's value): precision, recall, F1, and the ROC AUC of the judge's P(yes) where the judge gives
logprobs (``ClassifierSettings.judge_probabilities``). Each is ``None`` with a reason in
``details["metric_reasons"]`` when undefined (a one-class set, a judge that never says yes, ...).
``details["confusion"]`` holds the counts (tp, fp, tn, fn), so :func:`pooled_classifier_metrics` can
give delphi's pooled confusion matrix over many latents (delphi sums one matrix across latents before
computing precision/recall/F1/accuracy; autointerp's per-latent score stays the default). Conventions that
change the numbers, all recorded in each score's settings: which records are positives
(``positives``: ``quantiles_then_top``, the default; ``quantiles`` as delphi; ``top``), which are
negatives (``negatives``: ``random`` non-firing windows, or ``hard`` ones, see
:func:`hard_negatives`), and which tokens fuzzing marks (``highlight_threshold`` x the record's max;
0 marks every firing token, delphi uses 0.3).

P(yes) at each 0/1 slot of the judge's answer list is p("1") / (p("1") + p("0")) among the top tokens there
(undefined for that example when neither is among them). The judge request asks for the top logprobs of its
own answer tokens (``ChatRequest.top_logprobs``): when the backend gives them (llama.cpp, vLLM and OpenAI
servers do) and every slot of the list is a token of its own, P(yes) is read from them, with no other
request; otherwise with one extra top-logprobs request per judge prompt: the chat messages rendered as plain
text, followed by the judge's own answer list, teacher-forced. ``details["probability_source"]`` says which
(``answer`` or ``teacher-forced``).

An unparseable judge answer is counted as failed and reported in ``details``, never as right or wrong.
Undefined scores are ``Score(value=None, reason=...)``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import UserError
from autointerp.explain import highlight_tokens
from autointerp.llm.base import (
    ChatRequest,
    LLMClient,
    LLMError,
    TokenLogprobs,
    TopLogprobsRequest,
    Unsupported,
    capabilities_of,
)
from autointerp.llm.batching import MicroBatcher
from autointerp.prompts import load_template
from autointerp.records import ActivationRecord, FeatureRecord, Score, Simulation, Usage
from autointerp.simulate import CalibrationError, fit_linear

log = logging.getLogger(__name__)

SIMULATION_SCORES = (
    "correlation",
    "correlation_top",
    "correlation_random",
    "correlation_quantiles",
    "r_squared",
    "absolute_deviation_explained",
)
CLASSIFIER_SCORERS = ("detection", "fuzzing", "saebench_detection")
SCORERS = ("simulation", *CLASSIFIER_SCORERS)
"""Scorer names accepted by the pipeline: ``simulation`` gives every score in SIMULATION_SCORES."""


# -- pure functions ----------------------------------------------------------------------------------


def pearson(true: np.ndarray, pred: np.ndarray) -> float | str:
    """Pearson correlation, or the reason it is undefined (as a string)."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if len(t) != len(p):
        return f"length mismatch ({len(t)} vs {len(p)})"
    if len(t) < 2:
        return "fewer than 2 tokens"
    if np.ptp(t) == 0:
        return "true activations are constant"
    if np.ptp(p) == 0:
        return "simulated activations are constant"
    return float(np.corrcoef(t, p)[0, 1])


def _pool(
    records: Sequence[ActivationRecord], sims: Sequence[Simulation], max_failed_fraction: float
) -> tuple[np.ndarray, np.ndarray, int] | str:
    if not records:
        return "no records"
    if len(records) != len(sims):
        return f"{len(sims)} simulations for {len(records)} records"
    ok = [(r.activations, s.expected) for r, s in zip(records, sims, strict=True) if s.expected is not None]
    n_failed = len(records) - len(ok)
    if not ok:
        return f"all {len(records)} simulations failed"
    if n_failed / len(records) > max_failed_fraction:
        return f"{n_failed} of {len(records)} simulations failed (more than {max_failed_fraction:.0%})"
    for t, p in ok:
        if len(t) != len(p):  # type: ignore[arg-type]
            return "a simulation's length differs from its record's"
    true = np.concatenate([t for t, _ in ok]).astype(np.float64)
    pred = np.concatenate([p for _, p in ok]).astype(np.float64)  # type: ignore[misc]
    return true, pred, n_failed


def correlation_score(
    name: str,
    records: Sequence[ActivationRecord],
    sims: Sequence[Simulation],
    max_failed_fraction: float = 0.2,
) -> Score:
    """Pooled Pearson correlation over all tokens of ``records`` (OpenAI's ev_correlation_score)."""
    settings = {"pooled": True, "max_failed_fraction": max_failed_fraction}
    pooled = _pool(records, sims, max_failed_fraction)
    if isinstance(pooled, str):
        return Score(name, None, reason=pooled, settings=settings)
    true, pred, n_failed = pooled
    r = pearson(true, pred)
    details = {"n_records": len(records), "n_failed": n_failed, "n_tokens": len(true)}
    if isinstance(r, str):
        return Score(name, None, reason=r, settings=settings, details=details)
    return Score(name, r, settings=settings, details=details)


LABEL_DEPENDENCE = "label_prior_correlation"
"""Score name of :func:`label_prior_correlation`."""
LABEL_PRIOR_FLAG = 0.8
"""A run whose median :func:`label_prior_correlation` reaches this is flagged: its simulations barely depend
on the label, so its correlation scores mostly measure the simulator's prior about the text."""


def label_prior_correlation(
    under_label: Sequence[Simulation], under_shuffled: Sequence[Simulation], max_failed_fraction: float = 0.2
) -> Score:
    """How much a simulator ignores the label: the pooled Pearson correlation, over the same records, of its
    expected values under the feature's label and under a shuffled (another feature's) label.

    Near 1: the simulation hardly changes with the label (it predicts from its prior about the text, so a
    correlation score measures that prior); near 0: the label decides the prediction. Pairs where either
    simulation failed are left out; undefined (None with the reason) when more than ``max_failed_fraction``
    of the pairs failed, or either side is constant."""
    settings = {"pooled": True, "max_failed_fraction": max_failed_fraction}
    if not under_label or len(under_label) != len(under_shuffled):
        reason = "no records" if not under_label else "the two labels were simulated on different records"
        return Score(LABEL_DEPENDENCE, None, reason=reason, settings=settings)
    pairs = [
        (a.expected, b.expected)
        for a, b in zip(under_label, under_shuffled, strict=True)
        if a.expected is not None and b.expected is not None and len(a.expected) == len(b.expected)
    ]
    n_failed = len(under_label) - len(pairs)
    details = {"n_records": len(under_label), "n_failed": n_failed}
    if not pairs or n_failed > max_failed_fraction * len(under_label):
        reason = f"{n_failed} of {len(under_label)} record pairs have a failed simulation"
        return Score(LABEL_DEPENDENCE, None, reason=reason, settings=settings, details=details)
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        side = "the label" if np.ptp(a) == 0 else "the shuffled label"
        return Score(LABEL_DEPENDENCE, None, reason=f"the simulation under {side} is constant", settings=settings,
                     details=details)
    r = pearson(a, b)
    assert not isinstance(r, str)
    return Score(LABEL_DEPENDENCE, r, settings=settings, details={**details, "n_tokens": len(a)})


def r_squared(true: np.ndarray, pred: np.ndarray) -> float | str:
    """OpenAI's definition: ``1 - mean((true - pred)^2) / mean(true^2)``."""
    denom = float(np.mean(np.square(true)))
    if denom == 0:
        return "true activations are all zero"
    return float(1 - np.mean(np.square(true - pred)) / denom)


def absolute_deviation_explained(true: np.ndarray, pred: np.ndarray) -> float | str:
    """OpenAI's definition: ``1 - mean(|true - pred|) / mean(|true|)``."""
    denom = float(np.mean(np.abs(true)))
    if denom == 0:
        return "true activations are all zero"
    return float(1 - np.mean(np.abs(true - pred)) / denom)


CALIBRATION_REFUSED = "calibration refused"
"""How the reason of a score starts when its calibration fit was refused (slope <= 0, constant simulation)."""


def calibration_indices(record: FeatureRecord, limit: int) -> tuple[list[int], list[int]]:
    """Which records calibrate a simulation, top and random 1:1 (OpenAI's calibration set): indices into
    ``record.valid`` (held-out top records; the first ``limit``, 0: all) and into ``record.test_random``
    beyond the first ``limit`` (the ones scored), as many of each. No random record is spare when every
    ``test_random`` record is scored (``limit`` 0): then there is no calibration."""
    n_top = len(record.valid) if limit <= 0 else min(limit, len(record.valid))
    spare = [] if limit <= 0 else list(range(limit, len(record.test_random)))
    k = min(n_top, len(spare))
    return list(range(k)), spare[:k]


BY_CONFIGURATION = {"undefined_by": "configuration"}
"""``Score.details`` of a score the run's settings did not ask for (see :attr:`Score.by_configuration`)."""


def simulation_scores(
    splits: Mapping[str, tuple[Sequence[ActivationRecord], Sequence[Simulation]]],
    calibration: tuple[Sequence[ActivationRecord], Sequence[Simulation]] | None = None,
    max_failed_fraction: float = 0.2,
) -> list[Score]:
    """Every score in :data:`SIMULATION_SCORES` from the simulations of the test splits.

    ``splits`` maps ``test_top``/``test_random``/``test_quantiles`` to (records, simulations);
    ``calibration`` is (records, their simulations) for the linear calibration of r_squared and
    absolute_deviation_explained: held-out top and random records 1:1 (:func:`calibration_indices`); None:
    not calibrated (both undefined)."""
    empty: tuple[Sequence[ActivationRecord], Sequence[Simulation]] = ([], [])
    top = splits.get("test_top", empty)
    rnd = splits.get("test_random", empty)
    qua = splits.get("test_quantiles", empty)
    both_recs = [*top[0], *rnd[0]]
    both_sims = [*top[1], *rnd[1]]
    out = [
        correlation_score("correlation", both_recs, both_sims, max_failed_fraction),
        correlation_score("correlation_top", top[0], top[1], max_failed_fraction),
        correlation_score("correlation_random", rnd[0], rnd[1], max_failed_fraction),
        correlation_score("correlation_quantiles", qua[0], qua[1], max_failed_fraction)
        if "test_quantiles" in splits
        else Score("correlation_quantiles", None, reason="test_quantiles records were not simulated",
                   details=BY_CONFIGURATION),
    ]
    settings = {
        "calibration": "linear least squares on held-out top (valid) and random (test_random) records, 1:1",
        "pooled": "test_top+test_random",
    }
    names = ("r_squared", "absolute_deviation_explained")
    if calibration is None or not calibration[0]:
        reason = (
            "not calibrated (--no-calibrate): the calibration records were not simulated"
            if calibration is None
            else "no calibration records: a 1:1 top/random calibration needs test_random records beyond the "
            "scored ones (sample more with --n-random, or lower --max-records-per-split)"
        )
        by = BY_CONFIGURATION if calibration is None else {}
        out += [Score(n, None, reason=reason, settings=settings, details=dict(by)) for n in names]
        return out
    cal = [(r.activations, s.expected) for r, s in zip(*calibration, strict=True) if s.expected is not None]
    try:
        fit = fit_linear([t for t, _ in cal], [p for _, p in cal])  # type: ignore[misc]
    except CalibrationError as e:
        out += [Score(n, None, reason=f"{CALIBRATION_REFUSED}: {e}", settings=settings) for n in names]
        return out
    pooled = _pool(both_recs, both_sims, max_failed_fraction)
    if isinstance(pooled, str):
        out += [Score(n, None, reason=pooled, settings=settings) for n in names]
        return out
    true, pred, n_failed = pooled
    pred = fit.apply(pred)
    details = {"slope": fit.slope, "intercept": fit.intercept, "n_failed": n_failed, "n_calibration": len(cal)}
    for name, fn in zip(names, (r_squared, absolute_deviation_explained), strict=True):
        v = fn(true, pred)
        if isinstance(v, str):
            out.append(Score(name, None, reason=v, settings=settings, details=details))
        else:
            out.append(Score(name, v, settings=settings, details=details))
    return out


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[bool]) -> float | str:
    """Mean of the true-positive and true-negative rates, or why it is undefined."""
    values, reasons = Confusion.of(labels, predictions).metrics()
    ba = values["balanced_accuracy"]
    return reasons["balanced_accuracy"] if ba is None else ba


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | str:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney U; ties count one half), or why
    it is undefined."""
    y = np.asarray(labels, dtype=bool)
    sc = np.asarray(scores, dtype=np.float64)
    if len(y) != len(sc):
        return f"length mismatch ({len(y)} labels vs {len(sc)} scores)"
    if not y.any():
        return "no positive examples"
    if y.all():
        return "no negative examples"
    pos, neg = sc[y][:, None], sc[~y][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


@dataclass(frozen=True)
class Confusion:
    """Confusion counts of a binary classifier (positive = "the feature is active")."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def of(cls, labels: Sequence[bool], predictions: Sequence[bool]) -> Confusion:
        y = np.asarray(labels, dtype=bool)
        p = np.asarray(predictions, dtype=bool)
        return cls(int((p & y).sum()), int((p & ~y).sum()), int((~p & ~y).sum()), int((~p & y).sum()))

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    def metrics(self) -> tuple[dict[str, float | None], dict[str, str]]:
        """(accuracy, balanced_accuracy, precision, recall, f1 -> value or None; name -> reason if None)."""
        values: dict[str, float | None] = {}
        reasons: dict[str, str] = {}

        def put(name: str, num: float, den: float, why: str) -> None:
            if den == 0:
                values[name], reasons[name] = None, why
            else:
                values[name] = num / den

        n_pos, n_neg = self.tp + self.fn, self.tn + self.fp
        put("accuracy", self.tp + self.tn, n_pos + n_neg, "no examples")
        if n_pos == 0 or n_neg == 0:
            values["balanced_accuracy"] = None
            reasons["balanced_accuracy"] = "no positive examples" if n_pos == 0 else "no negative examples"
        else:
            values["balanced_accuracy"] = (self.tp / n_pos + self.tn / n_neg) / 2
        put("precision", self.tp, self.tp + self.fp, "the judge predicted no positives")
        put("recall", self.tp, n_pos, "no positive examples")
        put("f1", 2 * self.tp, 2 * self.tp + self.fp + self.fn, "no positive examples and no positive predictions")
        return values, reasons

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def classifier_metrics(
    labels: Sequence[bool], predictions: Sequence[bool], probabilities: Sequence[float | None] | None = None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Balanced accuracy, accuracy, precision, recall, F1 and (with ``probabilities`` of "yes") ROC AUC.

    Returns (metric -> value or None, metric -> reason for each None). AUC uses the examples whose
    probability is defined; it is undefined when none are, or when they hold one class only."""
    values, reasons = Confusion.of(labels, predictions).metrics()
    if probabilities is None:
        values["auc"], reasons["auc"] = None, "the judge gave no probabilities"
    else:
        ok = [(bool(y), float(p)) for y, p in zip(labels, probabilities, strict=True) if p is not None]
        auc = roc_auc([y for y, _ in ok], [p for _, p in ok]) if ok else "no example has a probability"
        if isinstance(auc, str):
            values["auc"], reasons["auc"] = None, auc
        else:
            values["auc"] = auc
    return values, reasons


def pooled_classifier_metrics(scores: Sequence[Score]) -> tuple[dict[str, float | None], dict[str, str]]:
    """delphi's convention: one confusion matrix summed over the ``scores`` of many latents (each with
    ``details["confusion"]``), then accuracy / balanced accuracy / precision / recall / F1 of the sum.

    Scores without confusion counts (undefined or other scorers) are skipped."""
    total = Confusion()
    for sc in scores:
        c = sc.details.get("confusion")
        if c:
            total = total + Confusion(**c)
    return total.metrics()


def bootstrap_ci(
    values: Sequence[float | None],
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, float] | None:
    """(mean, low, high) of the mean of the defined ``values`` by percentile bootstrap (``n`` resamples with
    replacement, drawn from ``rng``, else from a generator seeded with ``seed``); None if none is defined.
    The one bootstrap of the project: the run summary, the report and the sweep tables use it."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return None
    rng = rng if rng is not None else np.random.default_rng(seed)
    means = np.empty(n)
    chunk = max(1, 4_000_000 // len(v))  # bounded memory for long value lists
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        means[start:stop] = v[rng.integers(0, len(v), size=(stop - start, len(v)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (needs n >= 2): feature i gets feature perm[i]'s label."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


# -- LLM-judged classifiers --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierSettings:
    """Settings of the detection / fuzzing scorers (delphi defaults: 50 + 50 examples, 5 per prompt)."""

    n_positive: int = 50
    """Activating examples to classify (from test_quantiles, then test_top)."""
    n_negative: int = 50
    """Non-activating examples to classify (test_random windows where the feature never fires)."""
    per_prompt: int = 5
    """Examples per judge request."""
    seed: int = 0
    """Shuffling and random-highlight seed."""
    positives: str = "quantiles_then_top"
    """Which held-out records are positives: quantiles_then_top (test_quantiles, then test_top),
    quantiles (delphi), or top."""
    negatives: str = "random"
    """Which non-firing windows are negatives: random (the first test_random windows that never fire) or
    hard (the non-firing test_random windows most similar to the activating ones, see hard_negatives)."""
    highlight_threshold: float = 0.0
    """fuzzing: mark tokens whose activation exceeds this fraction of the record's max (0: every firing
    token; delphi: 0.3)."""
    judge_probabilities: bool = True
    """Read the judge's P(yes) per example for the AUC, when the judge backend gives logprobs: from the logprobs
    of the judge's own answer, or, where the backend does not return them, one extra top-logprobs request per
    prompt."""
    examples_first: bool = False
    """Put the examples before the explanation in the judge prompt, so prompts that judge the same examples
    under another label (the shuffled baseline) share them as a prefix the backend's cache can serve."""

    def __post_init__(self) -> None:
        if self.positives not in POSITIVE_SETS:
            raise UserError(f"positives {self.positives!r} is unknown; use one of {', '.join(POSITIVE_SETS)}")
        if self.negatives not in NEGATIVE_SETS:
            raise UserError(f"negatives {self.negatives!r} is unknown; use one of {', '.join(NEGATIVE_SETS)}")
        if not 0.0 <= self.highlight_threshold < 1.0:
            raise UserError("highlight_threshold must be in [0, 1): a fraction of the record's max activation")


POSITIVE_SETS = ("quantiles_then_top", "quantiles", "top")
NEGATIVE_SETS = ("random", "hard")


def parse_binary_list(text: str, n: int) -> list[bool] | str:
    """Strictly parse a JSON list of n values 0/1 (the last ``[...]`` in the answer)."""
    found = re.findall(r"\[[^\[\]]*\]", text)
    if not found:
        return "no [...] list in the answer"
    try:
        data = json.loads(found[-1])
    except json.JSONDecodeError:
        return "the list is not valid JSON"
    if not isinstance(data, list) or len(data) != n:
        return f"expected a list of {n} values"
    out = []
    for x in data:
        if isinstance(x, bool) or x not in (0, 1):
            return f"value {x!r} is not 0 or 1"
        out.append(bool(x))
    return out


def positives_negatives(
    record: FeatureRecord, s: ClassifierSettings
) -> tuple[list[ActivationRecord], list[ActivationRecord]]:
    """The held-out activating (positives) and non-activating (negatives) windows that classifier-style
    scorers rate, by the settings' conventions."""
    from autointerp.negatives import hard_negatives

    pool = {
        "quantiles_then_top": [*record.test_quantiles, *record.test_top],
        "quantiles": record.test_quantiles,
        "top": record.test_top,
    }[s.positives]
    pos = [r for r in pool if r.max_activation > 0][: s.n_positive]
    if s.negatives == "hard":
        neg = hard_negatives(record, s.n_negative)
    else:
        neg = [r for r in record.test_random if r.max_activation <= 0][: s.n_negative]
    return pos, neg


JUDGE_TOP_LOGPROBS = 20
"""Alternatives per answer token a judge request asks for when P(yes) is read (OpenAI's maximum)."""


def answer_probabilities(text: str, tokens: Sequence[TokenLogprobs]) -> list[float | None] | None:
    """P(yes) at each value of the last ``[...]`` list of the judge's answer ``text``, from the answer's own
    token logprobs; None when they cannot give it: no tokens, tokens that do not spell ``text``, or a value
    that is not a token of its own (e.g. ``"[1"``), so that the caller asks the teacher-forced request."""
    if not tokens or "".join(t.token for t in tokens) != text:
        return None
    found = list(re.finditer(r"\[[^\[\]]*\]", text))
    if not found:
        return None
    last = found[-1]
    values = [last.start() + m.start() for m in re.finditer(r"-?\d+(?:\.\d*)?", last.group())]
    starts: dict[int, TokenLogprobs] = {}
    pos = 0
    for t in tokens:
        starts[pos + len(t.token) - len(t.token.lstrip())] = t
        pos += len(t.token)
    out: list[float | None] = []
    for v in values:
        slot = starts.get(v)
        if slot is None or slot.token.strip() not in ("0", "1"):
            return None
        out.append(choice_probability(slot.top))
    return out


def choice_probability(top: dict[str, float], yes: str = "1", no: str = "0") -> float | None:
    """P(yes) / (P(yes) + P(no)) among one slot's top tokens (compared stripped of spaces); None when neither
    is among them."""
    p_yes = sum(np.exp(lp) for t, lp in top.items() if t.strip() == yes)
    p_no = sum(np.exp(lp) for t, lp in top.items() if t.strip() == no)
    return float(p_yes / (p_yes + p_no)) if p_yes + p_no > 0 else None


@dataclass(frozen=True)
class JudgePart:
    """One latent's share of a judge prompt: its explanation and the example texts to classify."""

    latent: str
    """The latent (feature id); parts of one latent never share a prompt."""
    explanation: str
    examples: tuple[str, ...]


@dataclass
class PartAnswer:
    """The judge's answer for one :class:`JudgePart`."""

    predictions: list[bool] | str
    """One prediction per example, or why the answer could not be parsed."""
    probabilities: list[float | None]
    """P(yes) per example (None where undefined or not asked)."""
    probability_failure: str | None
    """Why the P(yes) request failed, if it did."""
    usage: Usage
    """This part's share of the request's usage (by its number of examples)."""
    probability_source: str | None = None
    """Where P(yes) came from: "answer" (the judge answer's own logprobs), "teacher-forced" (the extra
    request), or None (not asked, or failed)."""
    probability_unavailable: str | None = None
    """Why P(yes) is undefined because the judge's endpoint cannot give it (no logprobs served): not a failure,
    the answers still score."""


def split_usage(usage: Usage, weights: Sequence[int]) -> list[Usage]:
    """``usage`` split into integer shares proportional to ``weights`` (largest remainders), so the shares add
    up to it exactly."""

    def shares(total: int) -> list[int]:
        w = np.asarray(weights, dtype=np.float64)
        exact = total * w / w.sum()
        out = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - out), kind="stable")[: total - int(out.sum())]:
            out[i] += 1
        return [int(x) for x in out]

    names = ("prompt_tokens", "completion_tokens", "requests", "cache_hits", "cached_prompt_tokens",
             "cache_write_tokens", "cache_reported")
    cols = {n: shares(getattr(usage, n)) for n in names}
    total_w = float(sum(weights))
    return [
        Usage(**{n: cols[n][i] for n in names}, cost_usd=usage.cost_usd * w / total_w)
        for i, w in enumerate(weights)
    ]


class _Classifier:
    name = ""
    template_name = ""

    def __init__(self, client: LLMClient, settings: ClassifierSettings | None = None) -> None:
        self.client = client
        self.settings = settings or ClassifierSettings()
        self.template = load_template(self.template_name)
        self.grouper: JudgeGrouper | None = None
        """Set to share judge prompts with other latents' (``latents_per_prompt`` > 1); None: one latent per
        prompt."""

    def examples(self, record: FeatureRecord, rng: np.random.Generator) -> tuple[list[str], list[bool]]:
        raise NotImplementedError

    @property
    def use_probabilities(self) -> bool:
        """Whether P(yes) can be had: from the logprobs of the judge's own answer (unless the endpoint is known to
        give none) or from a teacher-forced top-logprobs request (unless it serves none)."""
        if not self.settings.judge_probabilities:
            return False
        return bool(getattr(self.client, "supports_logprobs", False)) or capabilities_of(self.client).has(
            "chat_logprobs"
        )

    def no_logprobs_reason(self) -> str:
        """Why the judge's endpoint gives no P(yes): what it was found not to serve."""
        caps = [c for c in ("completions", "chat_logprobs") if c in capabilities_of(self.client).missing]
        return f"the judge's endpoint gives no logprobs (missing: {', '.join(caps) or 'logprobs'}; see the manifest)"

    def request(self, explanation: str, batch: Sequence[str]) -> ChatRequest:
        """The judge request for one batch of example texts."""
        return self.request_group([JudgePart("", explanation, tuple(batch))])

    def request_group(self, parts: Sequence[JudgePart]) -> ChatRequest:
        """The judge request for several latents' parts: each explanation with its examples, numbered on
        across the parts; one answer list for all. One part gives the plain one-latent prompt."""
        if self.settings.examples_first and len(parts) > 1:
            raise ValueError("examples_first takes one latent per prompt")
        listings, start = [], 0
        for p in parts:
            listings.append(
                {"explanation": p.explanation,
                 "examples": "\n".join(f"Example {start + i + 1}: {t}" for i, t in enumerate(p.examples))}
            )
            start += len(p.examples)
        msgs = self.template.render_chat(
            {"parts": listings, "n": start, "examples_first": self.settings.examples_first}
        )
        top = JUDGE_TOP_LOGPROBS if self.use_probabilities else 0
        return ChatRequest(messages=msgs, max_tokens=10 + 4 * start, top_logprobs=top)

    async def judge_parts(self, parts: Sequence[JudgePart]) -> list[PartAnswer]:
        """Ask the judge about ``parts`` in one request (and one P(yes) request, when used and its answer's
        logprobs do not give P(yes)) and map its answer back to each part in order. An LLMError of the judge
        request is raised."""
        req = self.request_group(parts)
        sizes = [len(p.examples) for p in parts]
        n = sum(sizes)
        resp = await self.client.chat(req)
        usage = resp.usage
        parsed = parse_binary_list(resp.text, n)
        probs: list[float | None] = [None] * n
        prob_failure = unavailable = None
        source = None
        if not isinstance(parsed, str) and self.use_probabilities:
            from_answer = answer_probabilities(resp.text, resp.logprobs)
            if from_answer is not None and len(from_answer) == n:
                probs, source = from_answer, "answer"
            elif not self.client.supports_logprobs:
                unavailable = self.no_logprobs_reason()
            else:
                try:
                    probs, u = await self._probabilities(req.messages, parsed)
                    usage = usage + u
                    source = "teacher-forced"
                except Unsupported as e:
                    unavailable = e.reason
                except LLMError as e:
                    prob_failure = f"probability request failed: {e.reason}"
        out, start = [], 0
        for size, u in zip(sizes, split_usage(usage, sizes), strict=True):
            preds = parsed if isinstance(parsed, str) else parsed[start : start + size]
            out.append(PartAnswer(preds, probs[start : start + size], prob_failure, u, source, unavailable))
            start += size
        return out

    async def _probabilities(self, msgs: tuple[Any, ...], answers: list[bool]) -> tuple[list[float | None], Usage]:
        """P(yes) per example: the prompt as plain text + the judge's answer list, teacher-forced."""
        text = "\n\n".join(m.content for m in msgs) + "\n\nAnswer: ["
        positions = []
        for i, a in enumerate(answers):
            if i:
                text += ", "
            positions.append(len(text))
            text += "1" if a else "0"
        text += "]"
        resp = await self.client.top_logprobs(TopLogprobsRequest(prompt=text, positions=tuple(positions), top_k=20))
        return [choice_probability(t.top) for t in resp.logprobs], resp.usage

    async def _judge(self, part: JudgePart) -> PartAnswer:
        if self.grouper is None:
            return (await self.judge_parts([part]))[0]
        return await self.grouper.submit(self, part)

    async def score(self, explanation: str, record: FeatureRecord) -> Score:
        s = self.settings
        settings = {**asdict(s), "judge": self.client.spec, "prompt_hash": self.template.hash}
        use_probs = self.use_probabilities
        settings["judge_probabilities"] = use_probs
        if self.grouper is not None:
            settings["latents_per_prompt"] = self.grouper.batcher.max_batch
        rng = np.random.default_rng([s.seed, record.id.index])
        texts, labels = self.examples(record, rng)
        if not texts:
            return Score(self.name, None, reason="no examples to classify", settings=settings)
        order = rng.permutation(len(texts))
        texts = [texts[i] for i in order]
        labels = [labels[i] for i in order]
        usage = Usage()
        got_labels: list[bool] = []
        got_preds: list[bool] = []
        got_probs: list[float | None] = []
        sources: dict[str, int] = {}
        failures: list[str] = []
        unavailable: list[str] = []
        for start in range(0, len(texts), s.per_prompt):
            batch = texts[start : start + s.per_prompt]
            try:
                ans = await self._judge(JudgePart(str(record.id), explanation, tuple(batch)))
            except LLMError as e:
                if self.grouper is not None:
                    raise  # the request held other latents' parts too: nothing is written, a rerun retries
                failures.append(f"request failed: {e.reason}")
                continue
            usage = usage + ans.usage
            if isinstance(ans.predictions, str):
                failures.append(ans.predictions)
                continue
            if ans.probability_failure:
                failures.append(ans.probability_failure)
            if ans.probability_unavailable:
                unavailable.append(ans.probability_unavailable)
            if ans.probability_source:
                sources[ans.probability_source] = sources.get(ans.probability_source, 0) + 1
            got_preds += ans.predictions
            got_probs += ans.probabilities
            got_labels += labels[start : start + s.per_prompt]
        details: dict[str, Any] = {
            "requests": usage.requests,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_reported": usage.cache_reported,
            "n_examples": len(texts),
            "n_classified": len(got_preds),
            "failed_prompts": len(failures),
            "failures": failures[:5],
        }
        if not got_preds:
            return Score(self.name, None, reason="no judge answer could be parsed", settings=settings, details=details)
        metrics, reasons = classifier_metrics(got_labels, got_preds, got_probs if use_probs else None)
        if metrics["auc"] is None and s.judge_probabilities and (unavailable or not self.use_probabilities):
            reasons["auc"] = f"P(yes) undefined: {unavailable[0] if unavailable else self.no_logprobs_reason()}"
        details.update(
            metrics=metrics,
            metric_reasons=reasons,
            confusion=Confusion.of(got_labels, got_preds).to_json(),
            n_with_probability=sum(p is not None for p in got_probs),
            probability_source=sources,
        )
        ba = metrics["balanced_accuracy"]
        if ba is None:
            return Score(self.name, None, reason=reasons["balanced_accuracy"], settings=settings, details=details)
        return Score(self.name, ba, settings=settings, details=details)


class DetectionScorer(_Classifier):
    """delphi-style detection: does the feature fire anywhere in this example?"""

    name = "detection"
    template_name = "score_detection.j2"

    def examples(self, record: FeatureRecord, rng: np.random.Generator) -> tuple[list[str], list[bool]]:
        pos, neg = positives_negatives(record, self.settings)
        texts = [highlight_tokens(r.tokens, np.zeros(len(r.tokens), dtype=bool)) for r in [*pos, *neg]]
        return texts, [True] * len(pos) + [False] * len(neg)


class FuzzingScorer(_Classifier):
    """delphi-style fuzzing: are the marked tokens the ones the feature fires on?"""

    name = "fuzzing"
    template_name = "score_fuzzing.j2"

    def examples(self, record: FeatureRecord, rng: np.random.Generator) -> tuple[list[str], list[bool]]:
        pos, neg = positives_negatives(record, self.settings)
        t = self.settings.highlight_threshold
        marks = [(r.activations > 0) & (r.activations > t * r.max_activation) for r in pos]
        texts = [highlight_tokens(r.tokens, m) for r, m in zip(pos, marks, strict=True)]
        counts = [int(m.sum()) for m in marks] or [1]
        for r in neg:
            k = min(len(r.tokens), int(rng.choice(counts)))
            mask = np.zeros(len(r.tokens), dtype=bool)
            mask[rng.choice(len(r.tokens), size=k, replace=False)] = True
            texts.append(highlight_tokens(r.tokens, mask))
        return texts, [True] * len(pos) + [False] * len(neg)


class JudgeGrouper:
    """Puts several latents' detection (or fuzzing) prompts into one judge request.

    Scorers of latents scored at the same time submit their next :class:`JudgePart`; up to ``latents`` parts
    of distinct latents that arrive within ``wait_s`` of each other are judged in one request
    (:meth:`_Classifier.judge_parts`, sent through the first part's scorer's client), and each scorer gets its
    own part's answer back. One grouper per scorer name, judge and settings per run."""

    def __init__(self, latents: int, wait_s: float = 0.1) -> None:
        self.batcher: MicroBatcher[tuple[_Classifier, JudgePart], PartAnswer] = MicroBatcher(
            run_batch_async=self._run, max_batch=latents, wait_s=wait_s, key=lambda item: item[1].latent,
            describe="judge group",
        )

    async def submit(self, scorer: _Classifier, part: JudgePart) -> PartAnswer:
        return await self.batcher.submit((scorer, part))

    @staticmethod
    async def _run(items: list[tuple[_Classifier, JudgePart]]) -> list[PartAnswer]:
        return await items[0][0].judge_parts([p for _, p in items])


@dataclass(frozen=True)
class SAEBenchSettings:
    """SAEBench autointerp scoring setup (their defaults)."""

    n_top: int = 2
    """Top-activating windows in the scoring set."""
    n_quantile: int = 2
    """Importance-weighted windows (we take test_quantiles) in the scoring set."""
    n_random: int = 10
    """Random windows in the scoring set."""
    check_random: bool = False
    """False reproduces SAEBench (random windows labelled negative unchecked); True labels them by
    whether the latent actually fires in them (the corrected version)."""
    seed: int = 0
    """Shuffling seed."""


def parse_index_list(text: str, n: int) -> set[int] | str:
    """SAEBench answer: comma-separated example numbers (1-based) or "None"; strictly validated."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "empty answer"
    last = lines[-1].strip().rstrip(".")
    if last.lower() == "none":
        return set()
    parts = [p.strip() for p in last.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):
        return f"not a list of example numbers: {last[:40]!r}"
    idx = {int(p) for p in parts}
    if not all(1 <= i <= n for i in idx):
        return f"example number out of 1..{n}"
    return idx


class SAEBenchDetectionScorer:
    """SAEBench's detection accuracy (see the module docstring for its caveat and the corrected mode)."""

    def __init__(self, client: LLMClient, settings: SAEBenchSettings | None = None) -> None:
        self.client = client
        self.settings = settings or SAEBenchSettings()
        self.template = load_template("score_saebench.j2")
        self.name = "saebench_detection_checked" if self.settings.check_random else "saebench_detection"

    async def score(self, explanation: str, record: FeatureRecord) -> Score:
        s = self.settings
        settings = {**asdict(s), "judge": self.client.spec, "prompt_hash": self.template.hash}
        rng = np.random.default_rng([s.seed, record.id.index])
        top = record.test_top[: s.n_top]
        qua = record.test_quantiles[: s.n_quantile]
        rnd = record.test_random[: s.n_random]
        recs = [*top, *qua, *rnd]
        if not recs:
            return Score(self.name, None, reason="no examples", settings=settings)
        labels = [True] * (len(top) + len(qua)) + [(r.max_activation > 0) if s.check_random else False for r in rnd]
        order = rng.permutation(len(recs))
        recs = [recs[i] for i in order]
        labels = [labels[i] for i in order]
        listing = "\n".join(
            f"{i + 1}. {highlight_tokens(r.tokens, np.zeros(len(r.tokens), dtype=bool))}" for i, r in enumerate(recs)
        )
        msgs = self.template.render_chat({"explanation": explanation, "examples": listing, "n": len(recs)})
        details: dict[str, object] = {"n_examples": len(recs), "n_positive_labels": int(sum(labels))}
        try:
            resp = await self.client.chat(ChatRequest(messages=msgs, max_tokens=60))
        except LLMError as e:
            return Score(self.name, None, reason=f"judge request failed: {e.reason}", settings=settings)
        details.update(requests=resp.usage.requests, prompt_tokens=resp.usage.prompt_tokens)
        parsed = parse_index_list(resp.text, len(recs))
        if isinstance(parsed, str):
            details["raw"] = resp.text[:200]
            return Score(
                self.name, None, reason=f"unparseable judge answer: {parsed}", settings=settings, details=details
            )
        preds = [(i + 1) in parsed for i in range(len(recs))]
        acc = float(np.mean(np.asarray(preds) == np.asarray(labels)))
        return Score(self.name, acc, settings=settings, details=details)


# -- puzzles: does the correlation scorer rank a true explanation above false ones? ---------------------


@dataclass
class Puzzle:
    """Hand-made texts with hand-set activations, a true explanation and false ones
    (``datasets/puzzles/puzzles.json``)."""

    name: str
    explanation: str
    false_explanations: list[str]
    records: list[ActivationRecord]


def load_puzzles(path: Path | None = None) -> list[Puzzle]:
    from autointerp.paths import datasets_dir

    p = path or datasets_dir() / "puzzles" / "puzzles.json"
    out = []
    for d in json.loads(p.read_text(encoding="utf-8")):
        recs = [
            ActivationRecord(tokens=r["tokens"], token_ids=list(range(len(r["tokens"]))), activations=r["activations"])
            for r in d["records"]
        ]
        out.append(Puzzle(d["name"], d["explanation"], list(d["false_explanations"]), recs))
    return out


@dataclass
class PuzzleResult:
    name: str
    true_score: Score
    false_scores: list[Score]

    @property
    def solved(self) -> bool:
        """True when the true explanation's correlation is defined and above every false one's."""
        t = self.true_score.value
        if t is None:
            return False
        return all(f.value is None or t > f.value for f in self.false_scores)


async def rank_puzzle(puzzle: Puzzle, make_simulator: Callable[[str], Any]) -> PuzzleResult:
    """Simulate every puzzle record under the true and each false explanation; score by correlation.

    ``make_simulator(explanation)`` returns a simulator (``async simulate(tokens) -> Simulation``)."""

    async def one(text: str) -> Score:
        sim = make_simulator(text)
        sims = [await sim.simulate(r.tokens) for r in puzzle.records]
        return correlation_score("correlation", puzzle.records, sims)

    true = await one(puzzle.explanation)
    false = [await one(f) for f in puzzle.false_explanations]
    return PuzzleResult(puzzle.name, true, false)
