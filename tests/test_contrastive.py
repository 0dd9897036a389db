"""The contrastive explainer: activating examples beside train-side hard negatives, never a test window."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_llm import FakeLLM

from autointerp.errors import UserError
from autointerp.explain import Explainer, ExplainerSettings, explainer_negatives, explainer_request_for
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients, ExplainConfig, run_explain
from autointerp.records import SPLITS, ActivationRecord, FeatureId, FeatureRecord, FeatureStats

VOCAB = {" cat": 1, " sat": 2, " on": 3, " the": 4, " mat": 5, " dog": 6, " ran": 7}


def _window(window: int, words: list[str], fire_on: str | None = None) -> ActivationRecord:
    acts = np.array([4.0 if w == fire_on else 0.0 for w in words], dtype=np.float32)
    return ActivationRecord(tokens=list(words), token_ids=[VOCAB.get(w, 100 + window) for w in words],
                            activations=acts, window=window)


def _record() -> FeatureRecord:
    """Fires on ' cat'. Each test window holds a marker word of its split (TESTTOP0, ...) that no prompt may show;
    train_random holds non-firing windows, two of them sharing ' cat' with the train examples (hard negatives)
    and one firing window (never a negative)."""
    train = [_window(i, [" the", " cat", " sat", " on", " the", " mat"], " cat") for i in range(3)]
    marked = {split: [_window(10 * (k + 1) + i, [" the", f" {split.upper().replace('_', '')}{i}", " cat"], " cat")
                      for i in range(2)]
              for k, split in enumerate(("test_top", "test_quantiles", "valid"))}
    test_random = [_window(60 + i, [" the", " cat", f" TESTRANDOM{i}", " mat"]) for i in range(3)]
    train_random = [
        _window(70, [" the", " dog", " ran", " TRAINRANDOMFAR"]),
        _window(71, [" the", " cat", " ran", " TRAINRANDOMNEAR"]),  # non-firing, shares ' cat' (a stop word here)
        _window(72, [" a", " cat", " cat", " TRAINRANDOMFIRES"], " cat"),  # fires: never a negative
        _window(73, [" cat", " on", " cat", " TRAINRANDOMNEAREST"]),
    ]
    return FeatureRecord(
        id=FeatureId("toy/L0/mlp_neurons", 0),
        stats=FeatureStats(n_tokens=1000, frequency=0.01, max=4.0, mean=0.04, mean_active=4.0),
        train=train, test_top=marked["test_top"], test_quantiles=marked["test_quantiles"], test_random=test_random,
        valid=marked["valid"], train_random=train_random,
    )


def _text(req: ChatRequest) -> str:
    return "\n".join(m.content for m in req.messages)


async def test_contrastive_prompt_holds_activating_examples_and_train_side_hard_negatives() -> None:
    fake = FakeLLM(chat_fn=lambda req: "Explanation: the word cat after the")
    rec = _record()
    ex = await Explainer(fake, ExplainerSettings(kind="contrastive", n_top=3, n_negatives=2)).explain(rec)
    assert ex.text == "the word cat after the" and ex.explainer.startswith("contrastive[")
    last = fake.chat_requests[0].messages[-1].content
    active, _, counter = last.partition("Counterexamples:")
    assert active.count("<< cat>>") == 3  # the activating train examples, highlighted
    # the two non-firing train_random windows most like the examples (most shared top tokens first)
    assert counter.strip().splitlines() == [
        "Counterexample 1:  cat on cat TRAINRANDOMNEAREST",
        "Counterexample 2:  the cat ran TRAINRANDOMNEAR",
    ]
    assert "<<" not in counter and "TRAINRANDOMFIRES" not in last


async def test_no_test_split_window_reaches_the_contrastive_prompt() -> None:
    fake = FakeLLM(chat_fn=lambda req: "Explanation: cat")
    rec = _record()
    settings = ExplainerSettings(kind="contrastive", n_top=10, n_negatives=10)
    await Explainer(fake, settings).explain(rec)
    prompt = _text(fake.chat_requests[0])
    for split in ("test_top", "test_quantiles", "test_random", "valid"):
        for r in getattr(rec, split):
            assert not any(t.strip() in prompt for t in r.tokens if t.strip().isupper()), split
    assert "TESTRANDOM" not in prompt and "TESTTOP" not in prompt and "VALID" not in prompt
    # the report rebuilds the same prompt from the record
    assert _text(explainer_request_for(settings, rec)) == prompt


async def test_contrastive_without_train_random_is_refused_before_work(tmp_path: Path) -> None:
    fake = FakeLLM()
    rec = replace(_record(), train_random=[])
    cfg = ExplainConfig(explainer_kind="contrastive", scorers="detection", n_top_examples=3)
    with pytest.raises(UserError, match="--n-train-random"):
        await run_explain(cfg, tmp_path / "run", [rec], Clients(fake, fake, fake))
    assert not (tmp_path / "run").exists() and not fake.chat_requests
    # a record whose train_random windows all fire has no counterexample: failed with the reason, not explained
    firing = replace(_record(), train_random=[_record().train_random[2]])
    summary = await run_explain(cfg, tmp_path / "run2", [firing], Clients(fake, fake, fake))
    assert summary.n_explained == 0 and not fake.chat_requests


def test_record_round_trips_train_random_and_old_records_load() -> None:
    rec = _record()
    back = FeatureRecord.from_json(rec.to_json())
    assert [r.window for r in back.train_random] == [70, 71, 72, 73]
    old = rec.to_json()
    old.pop("train_random")
    assert FeatureRecord.from_json(old).train_random == []
    assert "train_random" in SPLITS


def test_train_random_split_is_disjoint_and_leaves_test_random_unchanged(
    tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path
) -> None:
    from autointerp.corpus import load_corpus
    from autointerp.hooks import HookPoint
    from autointerp.record_store import load_feature_records
    from autointerp.sampling import SamplingConfig, run_sampling
    from autointerp.sources.neurons import NeuronSource

    hook = HookPoint(1, "mlp_neurons")
    base = SamplingConfig(tokens=1500, window=16, batch_size=8, n_top=10, n_train=4, n_valid=2, n_test_top=3,
                          n_quantile_bins=3, per_quantile_bin=2, n_random=6)
    runs = {}
    for name, cfg in (("plain", base), ("with", replace(base, n_train_random=5))):
        windows = load_corpus(str(tiny_corpus_file), tiny_llama.tokenizer, cfg.window, max_tokens=cfg.tokens)
        run_sampling(tiny_llama, NeuronSource(tiny_llama.name, hook, tiny_llama.hook_dim(hook)), windows, cfg,
                     tmp_path / name)
        runs[name] = {str(r.id): r for r in load_feature_records(tmp_path / name)}
    assert runs["plain"].keys() == runs["with"].keys()
    for fid, rec in runs["with"].items():
        plain = runs["plain"][fid]
        assert [r.window for r in rec.test_random] == [r.window for r in plain.test_random]
        assert plain.train_random == [] and len(rec.train_random) == 5
        others = {r.window for s in SPLITS if s != "train_random" for r in getattr(rec, s)}
        assert not others & {r.window for r in rec.train_random}


def test_counterexamples_of_a_dense_feature_are_the_windows_with_nothing_highlighted() -> None:
    """Where every window fires a little (MLP neurons), a counterexample is a window with no token above the
    highlight threshold (x the shown examples' maximum, 4.0 here)."""
    rec = _record()
    weak = replace(rec.train_random[1], activations=np.array([0.0, 1.5, 0.0, 0.0], dtype=np.float32))
    strong = replace(rec.train_random[3], activations=np.array([2.5, 0.0, 0.0, 0.0], dtype=np.float32))
    rec = replace(rec, train_random=[rec.train_random[0], weak, rec.train_random[2], strong])
    shown = explainer_negatives(rec, ExplainerSettings(kind="contrastive", n_top=3, highlight_threshold=0.5))
    assert [r.window for r in shown] == [71, 70]  # 1.5 <= 0.5 x 4.0 < 2.5; the firing window 72 never
    assert explainer_negatives(rec, ExplainerSettings(kind="contrastive", n_top=3)) == [rec.train_random[0]]
