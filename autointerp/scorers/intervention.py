"""Output-side scorers: what the feature does to the model's output when it is steered.

Both steer the subject model with the feature's output direction at its hook (:func:`autointerp.steering.steer`:
``add`` adds alpha x the decoder row on every position; ``clamp``, for neurons, sets the neuron to alpha) on
a fixed set of neutral prompts: the first ``steer_prompts`` windows of ``steer_prompt_tokens`` tokens of
the corpus (seeded), the same for every feature.

* ``intervention`` (delphi's intervention scoring, judged): greedy continuations of ``steer_new_tokens``
  tokens with and without steering. The judge sees the explanation and both continuations of each prompt
  (order random, seeded) and names the steered one. Score = accuracy over prompts (0.5 is chance); with a
  judge that gives logprobs, ``details["metrics"]["auc"]`` is the AUC of its P(steered) per continuation.
* ``intervention_kl`` (model-internal, no judge): the next-token distributions at every prompt position,
  steered (q) vs unsteered (p). Writes ``intervention_kl`` = mean KL(q || p) in nats (a property of the
  feature and alpha, the same for every explanation) and ``intervention_logit_shift`` = the mean z-score,
  over the explanation's words (first token of each word, with and without a leading space), of the
  steering's logit shift at the prompts' last positions, standardised over the vocabulary: > 0 when
  steering promotes the words the explanation names.

alpha: a number (``--alpha 8``), or ``auto``: ``steer_multiplier`` x the feature's largest activation in the
sampled corpus (``stats.max``), so the feature is pushed to a few times its own activation scale. The alpha
used is recorded in every score's details. Unsteered continuations and logits are computed once per run.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from autointerp.errors import UserError
from autointerp.explain import escape_text
from autointerp.llm.base import ChatRequest, LLMClient, LLMError, TopLogprobsRequest
from autointerp.prompts import load_template
from autointerp.records import FeatureRecord, Score, Usage
from autointerp.scorers.base import Models, Scored
from autointerp.sources.base import FeatureSource
from autointerp.steering import require_decoder, steer

log = logging.getLogger(__name__)


def parse_alpha(text: str) -> float | None:
    """``auto`` -> None (chosen per feature); a finite number -> that number; anything else: UserError."""
    if text.strip().lower() == "auto":
        return None
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"--alpha {text!r} is not a number; give a number such as 8 or 'auto'") from None
    if not math.isfinite(v):
        raise UserError(f"--alpha {text!r} is not a finite number; give a number such as 8 or 'auto'")
    return v


@dataclass(frozen=True)
class SteerSettings:
    """How features are steered for the output-side scorers."""

    alpha: str = "auto"
    """Steering strength: a number, or auto (steer_multiplier x the feature's largest activation)."""
    steer_multiplier: float = 4.0
    """auto alpha: this many times the feature's largest sampled activation."""
    mode: str = "add"
    """add (alpha x decoder direction added at the hook) or clamp (neurons: set the activation to alpha)."""
    n_prompts: int = 8
    """Neutral corpus prompts steered per feature."""
    prompt_tokens: int = 12
    """Tokens per neutral prompt (BOS included)."""
    new_tokens: int = 12
    """Greedy continuation length, in tokens."""
    corpus: str = "wiki"
    """Corpus the neutral prompts come from."""
    seed: int = 1
    """Seed of the prompts' corpus order and of the A/B order shown to the judge."""


class Steering:
    """The neutral prompts of a run and the subject's unsteered outputs on them (computed once)."""

    def __init__(self, models: Models, address: str, settings: SteerSettings) -> None:
        self.settings = settings
        self.source, self.subject = models.source_and_subject(address)
        require_decoder(self.source, "steering")
        parse_alpha(settings.alpha)

    @cached_property
    def prompts(self) -> torch.Tensor:
        """[n, prompt_tokens] token ids of the neutral prompts."""
        from autointerp.corpus import load_corpus

        s = self.settings
        windows = load_corpus(s.corpus, self.subject.tokenizer, window=s.prompt_tokens, seed=s.seed, min_tail=10**9)
        rows = []
        for _, ids, length in windows:
            if length == s.prompt_tokens:
                rows.append(np.asarray(ids[: s.prompt_tokens], dtype=np.int64))
            if len(rows) == s.n_prompts:
                break
        if not rows:
            raise UserError(f"corpus {s.corpus} gave no prompt of {s.prompt_tokens} tokens; use a longer corpus")
        return torch.as_tensor(np.stack(rows))

    def alpha(self, record: FeatureRecord) -> float:
        fixed = parse_alpha(self.settings.alpha)
        return fixed if fixed is not None else self.settings.steer_multiplier * float(record.stats.max)

    def direction(self, feature: int) -> torch.Tensor:
        return self.source.decoder_rows([feature])[0]

    def _steering(self, record: FeatureRecord) -> Any:
        return steer(
            self.subject,
            self.source.hook,
            self.direction(record.id.index),
            self.alpha(record),
            mode=self.settings.mode,
            feature=record.id.index,
        )

    @torch.inference_mode()
    def _generate(self) -> list[str]:
        model: Any = self.subject.model
        ids = self.prompts.to(self.subject.device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.settings.new_tokens,
            do_sample=False,
            pad_token_id=self.subject.tokenizer.pad_token_id or 0,
        )
        new = out[:, ids.shape[1] :]
        return [self.subject.tokenizer.decode(r, skip_special_tokens=True) for r in new]

    @cached_property
    def unsteered_continuations(self) -> list[str]:
        return self._generate()

    def steered_continuations(self, record: FeatureRecord) -> list[str]:
        with self._steering(record):
            return self._generate()

    @torch.inference_mode()
    def _logits(self) -> torch.Tensor:
        model: Any = self.subject.model
        ids = self.prompts.to(self.subject.device)
        return model(input_ids=ids, use_cache=False).logits.float()  # [n, T, vocab]

    @cached_property
    def unsteered_logits(self) -> torch.Tensor:
        return self._logits()

    def steered_logits(self, record: FeatureRecord) -> torch.Tensor:
        with self._steering(record):
            return self._logits()


class SteeringCache:
    """One :class:`Steering` per source address of a run."""

    def __init__(self, models: Models, settings: SteerSettings) -> None:
        self.models = models
        self.settings = settings
        self._by_address: dict[str, Steering] = {}

    def get(self, address: str) -> Steering:
        if address not in self._by_address:
            self._by_address[address] = Steering(self.models, address, self.settings)
        return self._by_address[address]


def word_token_ids(tokenizer: Any, text: str) -> list[int]:
    """First token id of each word of ``text`` (3+ letters), with and without a leading space; unique."""
    ids: list[int] = []
    for w in dict.fromkeys(re.findall(r"[A-Za-z]{3,}", text)):
        for form in (w, " " + w, w.lower(), " " + w.lower()):
            toks = tokenizer.encode(form, add_special_tokens=False)
            if toks:
                ids.append(int(toks[0]))
    return list(dict.fromkeys(ids))


class InterventionKLScorer:
    """Model-internal output scores: KL divergence of steering and the logit shift of the explanation's words."""

    score_names: tuple[str, ...] = ("intervention_kl", "intervention_logit_shift")

    def __init__(self, cache: SteeringCache) -> None:
        self.cache = cache
        self.judge = "subject-logits"

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        st = self.cache.get(record.id.source)
        settings = {**asdict(st.settings), "hook": str(st.source.hook)}
        alpha = st.alpha(record)
        p_logits = st.unsteered_logits
        q_logits = st.steered_logits(record)
        logp = torch.log_softmax(p_logits, dim=-1)
        logq = torch.log_softmax(q_logits, dim=-1)
        kl = float((logq.exp() * (logq - logp)).sum(-1).mean())
        details: dict[str, Any] = {"alpha": alpha, "n_prompts": int(p_logits.shape[0])}
        kl_score = Score("intervention_kl", kl, settings=settings, details=details)
        shift = (q_logits[:, -1] - p_logits[:, -1]).mean(0)  # [vocab]
        std = float(shift.std())
        words = word_token_ids(st.subject.tokenizer, text)
        if not words:
            shift_score = Score(
                "intervention_logit_shift", None, reason="the explanation has no word of 3+ letters",
                settings=settings, details=details,
            )
        elif std == 0:
            shift_score = Score(
                "intervention_logit_shift", None, reason="steering did not change the logits",
                settings=settings, details=details,
            )
        else:
            z = (shift[words] - shift.mean()) / std
            shift_score = Score(
                "intervention_logit_shift", float(z.mean()), settings=settings,
                details={**details, "n_word_tokens": len(words)},
            )
        return Scored([kl_score, shift_score])


class InterventionScorer:
    """delphi-style intervention scoring: can a judge, given the explanation, tell the steered continuation?"""

    score_names: tuple[str, ...] = ("intervention",)

    def __init__(self, client: LLMClient, cache: SteeringCache, judge_probabilities: bool = True) -> None:
        self.client = client
        self.cache = cache
        self.template = load_template("score_intervention.j2")
        self.judge = client.spec
        self.use_probs = judge_probabilities and bool(getattr(client, "supports_logprobs", False))

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        from autointerp.score import choice_probability, roc_auc

        st = self.cache.get(record.id.source)
        s = st.settings
        settings = {
            **asdict(s), "judge": self.client.spec, "prompt_hash": self.template.hash,
            "judge_probabilities": self.use_probs, "hook": str(st.source.hook),
        }
        alpha = st.alpha(record)
        plain = st.unsteered_continuations
        steered = st.steered_continuations(record)
        prompts = [st.subject.tokenizer.decode(p, skip_special_tokens=True) for p in st.prompts]
        rng = np.random.default_rng([s.seed, record.id.index])
        usage = Usage()
        correct: list[bool] = []
        labels: list[bool] = []
        probs: list[float | None] = []
        failures: list[str] = []
        n_identical = 0
        for prompt, a_plain, a_steered in zip(prompts, plain, steered, strict=True):
            if a_plain == a_steered:
                n_identical += 1  # nothing to tell apart: counted, and left out of the accuracy
                continue
            steered_first = bool(rng.integers(2))
            a, b = (a_steered, a_plain) if steered_first else (a_plain, a_steered)
            msgs = self.template.render_chat(
                {"explanation": text, "prompt": escape_text(prompt), "a": escape_text(a), "b": escape_text(b)}
            )
            try:
                resp = await self.client.chat(ChatRequest(messages=msgs, max_tokens=4))
            except LLMError as e:
                failures.append(f"request failed: {e.reason}")
                continue
            usage = usage + resp.usage
            answer = resp.text.strip().strip(".").strip().upper()[:1]
            if answer not in ("A", "B"):
                failures.append(f"unparseable answer {resp.text[:30]!r}")
                continue
            correct.append((answer == "A") == steered_first)
            labels.append(steered_first)
            p_a: float | None = None
            if self.use_probs:
                plain_text = "\n\n".join(m.content for m in msgs) + "\n\nAnswer: "
                try:
                    r = await self.client.top_logprobs(
                        TopLogprobsRequest(prompt=plain_text, positions=(len(plain_text),), top_k=20)
                    )
                    usage = usage + r.usage
                    p_a = choice_probability(r.logprobs[0].top, "A", "B")
                except LLMError as e:
                    failures.append(f"probability request failed: {e.reason}")
            probs.append(p_a)
        details: dict[str, Any] = {
            "alpha": alpha,
            "requests": usage.requests,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "n_prompts": len(prompts),
            "n_identical": n_identical,
            "n_judged": len(correct),
            "failures": failures[:5],
            "example": {"prompt": prompts[0], "unsteered": plain[0], "steered": steered[0]} if prompts else {},
        }
        if not correct:
            why = (
                "steering did not change any continuation" if n_identical == len(prompts)
                else "no judge answer could be parsed"
            )
            return Scored([Score("intervention", None, reason=why, settings=settings, details=details)], usage)
        # AUC of the judge's P("A is the steered one") against the truth (A was the steered one)
        if not self.use_probs:
            details.update(auc=None, auc_reason="the judge gave no probabilities")
        else:
            ok = [(lab, p) for lab, p in zip(labels, probs, strict=True) if p is not None]
            auc = roc_auc([lab for lab, _ in ok], [p for _, p in ok]) if ok else "no answer has a probability"
            details.update(auc=None, auc_reason=auc) if isinstance(auc, str) else details.update(auc=auc)
        return Scored([Score("intervention", float(np.mean(correct)), settings=settings, details=details)], usage)


def steer_check(source: FeatureSource) -> None:
    """Bad input before any work: a source with no decoder cannot be steered."""
    require_decoder(source, "steering (the intervention scorers)")

