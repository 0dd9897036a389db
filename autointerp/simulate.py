"""Simulators: given an explanation, predict a feature's activation on every token of a text.

The contract (like OpenAI's neuron-explainer): ``async simulate(tokens) -> Simulation`` with the expected
activation per token (on the simulator's 0..9 scale) and, where available, the distribution over values.
A simulation that cannot be made is ``Simulation(expected=None, failed=reason)``: never zeros.

* :class:`LogprobSimulator` (all-at-once, completion backends with ``top_logprobs``): the prompt lists the
  tokens, each followed by a tab and a value slot. :func:`build_all_at_once_prompt` returns the prompt
  *and* the character offset of every slot, computed while building (never found by matching output
  tokens). At each slot the backend returns the top-k next-token distribution; the expected value is
  ``sum p_d * d / sum p_d`` over the digit tokens "0".."9" (renormalised over digits).

  *Slot filling.* In the prompt every slot of the simulated text is filled with the filler ``"0"``
  (the most common true value), so the text before slot i is exactly what the model reads in a single
  forward pass: previous slots read "0". The few-shot example in the template shows real values.
  *Digit mass.* A slot where the digits hold less than ``min_digit_mass`` (default 0.05) of the
  probability is *flagged*: the model was not answering on the scale there (it often wants to continue
  an unusual token instead). Flagged slots still use their renormalised digit distribution, but when more
  than ``max_flagged_fraction`` (default 0.1) of a record's slots are flagged, or any slot has no digit
  at all among the top-k, the whole record's simulation is failed with the reason, never guessed.
  *Several records per prompt.* ``simulate_many(documents)`` lists several records one after another
  under one explanation (the template loops over ``bodies``) and asks for every slot in ONE request;
  :class:`SlottedPrompt` ``bounds`` say which slots belong to which record, so each record gets its own
  simulation and its own failure. The pipeline groups ``ExplainConfig.records_per_prompt`` records of one
  split per prompt (default 1: one record per prompt, as OpenAI's simulator).

* :class:`JsonSimulator` (chat-only APIs): asks for a JSON list of ``[token_index, value]`` pairs, one
  per token; the answer is validated strictly (length, every index once, integer values in range);
  anything else is a failed simulation with the reason. Its ``simulate_many`` sends one request per record.

* :class:`PriorSubtractedSimulator` wraps a simulator under the explanation and the same simulator under a
  neutral label, and returns the difference token by token (:func:`subtract_prior`): what the label adds to
  the simulator's prior about the text. A small simulator predicts mostly from that prior (names, numbers,
  capitals), whatever the label says; the difference is what a correlation of a *label* should measure. The
  pipeline (``ExplainConfig.subtract_prior``) stores the neutral simulation once per record and shares it
  between every explanation of the feature, with the same :func:`subtract_prior`.

* :class:`LinearCalibratedSimulator` and :class:`PercentileCalibratedSimulator` wrap a simulator and map
  its values onto the feature's activation scale, fitted on calibration (``valid``) records. A linear
  fit with slope <= 0 is refused (:class:`CalibrationError`), never applied (it would flip the sign).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from autointerp.explain import escape_token
from autointerp.llm.base import ChatRequest, LLMClient, LLMError, TokenLogprobs, TopLogprobsRequest
from autointerp.prompts import PromptTemplate, load_template
from autointerp.records import ActivationRecord, FloatArray, Simulation, Usage

log = logging.getLogger(__name__)

SIMULATOR_KINDS = ("auto", "logprob", "json")
MAX_VALUE = 9
"""Simulators use the 0..9 scale: every digit is a single token in the tokenizers we use; "10" is not."""
_BODY = "\x00BODY\x00"


@runtime_checkable
class Simulator(Protocol):
    spec: str

    @property
    def usage(self) -> Usage:
        """LLM usage spent so far."""
        ...

    async def simulate(self, tokens: Sequence[str]) -> Simulation: ...

    async def simulate_many(self, documents: Sequence[Sequence[str]]) -> list[Simulation]:
        """One simulation per document; the logprob simulator asks for them all in one prompt."""
        ...


@dataclass(frozen=True)
class SlottedPrompt:
    """A prompt and the character offsets of its value slots (one per simulated token)."""

    text: str
    slots: tuple[int, ...]
    bounds: tuple[int, ...] = ()
    """Where each document's slots start in ``slots``, plus ``len(slots)`` at the end (document d owns
    ``slots[bounds[d]:bounds[d + 1]]``); empty for a prompt built without documents."""


def _body_marker(d: int) -> str:
    return f"\x00BODY{d}\x00"


def build_records_prompt(
    template: PromptTemplate, explanation: str, documents: Sequence[Sequence[str]], filler: str = "0"
) -> SlottedPrompt:
    """Render ``template`` with one token listing per document (the template loops over ``bodies``) and return
    the text, every slot's character offset, and which slots belong to which document.

    The listing is ``<escaped token>\\t<filler>\\n`` per token; the slot of a token is the offset right
    after its tab, so ``text[:slot]`` is exactly the text the model sees before predicting the value. With
    several documents, the slots of a later one come after the earlier documents, filled with ``filler``."""
    markers = [_body_marker(d) for d in range(len(documents))]
    rendered = template.render({"explanation": explanation, "bodies": markers, "max_value": MAX_VALUE})
    parts: list[str] = []
    pos = 0
    slots: list[int] = []
    bounds = [0]
    rest = rendered
    for marker, tokens in zip(markers, documents, strict=True):
        head, sep, rest = rest.partition(marker)
        if not sep:
            raise ValueError(f"template {template.name} has no {{{{ body }}}} placeholder for every document")
        parts.append(head)
        pos += len(head)
        for tok in tokens:
            line_head = escape_token(tok) + "\t"
            pos += len(line_head)
            slots.append(pos)
            parts.append(line_head + filler + "\n")
            pos += len(filler) + 1
        bounds.append(len(slots))
    parts.append(rest)
    return SlottedPrompt(text="".join(parts), slots=tuple(slots), bounds=tuple(bounds))


def build_all_at_once_prompt(
    template: PromptTemplate, explanation: str, tokens: Sequence[str], filler: str = "0"
) -> SlottedPrompt:
    """The prompt of one document: :func:`build_records_prompt` with ``[tokens]``."""
    return build_records_prompt(template, explanation, [tokens], filler)


_DIGITS = frozenset("0123456789")


def digit_distribution(top: dict[str, float]) -> tuple[np.ndarray, float]:
    """Probabilities of the digits 0..9 among top-k token logprobs, and their total mass.

    Token texts are stripped, so " 5" counts as "5"; several texts for one digit are added up."""
    probs = np.zeros(MAX_VALUE + 1, dtype=np.float64)
    for tok, lp in top.items():
        s = tok.strip()
        if len(s) == 1 and s in _DIGITS:  # not str.isdigit: "₀" or "²" are digits to it, not to int()
            probs[int(s)] += math.exp(lp)
    return probs, float(probs.sum())


class LogprobSimulator:
    """All-at-once simulation from next-token distributions at each value slot."""

    def __init__(
        self,
        client: LLMClient,
        explanation: str,
        template: str = "simulate_all_at_once.j2",
        top_k: int = 20,
        min_digit_mass: float = 0.05,
        filler: str = "0",
        max_flagged_fraction: float = 0.1,
    ) -> None:
        self.client = client
        self.explanation = explanation
        self.template = load_template(template)
        self.top_k = top_k
        self.min_digit_mass = min_digit_mass
        self.filler = filler
        self.max_flagged_fraction = max_flagged_fraction
        self.usage = Usage()
        self.spec = f"logprob[{client.spec}]"

    async def simulate(self, tokens: Sequence[str]) -> Simulation:
        return (await self.simulate_many([tokens]))[0]

    async def simulate_many(self, documents: Sequence[Sequence[str]]) -> list[Simulation]:
        """Simulate several documents with ONE request: the prompt lists them one after another under the
        explanation (:func:`build_records_prompt`), and each document's slots give its own simulation
        (failed with the reason, per document, by the digit-mass rules; all failed when the request
        fails)."""
        out: list[Simulation | None] = [
            None if toks else Simulation(expected=None, failed="no tokens to simulate") for toks in documents
        ]
        todo = [d for d, toks in enumerate(documents) if toks]
        if not todo:
            return [s for s in out if s is not None]
        prompt = build_records_prompt(self.template, self.explanation, [documents[d] for d in todo], self.filler)
        try:
            resp = await self.client.top_logprobs(
                TopLogprobsRequest(prompt=prompt.text, positions=prompt.slots, top_k=self.top_k)
            )
        except LLMError as e:
            failed = Simulation(expected=None, failed=f"simulator request failed: {e.reason}")
            return [s if s is not None else failed for s in out]
        self.usage = self.usage + resp.usage
        if len(resp.logprobs) != len(prompt.slots):
            reason = f"backend returned {len(resp.logprobs)} distributions for {len(prompt.slots)} slots"
            return [s if s is not None else Simulation(expected=None, failed=reason) for s in out]
        for k, d in enumerate(todo):
            lo, hi = prompt.bounds[k], prompt.bounds[k + 1]
            out[d] = self._from_slots(resp.logprobs[lo:hi])
        return [s for s in out if s is not None]

    def _from_slots(self, logprobs: Sequence[TokenLogprobs]) -> Simulation:
        """One document's simulation from the distributions at its slots."""
        n = len(logprobs)
        dist = np.zeros((n, MAX_VALUE + 1), dtype=np.float64)
        mass = np.zeros(n, dtype=np.float64)
        for i, tl in enumerate(logprobs):
            dist[i], mass[i] = digit_distribution(tl.top)
        none = int((mass <= 0).sum())
        if none:
            return Simulation(expected=None, failed=f"no digit among the top-{self.top_k} at {none} of {n} slots")
        low = int((mass < self.min_digit_mass).sum())
        if low > self.max_flagged_fraction * n:
            return Simulation(
                expected=None, failed=f"digit probability below {self.min_digit_mass} at {low} of {n} slots"
            )
        if low:
            log.debug("%d of %d slots with digit probability below %s", low, n, self.min_digit_mass)
        dist /= mass[:, None]
        expected = dist @ np.arange(MAX_VALUE + 1, dtype=np.float64)
        return Simulation(expected=expected.astype(np.float32), distribution=dist.astype(np.float32))


_JSON_ARRAY = re.compile(r"\[.*\]", re.DOTALL)


def parse_json_simulation(text: str, n_tokens: int, max_value: int = MAX_VALUE) -> FloatArray | str:
    """Validate a JSON answer: a list of ``[index, value]`` pairs covering each index once.

    Accepts the list alone or as ``{"activations": [...]}``, optionally inside a code fence. Returns the
    values, or a string saying why the answer is invalid."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`")
        body = body[4:] if body.startswith("json") else body
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        m = _JSON_ARRAY.search(body)
        if not m:
            return "answer holds no JSON list"
        try:
            data = json.loads(m.group())
        except json.JSONDecodeError as e:
            return f"invalid JSON: {e.msg}"
    if isinstance(data, dict):
        data = data.get("activations")
    if not isinstance(data, list):
        return "JSON is not a list of [index, value] pairs"
    if len(data) != n_tokens:
        return f"{len(data)} pairs for {n_tokens} tokens"
    out = np.full(n_tokens, -1.0, dtype=np.float32)
    seen = np.zeros(n_tokens, dtype=bool)
    for pair in data:
        if not (isinstance(pair, list) and len(pair) == 2):
            return f"not an [index, value] pair: {str(pair)[:40]}"
        idx, val = pair
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n_tokens:
            return f"bad token index {idx!r}"
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= max_value:
            return f"bad value {val!r} (must be a number in 0..{max_value})"
        if seen[idx]:
            return f"token index {idx} given twice"
        seen[idx] = True
        out[idx] = float(val)
    return out


class JsonSimulator:
    """Chat simulation: the LLM writes a JSON list of [token_index, value]; validated strictly."""

    def __init__(
        self, client: LLMClient, explanation: str, template: str = "simulate_json.j2", max_tokens: int = 1024
    ) -> None:
        self.client = client
        self.explanation = explanation
        self.template = load_template(template)
        self.max_tokens = max_tokens
        self.usage = Usage()
        self.spec = f"json[{client.spec}]"

    def build_request(self, tokens: Sequence[str]) -> ChatRequest:
        listing = "\n".join(f"{i}\t{escape_token(t)}" for i, t in enumerate(tokens))
        messages = self.template.render_chat(
            {"explanation": self.explanation, "tokens": listing, "n_tokens": len(tokens), "max_value": MAX_VALUE}
        )
        return ChatRequest(messages=messages, max_tokens=self.max_tokens, temperature=0.0, json_mode=True)

    async def simulate(self, tokens: Sequence[str]) -> Simulation:
        if not tokens:
            return Simulation(expected=None, failed="no tokens to simulate")
        try:
            resp = await self.client.chat(self.build_request(tokens))
        except LLMError as e:
            return Simulation(expected=None, failed=f"simulator request failed: {e.reason}")
        self.usage = self.usage + resp.usage
        parsed = parse_json_simulation(resp.text, len(tokens))
        if isinstance(parsed, str):
            return Simulation(expected=None, failed=f"unparseable simulator answer: {parsed}")
        return Simulation(expected=parsed)

    async def simulate_many(self, documents: Sequence[Sequence[str]]) -> list[Simulation]:
        """One request per document: the JSON prompt holds one document (a list of several documents' token
        indices is more than the chat models we tried answer reliably)."""
        return list(await asyncio.gather(*(self.simulate(toks) for toks in documents)))


def make_simulator(kind: str, client: LLMClient, explanation: str) -> Simulator:
    """``logprob``, ``json``, or ``auto`` (logprob when the backend serves top logprobs, else json)."""
    if kind not in SIMULATOR_KINDS:
        raise ValueError(f"unknown simulator kind {kind!r}; use one of {SIMULATOR_KINDS}")
    if kind == "logprob" or (kind == "auto" and client.supports_logprobs):
        return LogprobSimulator(client, explanation)
    return JsonSimulator(client, explanation)


# -- prior subtraction ------------------------------------------------------------------------------

NEUTRAL_LABEL = "unknown"
"""The default neutral label of prior-subtracted simulations: says nothing about the feature, so the simulator
falls back on its prior about the text."""


def subtract_prior(under_label: Simulation, neutral: Simulation) -> Simulation:
    """The simulation under a label minus the simulation of the same tokens under a neutral label, token by
    token (no distribution: a difference of expected values is not one). Failed when either side failed (with
    that side's reason) or their lengths differ; never a guess."""
    if under_label.expected is None:
        return under_label
    if neutral.expected is None:
        return Simulation(expected=None, failed=f"neutral-label simulation failed: {neutral.failed}")
    if len(under_label.expected) != len(neutral.expected):
        return Simulation(
            expected=None,
            failed=f"neutral-label simulation has {len(neutral.expected)} values for {len(under_label.expected)}",
        )
    diff = np.asarray(under_label.expected, dtype=np.float32) - np.asarray(neutral.expected, dtype=np.float32)
    return Simulation(expected=diff)


class PriorSubtractedSimulator:
    """Wraps a simulator under the explanation and one under a neutral label (the same kind and client);
    simulates with both and returns :func:`subtract_prior` of each document. Itself a simulator."""

    def __init__(self, inner: Simulator, neutral: Simulator) -> None:
        self.inner = inner
        self.neutral = neutral
        self.spec = f"prior-subtracted[{inner.spec}]"

    @property
    def usage(self) -> Usage:
        return self.inner.usage + self.neutral.usage

    async def simulate(self, tokens: Sequence[str]) -> Simulation:
        return (await self.simulate_many([tokens]))[0]

    async def simulate_many(self, documents: Sequence[Sequence[str]]) -> list[Simulation]:
        labelled, neutral = await asyncio.gather(
            self.inner.simulate_many(documents), self.neutral.simulate_many(documents)
        )
        return [subtract_prior(a, b) for a, b in zip(labelled, neutral, strict=True)]


# -- calibration -------------------------------------------------------------------------------------


class CalibrationError(Exception):
    """Calibration could not be fitted (or would flip the sign); it is refused, not applied."""


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.slope * x + self.intercept


def fit_linear(true: Sequence[np.ndarray], simulated: Sequence[np.ndarray]) -> LinearFit:
    """Least-squares ``true ~ slope * simulated + intercept`` over all tokens; slope must be > 0."""
    if not true:
        raise CalibrationError("no calibration records")
    x = np.concatenate([np.asarray(s, dtype=np.float64) for s in simulated])
    y = np.concatenate([np.asarray(t, dtype=np.float64) for t in true])
    if len(x) != len(y) or len(x) < 2:
        raise CalibrationError("too few calibration tokens")
    if np.ptp(x) == 0:
        raise CalibrationError("simulated values on the calibration records are constant")
    slope, intercept = np.polyfit(x, y, 1)
    if not slope > 0:
        raise CalibrationError(f"calibration slope is {slope:.3g} (<= 0): the simulation anti-correlates; refused")
    return LinearFit(float(slope), float(intercept))


def _ok_pairs(
    records: Sequence[ActivationRecord], sims: Sequence[Simulation]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    t, s = [], []
    for r, sim in zip(records, sims, strict=True):
        if sim.expected is not None:
            t.append(r.activations)
            s.append(sim.expected)
    return t, s


class _CalibratedSimulator:
    """Wraps a simulator and maps its values onto the activation scale with a fit made on calibration
    records; itself a simulator. Subclasses say how to fit (``_fit_fn``) and name themselves (``_kind``)."""

    _kind = "calibrated"

    def __init__(self, inner: Simulator) -> None:
        self.inner = inner
        self.fit: LinearFit | PercentileFit | None = None
        self.spec = f"{self._kind}[{inner.spec}]"

    @property
    def usage(self) -> Usage:
        return self.inner.usage

    def _fit_fn(self, true: list[np.ndarray], simulated: list[np.ndarray]) -> LinearFit | PercentileFit:
        raise NotImplementedError

    async def _calibrate(self, records: Sequence[ActivationRecord]) -> LinearFit | PercentileFit:
        sims = [await self.inner.simulate(r.tokens) for r in records]
        self.fit = self._fit_fn(*_ok_pairs(records, sims))
        return self.fit

    async def simulate(self, tokens: Sequence[str]) -> Simulation:
        return (await self.simulate_many([tokens]))[0]

    async def simulate_many(self, documents: Sequence[Sequence[str]]) -> list[Simulation]:
        if self.fit is None:
            raise CalibrationError("call calibrate() before simulate()")
        fit = self.fit
        return [
            sim if sim.expected is None
            else Simulation(expected=fit.apply(sim.expected).astype(np.float32), distribution=sim.distribution)
            for sim in await self.inner.simulate_many(documents)
        ]


class LinearCalibratedSimulator(_CalibratedSimulator):
    """Wraps a simulator; maps its values linearly onto the activation scale (fit by least squares)."""

    _kind = "linear-calibrated"

    def _fit_fn(self, true: list[np.ndarray], simulated: list[np.ndarray]) -> LinearFit:
        return fit_linear(true, simulated)

    async def calibrate(self, records: Sequence[ActivationRecord]) -> LinearFit:
        fit = await self._calibrate(records)
        assert isinstance(fit, LinearFit)
        return fit


@dataclass(frozen=True)
class PercentileFit:
    simulated: np.ndarray
    """Sorted simulated values on the calibration tokens."""
    true: np.ndarray
    """Sorted true activations on the calibration tokens."""

    def apply(self, x: np.ndarray) -> np.ndarray:
        n = len(self.simulated)
        lo = np.searchsorted(self.simulated, x, side="left")
        hi = np.searchsorted(self.simulated, x, side="right")
        q = np.clip(((lo + hi) / 2.0) / n, 0.0, 1.0)
        return np.asarray(np.quantile(self.true, q))


def fit_percentile(true: Sequence[np.ndarray], simulated: Sequence[np.ndarray]) -> PercentileFit:
    if not true:
        raise CalibrationError("no calibration records")
    x = np.sort(np.concatenate([np.asarray(s, dtype=np.float64) for s in simulated]))
    y = np.sort(np.concatenate([np.asarray(t, dtype=np.float64) for t in true]))
    if len(x) < 2:
        raise CalibrationError("too few calibration tokens")
    return PercentileFit(x, y)


class PercentileCalibratedSimulator(_CalibratedSimulator):
    """Wraps a simulator; maps each simulated value's quantile (among calibration simulations) to the
    same quantile of the true calibration activations. Monotone, so it never flips a correlation."""

    _kind = "percentile-calibrated"

    def _fit_fn(self, true: list[np.ndarray], simulated: list[np.ndarray]) -> PercentileFit:
        return fit_percentile(true, simulated)

    async def calibrate(self, records: Sequence[ActivationRecord]) -> PercentileFit:
        fit = await self._calibrate(records)
        assert isinstance(fit, PercentileFit)
        return fit
