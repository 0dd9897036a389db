"""Embedding scorer (delphi's): does the explanation, as a search query, retrieve the activating windows?

The explanation is embedded as a query and each held-out window as a document (a sentence-transformers
model, default the embedded all-MiniLM-L6-v2, see :mod:`autointerp.embedding`); the score is the ROC AUC
of the cosine similarity, activating windows (positives) against non-activating ones (negatives). No LLM
call. Positives and negatives follow the classifier conventions (:class:`autointerp.score.ClassifierSettings`:
``positives``, ``negatives`` random or hard), so embedding, detection and fuzzing score the same windows.
A one-class set is undefined with the reason.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from autointerp.embedding import Embedder
from autointerp.records import FeatureRecord, Score
from autointerp.score import ClassifierSettings, positives_negatives, roc_auc
from autointerp.scorers.base import Scored


class EmbeddingScorer:
    score_names: tuple[str, ...] = ("embedding",)

    def __init__(self, embedder: Embedder, settings: ClassifierSettings | None = None) -> None:
        self.embedder = embedder
        self.settings = settings or ClassifierSettings()
        self.judge = f"embedding:{embedder.name}"

    async def score(self, eid: str, text: str, record: FeatureRecord) -> Scored:
        s = self.settings
        settings: dict[str, Any] = {
            "model": self.embedder.name,
            **{k: v for k, v in asdict(s).items() if k in ("n_positive", "n_negative", "positives", "negatives")},
        }
        pos, neg = positives_negatives(record, s)
        docs = ["".join(r.tokens) for r in [*pos, *neg]]
        labels = [True] * len(pos) + [False] * len(neg)
        details: dict[str, Any] = {"n_positive": len(pos), "n_negative": len(neg)}
        if not docs:
            return Scored([Score("embedding", None, reason="no examples", settings=settings, details=details)])
        emb = self.embedder.encode([text, *docs])
        sim = emb[1:] @ emb[0]
        auc = roc_auc(labels, sim.tolist())
        if isinstance(auc, str):
            return Scored([Score("embedding", None, reason=auc, settings=settings, details=details)])
        details["mean_similarity"] = {
            "positive": float(np.mean(sim[: len(pos)])),
            "negative": float(np.mean(sim[len(pos) :])),
        }
        return Scored([Score("embedding", auc, settings=settings, details=details)])
