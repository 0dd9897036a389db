"""Surprisal scorer (delphi's): does the explanation, as a prefix, make the activating windows less surprising?

A base LM (default the embedded gemma3-270m, loaded with the sampler's loader through transformers) reads
each held-out window after a prefix (``prompts/score_surprisal.j2``) rendered once with the explanation and
once without it. Per window, the surprisal reduction is ``mean NLL(text | plain prefix) - mean NLL(text |
explanation prefix)`` over the window's text tokens (its own token ids, BOS and padding dropped, so a base
LM of the same tokenizer as the subject reads exactly the sampled tokens; another tokenizer re-encodes the
window's text). The score is the ROC AUC of that reduction, activating windows (positives) against
non-activating ones (negatives), with the classifier conventions for both sets
(:class:`autointerp.score.ClassifierSettings`). The plain-prefix loss of a window is computed once per run.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from autointerp.prompts import load_template
from autointerp.records import ActivationRecord, FeatureRecord, Score
from autointerp.score import ClassifierSettings, positives_negatives, roc_auc
from autointerp.scorers.base import Scored
from autointerp.subject import Subject

_BATCH = 8


class SurprisalScorer:
    score_names: tuple[str, ...] = ("surprisal",)

    def __init__(
        self,
        lm: Subject,
        settings: ClassifierSettings | None = None,
        same_tokenizer: bool = True,
        plain: dict[tuple[int, ...], float] | None = None,
    ) -> None:
        """``plain``: a cache of no-explanation losses by window token ids, shared across calls of a run."""
        self.lm = lm
        self.settings = settings or ClassifierSettings()
        self.same_tokenizer = same_tokenizer
        self.template = load_template("score_surprisal.j2")
        self.judge = f"lm:{lm.name}"
        self._plain: dict[tuple[int, ...], float] = {} if plain is None else plain

    def _text_ids(self, r: ActivationRecord) -> list[int]:
        tok = self.lm.tokenizer
        special = set(getattr(tok, "all_special_ids", []) or [])
        if self.same_tokenizer:
            return [t for t in r.token_ids if t not in special]
        return list(tok.encode("".join(r.tokens), add_special_tokens=False))

    def _prefix_ids(self, explanation: str) -> list[int]:
        tok = self.lm.tokenizer
        prefix = self.template.render({"explanation": explanation})
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        return bos + list(tok.encode(prefix, add_special_tokens=False))

    @torch.inference_mode()
    def mean_nll(self, prefix: list[int], texts: list[list[int]]) -> list[float]:
        """Mean next-token NLL of each (non-empty) text's tokens after ``prefix`` (batched, right-padded:
        attention is causal, so padding never affects real tokens)."""
        model: Any = self.lm.model
        out: list[float] = []
        for start in range(0, len(texts), _BATCH):
            chunk = texts[start : start + _BATCH]
            seqs = [prefix + t for t in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.as_tensor(s)
            hidden = self.lm.base(input_ids=ids.to(self.lm.device), use_cache=False).last_hidden_state
            for i, t in enumerate(chunk):
                pos = torch.arange(len(prefix) - 1, len(prefix) + len(t) - 1, device=hidden.device)
                logits = model.get_output_embeddings()(hidden[i, pos]).float()
                soft = getattr(model.config, "final_logit_softcapping", None)
                if soft:
                    logits = torch.tanh(logits / soft) * soft
                target = torch.as_tensor(t, device=hidden.device)
                out.append(float(torch.nn.functional.cross_entropy(logits, target)))
        return out

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        s = self.settings
        settings: dict[str, Any] = {
            "model": self.lm.name,
            "prompt_hash": self.template.hash,
            **{k: v for k, v in asdict(s).items() if k in ("n_positive", "n_negative", "positives", "negatives")},
        }
        pos, neg = positives_negatives(record, s)
        recs = [*pos, *neg]
        labels = [True] * len(pos) + [False] * len(neg)
        texts = [self._text_ids(r) for r in recs]
        keep = [i for i, t in enumerate(texts) if t]
        details: dict[str, Any] = {"n_positive": len(pos), "n_negative": len(neg), "n_empty": len(texts) - len(keep)}
        if not keep:
            why = "no examples with text"
            return Scored([Score("surprisal", None, reason=why, settings=settings, details=details)])
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
        missing = [t for t in texts if tuple(t) not in self._plain]
        if missing:
            for t, v in zip(missing, self.mean_nll(self._prefix_ids(""), missing), strict=True):
                self._plain[tuple(t)] = v
        plain = np.asarray([self._plain[tuple(t)] for t in texts])
        with_expl = np.asarray(self.mean_nll(self._prefix_ids(text), texts))
        reduction = plain - with_expl
        auc = roc_auc(labels, reduction.tolist())
        if isinstance(auc, str):
            return Scored([Score("surprisal", None, reason=auc, settings=settings, details=details)])
        y = np.asarray(labels)
        details["mean_reduction"] = {
            "positive": float(reduction[y].mean()),
            "negative": float(reduction[~y].mean()),
        }
        return Scored([Score("surprisal", auc, settings=settings, details=details)])
