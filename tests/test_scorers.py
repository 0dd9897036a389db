"""The scorer registry and the embedding, surprisal and intervention scorers (tiny models, fake judges)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_llm import FakeLLM, synthetic_record

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.llm.base import ChatRequest
from autointerp.records import ActivationRecord, FeatureId, FeatureRecord, FeatureStats
from autointerp.score import ClassifierSettings
from autointerp.scorers.base import Models
from autointerp.scorers.intervention import (
    InterventionKLScorer,
    InterventionScorer,
    SteeringCache,
    SteerSettings,
    parse_alpha,
)
from autointerp.scorers.registry import SCORERS, scorer_entries
from autointerp.scorers.surprisal import SurprisalScorer
from autointerp.sources.sae import LinearSae, random_sae

SOURCE = "toy/L0"


def _sae(d: int, n: int = 4, with_decoder: bool = True) -> LinearSae:
    return random_sae(HookPoint(0, "resid_post"), d, n, seed=1, model_name="tiny", decoder=with_decoder)


def _words_record(tok: Any, index: int, active: str = "cat") -> FeatureRecord:
    """A record over the tiny tokenizer's words: the feature fires (3.0) on ``active``."""
    rng = np.random.default_rng(index)
    words = ["the", "city", "river", "paris", "king", "music", "red", "dog", "bird", "one", "two"]

    def rec(window: int, fire: bool) -> ActivationRecord:
        ws = [str(w) for w in rng.choice(words, size=8)]
        if fire:
            ws[3] = active
        ids = [tok.bos_token_id, *tok.convert_tokens_to_ids(ws)]
        acts = np.array([0.0] + [3.0 if w == active else 0.0 for w in ws], dtype=np.float32)
        return ActivationRecord(["<bos>", *[" " + w for w in ws]], ids, acts, window)

    w = iter(range(1000))
    return FeatureRecord(
        id=FeatureId(SOURCE, index),
        stats=FeatureStats(n_tokens=100, frequency=0.1, max=3.0, mean=0.3, mean_active=3.0),
        train=[rec(next(w), True) for _ in range(4)],
        test_top=[rec(next(w), True) for _ in range(4)],
        test_quantiles=[],
        test_random=[rec(next(w), False) for _ in range(4)],
    )


def test_every_scorer_enters_through_one_table() -> None:
    assert {"simulation", "detection", "fuzzing", "saebench_detection", "embedding", "surprisal",
            "intervention", "intervention_kl"} <= set(SCORERS)
    assert {SCORERS[n].side for n in ("intervention", "intervention_kl")} == {"output"}
    with pytest.raises(UserError, match="unknown scorer"):
        scorer_entries(["detection", "telepathy"])


def test_alpha_that_is_not_a_number_is_a_user_error() -> None:
    assert parse_alpha("auto") is None and parse_alpha("2.5") == 2.5
    for bad in ("abc", "nan", "inf", ""):
        with pytest.raises(UserError, match="alpha") as e:
            parse_alpha(bad)
        assert "\n" not in str(e.value)


async def test_surprisal_nll_matches_the_models_own_loss_and_reuses_plain_prefix(tiny_llama: Any) -> None:
    scorer = SurprisalScorer(tiny_llama, ClassifierSettings(n_positive=4, n_negative=4))
    prefix, text = scorer._prefix_ids("cats"), [5, 6, 7, 8]
    ids = torch.tensor([prefix + text])
    with torch.no_grad():
        logits = tiny_llama.model(ids).logits[0, len(prefix) - 1 : -1]
    want = float(torch.nn.functional.cross_entropy(logits, torch.tensor(text)))
    assert scorer.mean_nll(prefix, [text, [9, 10]])[0] == pytest.approx(want, rel=1e-5)
    rec = _words_record(tiny_llama.tokenizer, 0)
    first = (await scorer.score("e", "cat", rec)).scores[0]
    assert first.value is not None and 0.0 <= first.value <= 1.0
    assert first.details["n_positive"] == 4 and first.details["n_negative"] == 4
    cached = len(scorer._plain)
    await scorer.score("e2", "river", rec)
    assert len(scorer._plain) == cached  # the no-explanation losses were computed once


async def test_surprisal_one_class_set_is_undefined(tiny_llama: Any) -> None:
    rec = _words_record(tiny_llama.tokenizer, 1)
    rec.test_random = []
    sc = (await SurprisalScorer(tiny_llama).score("e", "cat", rec)).scores[0]
    assert sc.value is None and sc.reason == "no negative examples"


def _steering(tiny_llama: Any, **kw: Any) -> tuple[SteeringCache, Models]:
    models = Models()
    models.add_source(SOURCE, _sae(tiny_llama.d_model), tiny_llama)
    settings = SteerSettings(corpus=str(kw.pop("corpus")), n_prompts=3, prompt_tokens=6, new_tokens=4, **kw)
    return SteeringCache(models, settings), models


async def test_intervention_kl_records_alpha_and_is_zero_without_steering(
    tiny_llama: Any, tiny_corpus_file: Path
) -> None:
    cache, _ = _steering(tiny_llama, corpus=tiny_corpus_file)
    rec = _words_record(tiny_llama.tokenizer, 2)
    out = (await InterventionKLScorer(cache).score("e", "city river", rec)).scores
    kl, shift = out
    assert kl.name == "intervention_kl" and kl.value is not None and kl.value > 0
    assert kl.details["alpha"] == pytest.approx(4.0 * rec.stats.max)  # auto: 4 x the largest activation
    assert shift.value is not None and shift.details["n_word_tokens"] >= 2
    zero, _ = _steering(tiny_llama, corpus=tiny_corpus_file, alpha="0")
    kl0 = (await InterventionKLScorer(zero).score("e", "city", rec)).scores
    assert kl0[0].value == pytest.approx(0.0, abs=1e-6)
    assert kl0[1].value is None and "did not change" in (kl0[1].reason or "")


async def test_intervention_judge_accuracy_auc_and_cost(tiny_llama: Any, tiny_corpus_file: Path) -> None:
    cache, _ = _steering(tiny_llama, corpus=tiny_corpus_file, alpha="40")
    rec = _words_record(tiny_llama.tokenizer, 3)
    st = cache.get(SOURCE)
    steered = st.steered_continuations(rec)

    def oracle(req: ChatRequest) -> str:  # knows which continuation was steered
        body = req.messages[-1].content
        a = body.split("Continuation A: ")[1].split("\n")[0]
        return "A" if any(a.strip() == s.strip() for s in steered) else "B"

    judge = FakeLLM(chat_fn=oracle, logprob_fn=lambda p, pos: {"A": -0.1, "B": -2.4})
    res = await InterventionScorer(judge, cache).score("e", "cats", rec)
    sc = res.scores[0]
    assert sc.value == 1.0 and sc.details["n_judged"] + sc.details["n_identical"] == 3
    assert sc.details["alpha"] == 40.0 and res.usage.requests == 2 * sc.details["n_judged"]
    assert "auc" in sc.details
    always_b = await InterventionScorer(FakeLLM(chat_fn=lambda r: "B"), cache, False).score("e", "cats", rec)
    assert always_b.scores[0].value is not None and always_b.scores[0].details["auc"] is None
    garbage = await InterventionScorer(FakeLLM(chat_fn=lambda r: "maybe"), cache).score("e", "cats", rec)
    assert garbage.scores[0].value is None and garbage.scores[0].reason == "no judge answer could be parsed"


def test_steering_a_source_without_decoder_is_refused_before_work(tiny_llama: Any) -> None:
    models = Models()
    models.add_source(SOURCE, _sae(tiny_llama.d_model, with_decoder=False), tiny_llama)
    from autointerp.pipeline import ExplainConfig
    from autointerp.scorers.registry import check_scorers

    with pytest.raises(UserError, match="no decoder") as e:
        check_scorers(ExplainConfig(scorers="intervention_kl"), [SOURCE], models)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="alpha"):
        ExplainConfig(scorers="intervention", alpha="strong")


def test_missing_embedding_model_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from autointerp import embedding

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "all_minilm_l6_v2" else real(n, *a))
    with pytest.raises(UserError, match="not installed"):
        embedding.check_embedding_model("all-minilm-l6-v2")
    with pytest.raises(UserError, match="unknown embedding model"):
        embedding.check_embedding_model("no such model")


async def test_pipeline_scores_through_the_registry_with_cost_and_manifest(
    tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path
) -> None:
    from autointerp.pipeline import Clients, ExplainConfig, run_explain

    records = [_words_record(tiny_llama.tokenizer, i, active) for i, active in enumerate(["cat", "dog"])]
    _, models = _steering(tiny_llama, corpus=tiny_corpus_file)
    models.add_subject("tiny-lm", tiny_llama)
    judge = FakeLLM(chat_fn=lambda r: "A" if "Continuation A" in r.messages[-1].content else "[1, 0, 1, 0, 1]")
    cfg = ExplainConfig(
        scorers="detection,surprisal,intervention_kl", surprisal_model="tiny-lm", classifier_examples=4,
        steer_prompts=2, steer_prompt_tokens=6, steer_corpus=str(tiny_corpus_file), concurrency=1,
    )
    await run_explain(cfg, tmp_path / "run", records, Clients(judge, judge, judge), models=models)
    rows = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    names = {r["score"]["name"] for r in rows}
    assert {"detection", "surprisal", "intervention_kl", "intervention_logit_shift"} <= names
    for r in rows:
        cost = r["score"]["details"]["cost"]
        assert set(cost) == {"requests", "prompt_tokens", "completion_tokens", "seconds"}
    det = next(r for r in rows if r["score"]["name"] == "detection")
    assert det["score"]["details"]["cost"]["requests"] > 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "score_surprisal.j2" in json.dumps(manifest)


async def test_embedding_scorer_ranks_matching_windows_with_the_embedded_minilm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    from autointerp.embedding import Embedder, embedded_model_dir
    from autointerp.scorers.embedding import EmbeddingScorer

    folder = embedded_model_dir()  # extracted and sha256-checked once
    assert (folder / "model.safetensors").stat().st_size == 90_868_376
    rec = synthetic_record(0, keyword=" cat")
    emb = Embedder("all-minilm-l6-v2")
    res = await EmbeddingScorer(emb).score("e", "cats", rec)
    sc = res.scores[0]
    assert sc.value is not None and sc.value > 0.8 and res.usage.requests == 0
    assert sc.settings["model"] == "all-minilm-l6-v2" and sc.details["n_positive"] == 6
    hard = await EmbeddingScorer(emb, ClassifierSettings(negatives="hard")).score("e", "cats", rec)
    assert hard.scores[0].settings["negatives"] == "hard"


def test_a_tampered_embedding_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    from autointerp import embedding

    monkeypatch.setattr(embedding, "_SHA256", "0" * 64)
    with pytest.raises(UserError, match="sha256"):
        embedding.embedded_model_dir()
    assert not (tmp_path / "cache" / "embedding" / "all-minilm-l6-v2").exists()


async def test_hard_negative_scores_are_stored_apart_from_random_negative_ones(
    tiny_llama: Any, tmp_path: Path
) -> None:
    from autointerp.pipeline import Clients, ExplainConfig, run_explain, run_score
    from autointerp.rundir import load_run

    records = [_words_record(tiny_llama.tokenizer, i, active) for i, active in enumerate(["cat", "dog"])]
    models = Models()
    models.add_subject("tiny-lm", tiny_llama)
    llm = FakeLLM()
    cfg = ExplainConfig(scorers="surprisal", surprisal_model="tiny-lm", classifier_examples=4, concurrency=1)
    await run_explain(cfg, tmp_path / "run", records, Clients(llm, llm, llm), models=models)
    await run_score(tmp_path / "run", "surprisal", clients=Clients(llm, llm, llm), models=models,
                    settings={"negatives": "hard"})
    data = load_run(tmp_path / "run")
    judges = {j for (_, name, j) in data.score_rows if name == "surprisal"}
    assert judges == {f"lm:{tiny_llama.name}", f"lm:{tiny_llama.name}+hard-negatives"}
    hard = [sc for (_, n, j), sc in data.score_rows.items() if j.endswith("+hard-negatives")]
    assert all(sc.settings["negatives"] == "hard" for sc in hard)
