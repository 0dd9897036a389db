"""Explainers: show an LLM a feature's top (and quantile) examples, get a short natural-language label.

Two formats (prompt templates under ``prompts/``, few-shot examples inside the templates):

* ``token_activation_pair`` (OpenAI style): each example as lines ``token<TAB>value``, values normalised
  to 0..10 (or 0..9) by the maximum over the shown examples.
* ``highlighted`` (delphi style): the example text with active tokens marked ``<<token>>``; contiguous
  active tokens are merged into one span.
* ``contrastive``: the highlighted examples beside hard negatives, counterexamples where the feature does not
  fire that look like the activating ones (:func:`autointerp.negatives.hard_negatives` on the record's
  ``train_random`` split: train-side windows, never a held-out test window).
* ``evidence``: the feature's evidence (:mod:`autointerp.evidence`: its marked tokens by share of the activation,
  with their consistent preceding token) and snippets of its examples cut to the marked tokens; the LLM names
  what the tokens share, and the label keeps the evidence: ``<its phrase>, e.g. "was", "are", "been"``. A
  label that names the tokens is what the simulator reads (shared FACTS, 2026-12-07).
* ``tokens``: no LLM at all: ``the tokens "was", "are" (after "it"), ...``, the five marked tokens with the
  largest summed activation (:func:`autointerp.evidence.token_label`). Cheap enough for every latent of a
  131k SAE; also every run's yardstick, the no-LLM bar a label must beat.

Token text is escaped for display (newline -> ``\\n``, tab -> ``\\t``, other control characters as
``\\xNN``, trailing spaces as ``␣``, special tokens such as ``<bos>`` as ``\\<bos\\>``, a literal
``<<``/``>>`` as ``\\<\\<``/``\\>\\>``). A label that copies a few-shot answer of the prompt is failed.
The answer's parsing never looks at token text. An empty or unusable answer raises
:class:`ExplanationFailed` with the reason (it is recorded failed, never scored as a label).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autointerp.evidence import Evidence, compute_evidence, quoted, token_label
from autointerp.llm.base import ChatRequest, LLMClient, LLMError
from autointerp.prompts import load_template
from autointerp.records import ActivationRecord, Explanation, FeatureRecord, Usage

log = logging.getLogger(__name__)

EXPLAINER_KINDS = ("token_activation_pair", "highlighted", "contrastive", "evidence", "tokens")
_TEMPLATES = {
    "token_activation_pair": "explain_token_activation_pair.j2",
    "highlighted": "explain_highlighted.j2",
    "contrastive": "explain_contrastive.j2",
    "evidence": "explain_evidence.j2",
}
"""The prompt template of each LLM explainer kind (``tokens`` sends none)."""
LABEL_TOKENS = 5
"""Tokens named by the ``tokens`` label and quoted in an ``evidence`` label."""
EVIDENCE_CONTEXT = 3
"""``evidence`` snippets: tokens of context on each side of the marked ones."""
TOKENS_RULE = "tokens-v1: the 5 marked tokens with the largest summed activation, with a consistent preceding token"
"""What stands for the prompt of the ``tokens`` kind in its hash (it has no template)."""
CONTRASTIVE_POOL = 20
"""train_random windows per feature that ``autointerp explain --explainer-kind contrastive`` samples: the pool
its hard negatives are ranked in."""
_SPECIAL = re.compile(r"^<[|/]?[A-Za-z_][\w|.-]*\|?>$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class ExplanationFailed(Exception):
    """The explainer's answer could not be turned into a label."""

    def __init__(self, reason: str, raw: str = "", usage: Usage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.usage = usage or Usage()


def escape_token(token: str) -> str:
    """Display form of one token's text (never used to parse anything)."""
    if _SPECIAL.match(token):
        return token.replace("<", "\\<").replace(">", "\\>")
    out = token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    out = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", out)
    # Trailing spaces (and space-only tokens) become visible "␣": they would merge with the tab after them.
    body = out.rstrip(" ")
    return body + "␣" * (len(out) - len(body))


def escape_text(token: str) -> str:
    """Escape a token for the highlighted format: also neutralise literal ``<<`` and ``>>``."""
    out = escape_token(token)
    return out.replace("<<", "\\<\\<").replace(">>", "\\>\\>")


def normalise(activations: Sequence[np.ndarray], max_value: int) -> list[np.ndarray]:
    """Integers 0..max_value, scaled by the maximum over all given examples (negatives -> 0)."""
    top = max((float(a.max()) for a in activations if len(a)), default=0.0)
    if top <= 0:
        return [np.zeros(len(a), dtype=np.int64) for a in activations]
    return [np.clip(np.rint(np.maximum(a, 0) / top * max_value), 0, max_value).astype(np.int64) for a in activations]


def format_token_activation_pairs(records: Sequence[ActivationRecord], max_value: int = 10) -> str:
    """OpenAI-style listing: ``<start>``, one ``token<TAB>value`` line per token, ``<end>``."""
    values = normalise([r.activations for r in records], max_value)
    blocks = []
    for rec, vals in zip(records, values, strict=True):
        lines = [f"{escape_token(t)}\t{int(v)}" for t, v in zip(rec.tokens, vals, strict=True)]
        blocks.append("<start>\n" + "\n".join(lines) + "\n<end>")
    return "\n\n".join(blocks)


def format_highlighted(records: Sequence[ActivationRecord], threshold: float = 0.0) -> str:
    """delphi-style: the text with active tokens wrapped in ``<<`` ``>>``, runs of active tokens merged.

    A token is active when its activation is > ``threshold`` x the maximum over the shown examples."""
    top = max((r.max_activation for r in records), default=0.0)
    cut = threshold * top if top > 0 else 0.0
    out = []
    for i, rec in enumerate(records, 1):
        out.append(f"Example {i}: " + highlight_tokens(rec.tokens, rec.activations > cut))
    return "\n".join(out)


def highlight_tokens(tokens: Sequence[str], mask: np.ndarray) -> str:
    """The escaped text of ``tokens`` with each run of tokens where ``mask`` is true wrapped in << >>."""
    active = np.asarray(mask, dtype=bool)
    # Open a span where a run of active tokens starts, close it where the run ends.
    prev = np.concatenate([[False], active[:-1]])
    nxt = np.concatenate([active[1:], [False]])
    opens = active & ~prev
    closes = active & ~nxt
    return "".join(
        ("<<" if o else "") + escape_text(t) + (">>" if c else "")
        for t, o, c in zip(tokens, opens.tolist(), closes.tolist(), strict=True)
    )


_PREFIX = re.compile(r"^[\s*_]*(?:final\s+)?(?:explanation|label|answer)[\s*_]*[:\-][\s*_]*", re.IGNORECASE)
_WRAPPERS = "\"'`*_"


def _unwrap(label: str) -> str:
    """Strip wrapping quotes, backticks and emphasis from both ends, keeping balanced inner quotes: a character
    goes when it closes a pair with the other end, or when it is unbalanced (an odd count in the label), so
    ``words that start with "when"`` keeps its quotes and ``"cities"`` loses them."""
    label = label.strip()
    while len(label) >= 1:
        first, last = label[0], label[-1]
        if len(label) >= 2 and first == last and first in _WRAPPERS:
            label = label[1:-1].strip()
        elif first in _WRAPPERS and label.count(first) % 2 == 1:
            label = label[1:].strip()
        elif last in _WRAPPERS and label.count(last) % 2 == 1:
            label = label[:-1].strip()
        else:
            break
    return label
_COT_MARKER = re.compile(r"(?:final\s+)?(?:explanation|label|answer)\s*:", re.IGNORECASE)


def parse_explanation(raw: str, cot: bool = False, max_chars: int = 300) -> str:
    """Turn the LLM's answer into a label; raise :class:`ExplanationFailed` when it is unusable.

    With chain-of-thought the label is the text after the last ``Explanation:`` marker. Otherwise the
    first non-empty line is taken. Prefixes (``Explanation:``), wrapping quotes/backticks/asterisks and
    a trailing period are stripped; balanced quotes inside the label are kept."""
    text = raw.strip()
    if cot:
        marks = list(_COT_MARKER.finditer(text))
        if not marks:
            raise ExplanationFailed("chain-of-thought answer has no 'Explanation:' line", raw)
        text = text[marks[-1].end() :]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ExplanationFailed("empty answer", raw)
    label = lines[0]
    for _ in range(3):
        label = _PREFIX.sub("", label).strip()
        label = _unwrap(label)
    label = _unwrap(label.rstrip(".").strip())
    if not label:
        raise ExplanationFailed("answer holds no label", raw)
    if not re.search(r"[A-Za-z0-9]", label):
        raise ExplanationFailed(f"answer has no words: {label[:40]!r}", raw)
    if len(label) > max_chars:
        raise ExplanationFailed(f"label longer than {max_chars} characters (the model did not answer briefly)", raw)
    return label


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def copies_example(label: str, example_answer: str, min_overlap: float = 0.5) -> bool:
    """True when ``label`` (of 2+ words) shares at least half of its words with a few-shot answer of the
    prompt (Jaccard >= 0.5): small explainers copy the prompt's example labels instead of describing the
    feature. (A genuine feature that matches a few-shot example is rejected too: the price of the guard.)"""
    a = _words(label)
    b = _words(parse_explanation(example_answer)) if example_answer.strip() else set()
    if len(a) < 2 or not b:
        return False
    return len(a & b) / len(a | b) >= min_overlap


@dataclass(frozen=True)
class ExplainerSettings:
    """How an explainer builds its prompt."""

    kind: str = "token_activation_pair"
    """Prompt format: token_activation_pair (OpenAI style), highlighted (delphi style) or contrastive
    (highlighted examples beside hard negatives)."""
    n_top: int = 10
    """Top-activating train examples shown to the explainer."""
    n_quantile: int = 0
    """Quantile (non-top) train examples shown in addition to the top ones."""
    cot: bool = False
    """Ask for step-by-step reasoning before the label (needs more output tokens)."""
    max_value: int = 10
    """Top of the activation scale shown in token_activation_pair prompts (10, or 9 for 0-9)."""
    max_tokens: int = 60
    """Maximum answer length in tokens (raised to 512 with chain-of-thought)."""
    highlight_threshold: float = 0.0
    """highlighted format: a token is marked when its activation > this fraction of the maximum."""
    show_vocab: bool = False
    """Also show the feature's vocabulary projection (the tokens its output direction promotes and
    suppresses, ``FeatureRecord.vocab_projection``) after the examples (``prompts/explain_vocab.j2``)."""
    n_negatives: int = 5
    """contrastive format: hard negatives shown (the non-firing train_random windows that share the most
    top-activating tokens with the feature's train examples)."""
    token_stats: int = 0
    """Also show the this many tokens most often marked in the shown examples (with counts) and the this many
    with the largest summed activation over them (``prompts/explain_token_stats.j2``); 0: no."""
    trim: int = 0
    """Show each example as its marked tokens with this many tokens of context on each side ("..." where cut);
    0: the whole window."""


def explainer_negatives(record: FeatureRecord, settings: ExplainerSettings) -> list[ActivationRecord]:
    """The counterexamples an explainer with ``settings`` shows for ``record``: for ``contrastive``, the
    ``n_negatives`` hard negatives of the train-side ``train_random`` split (never a test split) among its
    windows where no token would be highlighted (max activation <= ``highlight_threshold`` x the shown
    examples' maximum: for dense features such as MLP neurons, "not active" is relative); none for the other
    formats."""
    if settings.kind != "contrastive":
        return []
    from autointerp.negatives import hard_negatives

    examples = select_train_examples(record, settings.n_top, settings.n_quantile)
    top = max((r.max_activation for r in examples), default=0.0)
    cut = settings.highlight_threshold * top if top > 0 else 0.0
    return hard_negatives(record, settings.n_negatives, pool="train_random", below=cut)


def token_stats(records: Sequence[ActivationRecord], threshold: float, n: int) -> tuple[str, str]:
    """(most often marked tokens with counts, tokens by summed activation scaled to 10), ``n`` of each, over
    the shown examples ``records``; a token is marked as by :func:`format_highlighted`, and tokens count by
    their stripped, escaped text."""
    top = max((r.max_activation for r in records), default=0.0)
    cut = threshold * top if top > 0 else 0.0
    marked: dict[str, int] = {}
    weight: dict[str, float] = {}
    for r in records:
        for tok, a in zip(r.tokens, np.asarray(r.activations, dtype=np.float64).tolist(), strict=True):
            key = escape_text(tok.strip()) or escape_text(tok)
            if a > cut:
                marked[key] = marked.get(key, 0) + 1
            if a > 0:
                weight[key] = weight.get(key, 0.0) + a
    frequent = sorted(marked.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    heavy = sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    scale = 10.0 / heavy[0][1] if heavy else 0.0
    return (", ".join(f'"{t}" ({c})' for t, c in frequent) or "none",
            ", ".join(f'"{t}" {w * scale:.1f}' for t, w in heavy) or "none")


def trim_examples(records: Sequence[ActivationRecord], threshold: float, context: int) -> list[ActivationRecord]:
    """Each record cut to its marked tokens (as :func:`format_highlighted` marks them) with ``context`` tokens
    on each side, "..." standing for a cut part (activation 0); a record with no marked token is unchanged."""
    top = max((r.max_activation for r in records), default=0.0)
    cut = threshold * top if top > 0 else 0.0
    out = []
    for r in records:
        active = np.flatnonzero(np.asarray(r.activations) > cut)
        if len(active) == 0:
            out.append(r)
            continue
        lo, hi = max(0, int(active[0]) - context), min(len(r.tokens), int(active[-1]) + 1 + context)
        head, tail = (["..."] if lo > 0 else []), (["..."] if hi < len(r.tokens) else [])
        acts = np.asarray(r.activations[lo:hi], dtype=np.float32)
        out.append(ActivationRecord(
            tokens=head + list(r.tokens[lo:hi]) + tail,
            token_ids=[-1] * len(head) + list(r.token_ids[lo:hi]) + [-1] * len(tail),
            activations=np.concatenate([np.zeros(len(head)), acts, np.zeros(len(tail))]).astype(np.float32),
            window=r.window,
        ))
    return out


def select_train_examples(record: FeatureRecord, n_top: int, n_quantile: int) -> list[ActivationRecord]:
    """The first ``n_top`` train examples by max activation, then ``n_quantile`` others spread evenly."""
    ordered = sorted(record.train, key=lambda r: r.max_activation, reverse=True)
    top = ordered[:n_top]
    rest = ordered[n_top:]
    if n_quantile > 0 and rest:
        idx = np.unique(np.linspace(0, len(rest) - 1, num=min(n_quantile, len(rest))).round().astype(int))
        top = top + [rest[i] for i in idx]
    return top


def explainer_prompt_hash(settings: ExplainerSettings) -> str:
    """Hash of the prompt template(s) an explainer with ``settings`` renders (stored with each label)."""
    from autointerp.rundir import short_hash

    if settings.kind == "tokens":
        return short_hash(TOKENS_RULE)
    template = load_template(_TEMPLATES[settings.kind])
    extra = explainer_extra_templates(settings)
    if not extra:
        return template.hash
    return short_hash(template.text + "".join(load_template(name).text for name in extra))


def short_hash_of(template: str, base_hash: str) -> str:
    """The prompt hash of a label made by ``template`` on top of a label of prompt hash ``base_hash``."""
    from autointerp.rundir import short_hash

    return short_hash(base_hash + load_template(template).text)


def explainer_templates(settings: ExplainerSettings) -> list[str]:
    """Every template an explainer with ``settings`` renders (for the manifest's prompt hashes)."""
    own = [_TEMPLATES[settings.kind]] if settings.kind in _TEMPLATES else []
    return own + explainer_extra_templates(settings)


def shown_evidence(record: FeatureRecord, settings: ExplainerSettings) -> tuple[list[ActivationRecord], Evidence]:
    """The train examples an explainer with ``settings`` shows for ``record`` and their evidence (the one
    computation every kind and the token-list yardstick share)."""
    examples = select_train_examples(record, settings.n_top, settings.n_quantile)
    return examples, compute_evidence(examples, settings.highlight_threshold)


def evidence_listing(evidence: Evidence, n: int = 8) -> str:
    """``"was" 38%, "York" (after "New") 21%, ...``: the ``n`` heaviest tokens with their share."""
    return ", ".join(f"{quoted(t)} {round(100 * t.share)}%" for t in evidence.top(n)) or "none"


BARE_CLASSES = frozenset(
    "noun nouns verb verbs adjective adjectives adverb adverbs pronoun pronouns preposition prepositions conjunction "
    "conjunctions word words token tokens phrase phrases punctuation "
    "and or of".split()
)
"""Words that alone make an ``evidence`` phrase too broad to predict anything ("nouns", "nouns and adjectives"):
a phrase made only of them is refused, and the token list stands without it."""


def check_evidence_phrase(phrase: str) -> None:
    """Raise :class:`ExplanationFailed` when ``phrase`` names only bare word classes (see :data:`BARE_CLASSES`)."""
    words = re.findall(r"[a-z]+", phrase.lower())
    if words and all(w in BARE_CLASSES for w in words):
        raise ExplanationFailed(f"the phrase names only a bare word class, too broad to predict anything: {phrase!r}")


def evidence_label(phrase: str, evidence: Evidence) -> str:
    """An ``evidence`` label: the LLM's phrase, then the tokens it stands for (``phrase, e.g. "a", "b"``)."""
    return f"{phrase}, e.g. " + ", ".join(f'"{t.token}"' for t in evidence.top(LABEL_TOKENS))


def explainer_extra_templates(settings: ExplainerSettings) -> list[str]:
    """The templates an explainer with ``settings`` appends to its examples (vocabulary, token statistics); none for
    ``evidence`` (its own statistics are its prompt) and ``tokens`` (no prompt)."""
    if settings.kind in ("evidence", "tokens"):
        return []
    return (["explain_vocab.j2"] if settings.show_vocab else []) + (
        ["explain_token_stats.j2"] if settings.token_stats > 0 else []
    )


def build_explainer_request(
    settings: ExplainerSettings,
    examples: Sequence[ActivationRecord],
    vocab: dict[str, Any] | None = None,
    negatives: Sequence[ActivationRecord] = (),
) -> ChatRequest:
    """The explainer's request for ``examples`` (the counterexamples ``negatives`` for ``contrastive``, and the
    vocabulary projection when ``show_vocab``): what :meth:`Explainer.explain` sends, and what the report
    shows as a label's exact prompt (see :func:`explainer_request_for`)."""
    s = settings
    if s.kind == "evidence":
        snippets = format_highlighted(trim_examples(examples, s.highlight_threshold, s.trim or EVIDENCE_CONTEXT),
                                      s.highlight_threshold)
        evidence = compute_evidence(examples, s.highlight_threshold)
        messages = load_template(_TEMPLATES[s.kind]).render_chat(
            {"tokens": evidence_listing(evidence), "snippets": snippets}
        )
        return ChatRequest(messages=messages, max_tokens=s.max_tokens)
    listed = trim_examples(examples, s.highlight_threshold, s.trim) if s.trim > 0 else examples
    if s.kind == "token_activation_pair":
        body = format_token_activation_pairs(listed, s.max_value)
    else:
        body = format_highlighted(listed, s.highlight_threshold)
    if s.token_stats > 0:
        frequent, weighted = token_stats(examples, s.highlight_threshold, s.token_stats)
        body += load_template("explain_token_stats.j2").render({"frequent": frequent, "weighted": weighted})
    shown_negatives = "\n".join(
        f"Counterexample {i}: " + "".join(escape_text(t) for t in r.tokens) for i, r in enumerate(negatives, 1)
    )
    if s.show_vocab and vocab:
        shown = {k: ", ".join(repr(escape_token(t)) for t, _ in vocab.get(k, [])) for k in ("top", "bottom")}
        vocab_text = load_template("explain_vocab.j2").render(shown)
        if s.kind == "contrastive":
            shown_negatives += vocab_text
        else:
            body += vocab_text
    messages = load_template(_TEMPLATES[s.kind]).render_chat(
        {"examples": body, "negatives": shown_negatives, "cot": s.cot, "max_value": s.max_value}
    )
    return ChatRequest(messages=messages, max_tokens=512 if s.cot else s.max_tokens)


def explainer_request_for(settings: ExplainerSettings, record: FeatureRecord) -> ChatRequest:
    """The explainer's request for ``record``: its selected train examples, its train-side counterexamples
    (contrastive) and its vocabulary projection, as :meth:`Explainer.explain` sends it."""
    examples = select_train_examples(record, settings.n_top, settings.n_quantile)
    return build_explainer_request(settings, examples, record.vocab_projection, explainer_negatives(record, settings))


REFINE_TEMPLATE = "explain_refine.j2"
REFINE_RECORDS = 2
"""Selection-split records a refinement shows: those the label predicted worst."""


def misses(record: ActivationRecord, expected: np.ndarray, threshold: float) -> tuple[float, list[str], list[str]]:
    """How badly ``expected`` (a simulation, 0..10 scale) predicts ``record``: (error, missed tokens, false
    alarms). Both sides are scaled to 0..1 (the record by its own maximum); the error is their summed absolute
    difference; a token is missed where the feature fires (above ``threshold`` x the maximum) and the simulation
    is below 0.3, a false alarm where the simulation is at least 0.5 and the feature does not fire."""
    acts = np.maximum(np.asarray(record.activations, dtype=np.float64), 0.0)
    top = float(acts.max()) if len(acts) else 0.0
    true = acts / top if top > 0 else np.zeros_like(acts)
    sim = np.clip(np.asarray(expected, dtype=np.float64) / 10.0, 0.0, 1.0)
    fires = true > max(threshold, 1e-9)
    missed = [escape_text(record.tokens[i]) for i in np.flatnonzero(fires & (sim < 0.3))]
    alarms = [escape_text(record.tokens[i]) for i in np.flatnonzero(~fires & (sim >= 0.5))]
    return float(np.abs(true - sim).sum()), missed, alarms


def build_refine_request(label: str, worst: Sequence[tuple[ActivationRecord, np.ndarray]], threshold: float,
                         max_tokens: int = 60) -> ChatRequest:
    """The refinement request: the label, then each record it predicted worst, highlighted by its true
    activations, with the tokens the simulation missed and those it predicted wrongly."""
    parts = []
    for i, (rec, expected) in enumerate(worst, 1):
        _, missed, alarms = misses(rec, expected, threshold)
        mark = rec.activations > threshold * rec.max_activation if rec.max_activation > 0 else rec.activations > 0
        parts.append(
            f"Example {i}: {highlight_tokens(rec.tokens, mark)}\n"
            f"  missed: {', '.join(missed) or 'none'}\n  predicted wrongly: {', '.join(alarms) or 'none'}"
        )
    messages = load_template(REFINE_TEMPLATE).render_chat({"explanation": label, "examples": "\n\n".join(parts)})
    return ChatRequest(messages=messages, max_tokens=max_tokens)


class Explainer:
    """An LLM explainer with one prompt format."""

    def __init__(self, client: LLMClient, settings: ExplainerSettings | None = None) -> None:
        self.client = client
        self.settings = settings or ExplainerSettings()
        if self.settings.kind not in EXPLAINER_KINDS:
            raise ValueError(f"unknown explainer kind {self.settings.kind!r}; use one of {EXPLAINER_KINDS}")

    @property
    def spec(self) -> str:
        s = self.settings
        if s.kind == "tokens":
            return "tokens[no llm]"
        extra = (",cot" if s.cot else "") + (",vocab" if s.show_vocab else "")
        return f"{s.kind}[{self.client.spec}]{extra}"

    @property
    def prompt_hash(self) -> str:
        """Hash of the prompt template(s) this explainer renders."""
        return explainer_prompt_hash(self.settings)

    def build_messages(
        self, examples: Sequence[ActivationRecord], vocab: dict[str, Any] | None = None
    ) -> ChatRequest:
        return build_explainer_request(self.settings, examples, vocab)

    async def explain(
        self, record: FeatureRecord, candidate: int = 0, temperature: float = 0.0, seed: int | None = None
    ) -> Explanation:
        """One candidate explanation of ``record``; raises :class:`ExplanationFailed` on a bad answer."""
        examples, evidence = shown_evidence(record, self.settings)
        if not examples:
            raise ExplanationFailed("the record has no train examples to show")
        if max(r.max_activation for r in examples) <= 0:
            raise ExplanationFailed("the feature never fired in its train examples (dead feature)")
        if self.settings.kind == "tokens":
            label = token_label(evidence, LABEL_TOKENS)
            if label is None:
                raise ExplanationFailed("no token is marked in the train examples")
            return Explanation(record.id, label, self.spec, self.prompt_hash, "", Usage(), candidate)
        if self.settings.show_vocab and not record.vocab_projection:
            raise ExplanationFailed("the record has no vocabulary projection to show (compute it: --vocab-projection)")
        negatives = explainer_negatives(record, self.settings)
        if self.settings.kind == "contrastive" and not negatives:
            raise ExplanationFailed(
                "no counterexample to show: every train_random window of the record has a token above the highlight "
                "threshold (sample more with --n-train-random, or raise --highlight-threshold)"
            )
        base = build_explainer_request(self.settings, examples, record.vocab_projection, negatives)
        req = ChatRequest(messages=base.messages, max_tokens=base.max_tokens, temperature=temperature, seed=seed)
        try:
            resp = await self.client.chat(req)
        except LLMError as e:
            raise ExplanationFailed(f"explainer request failed: {e.reason}") from e
        try:
            label = parse_explanation(resp.text, cot=self.settings.cot)
            shown = [m.content for m in base.messages if m.role == "assistant"]
            for example in shown:
                if copies_example(label, example):
                    raise ExplanationFailed(f"the label copies a few-shot example of the prompt: {label!r}", resp.text)
            if self.settings.kind == "evidence":
                check_evidence_phrase(label)
                label = evidence_label(label, evidence)
        except ExplanationFailed as e:
            e.usage = resp.usage
            raise
        return Explanation(
            feature=record.id,
            text=label,
            explainer=self.spec,
            prompt_hash=self.prompt_hash,
            raw=resp.text,
            usage=resp.usage,
            candidate=candidate,
        )

    async def refine(
        self, record: FeatureRecord, label: str, worst: Sequence[tuple[ActivationRecord, np.ndarray]], candidate: int
    ) -> Explanation:
        """A revision of ``label`` from the selection-split records it predicted worst (``worst``: each record with
        its simulation under ``label``); an ``evidence`` label is revised in its phrase and keeps quoting its
        tokens. Raises :class:`ExplanationFailed` on an unusable answer."""
        s = self.settings
        req = build_refine_request(label.split(", e.g. ")[0] if s.kind == "evidence" else label, worst,
                                   s.highlight_threshold, s.max_tokens)
        try:
            resp = await self.client.chat(req)
        except LLMError as e:
            raise ExplanationFailed(f"refinement request failed: {e.reason}") from e
        try:
            text = parse_explanation(resp.text)
        except ExplanationFailed as e:
            e.usage = resp.usage
            raise
        if s.kind == "evidence":
            text = evidence_label(text, shown_evidence(record, s)[1])
        return Explanation(record.id, text, self.spec + ",refined", short_hash_of(REFINE_TEMPLATE, self.prompt_hash),
                           resp.text, resp.usage, candidate)
