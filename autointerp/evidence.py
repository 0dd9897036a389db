"""A feature's evidence: which tokens its shown examples mark, and in what context. Computed once per feature from
the train examples the explainer is shown, and shared by every explainer kind and by the token-list yardstick.

The 1.5B simulator reads a label that names tokens (shared FACTS, 2026-12-07): the five marked tokens with the
largest summed activation, as the label, beat the default explainer's topic labels by +0.2 over a shuffled
baseline. So the evidence is the tokens, ranked by summed activation over the shown examples, with:

- ``count``: how often the token is marked (activation above ``threshold`` x the examples' maximum, as the
  highlighted format marks it);
- ``before``: the token that precedes the marked occurrences, when one does in at least
  :data:`CONTEXT_SHARE` of them and at least twice (N2G-style n-gram context: "York" after "New");
- ``share``: the token's part of the summed activation of every marked token.

Tokens are grouped by their stripped display text, case-blind, so " Was", "was" and "was " are one token
(quoted in the form first seen). The sums are vectorised over the examples' tokens (one ``np.unique`` and
``np.bincount``); the other Python loops run over the few distinct tokens.

:func:`token_label` turns evidence into the label of the no-LLM ``tokens`` explainer (and yardstick):
``the tokens "was", "are", "been" (after "it"), ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autointerp.records import ActivationRecord

CONTEXT_SHARE = 0.6
"""A preceding token counts as the context of a marked token when it precedes at least this share of its
marked occurrences (and at least two of them)."""


@dataclass(frozen=True)
class TokenEvidence:
    """One marked token of a feature's shown examples."""

    token: str
    """Stripped display text, in the form first seen (tokens are grouped case-blind)."""
    weight: float
    """Summed activation over every occurrence in the shown examples (positive activations only)."""
    count: int
    """Occurrences marked (activation above the highlight cut)."""
    share: float
    """Part of the summed activation of all marked tokens (0..1)."""
    before: str | None = None
    """The token that precedes most of the marked occurrences (when it precedes at least CONTEXT_SHARE of
    them, at least twice); None when the context varies."""


@dataclass(frozen=True)
class Evidence:
    """The tokens a feature's shown examples mark, largest summed activation first (see the module doc)."""

    tokens: tuple[TokenEvidence, ...]
    n_examples: int
    n_marked: int
    """Marked token occurrences over the shown examples."""

    def top(self, n: int) -> tuple[TokenEvidence, ...]:
        return self.tokens[:n]

    @property
    def coverage(self) -> float:
        """Share of the marked activation that the five heaviest tokens carry (1.0: five tokens are the whole
        story; low: a feature of many different tokens, where a class name helps)."""
        return float(sum(t.share for t in self.tokens[:5]))


def _shown(token: str) -> str:
    from autointerp.explain import escape_text

    stripped = token.strip()
    return escape_text(stripped) if stripped else escape_text(token)


def compute_evidence(records: Sequence[ActivationRecord], threshold: float) -> Evidence:
    """The evidence of the shown examples ``records`` (a token is marked where its activation exceeds
    ``threshold`` x the examples' maximum, and is positive)."""
    if not records:
        return Evidence((), 0, 0)
    acts = np.concatenate([np.asarray(r.activations, dtype=np.float64) for r in records])
    per_record = [[_shown(t) for t in r.tokens] for r in records]
    shown: dict[str, str] = {}  # lower-cased key -> the first form seen (what a label quotes)
    for ks in per_record:
        for k in ks:
            shown.setdefault(k.lower(), k)
    per_record = [[k.lower() for k in ks] for ks in per_record]
    keys = [k for ks in per_record for k in ks]
    before: list[str | None] = [b for ks in per_record for b in [None, *ks[:-1]][: len(ks)]]
    top = float(acts.max()) if len(acts) else 0.0
    cut = max(threshold * top, 0.0) if top > 0 else np.inf
    marked = acts > cut
    names, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    weight = np.bincount(inverse, weights=np.maximum(acts, 0.0), minlength=len(names))
    count = np.bincount(inverse, weights=marked.astype(np.float64), minlength=len(names)).astype(int)
    marked_weight = float(np.maximum(acts, 0.0)[marked].sum())
    order = [int(i) for i in np.lexsort((names, -weight)) if count[i] > 0]
    out = []
    marked_at = np.flatnonzero(marked)
    for i in order:
        at = marked_at[inverse[marked_at] == i]
        context = [before[j] for j in at if before[j] is not None]
        common = max(set(context), key=context.count) if context else None
        hits = context.count(common) if common is not None else 0
        keep = common if common is not None and hits >= 2 and hits >= CONTEXT_SHARE * len(at) else None
        share = float(weight[i] / marked_weight) if marked_weight > 0 else 0.0
        out.append(TokenEvidence(shown[str(names[i])], float(weight[i]), int(count[i]), min(share, 1.0),
                                 shown[keep] if keep is not None else None))
    return Evidence(tuple(out), len(records), int(marked.sum()))


def quoted(ev: TokenEvidence) -> str:
    """``"token"``, with its context where it has one: ``"york" (after "new")``."""
    return f'"{ev.token}"' + (f' (after "{ev.before}")' if ev.before else "")


def token_label(evidence: Evidence, n: int = 5) -> str | None:
    """The no-LLM label: ``the tokens "a", "b" (after "c"), ...`` of the ``n`` heaviest marked tokens; None when
    no token is marked."""
    top = evidence.top(n)
    if not top:
        return None
    noun = "token" if len(top) == 1 else "tokens"
    return f"the {noun} " + ", ".join(quoted(t) for t in top)
