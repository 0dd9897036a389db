"""Labels that carry their evidence: the no-LLM ``tokens`` explainer, the ``evidence`` explainer, selection across
explainer kinds on the held-out 'valid' split only, and the token-list yardstick scored like any label."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fake_llm import FakeLLM, synthetic_record
from test_pipeline import _records, smart_chat

from autointerp.evidence import compute_evidence, token_label
from autointerp.explain import Explainer, ExplainerSettings
from autointerp.export import feature_rows
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients, ExplainConfig, run_explain
from autointerp.records import ActivationRecord
from autointerp.rundir import load_run, read_jsonl


def _rec(tokens: list[str], acts: list[float]) -> ActivationRecord:
    return ActivationRecord(tokens, list(range(len(tokens))), np.array(acts, np.float32))


def test_the_token_list_ranks_marked_tokens_by_summed_activation_with_their_consistent_context() -> None:
    shown = [
        _rec(["New", " York", " is", " big"], [0, 5, 0, 0.1]),
        _rec([" in", " New", " York"], [0, 0, 4]),
        _rec(["It", " was", " here"], [0, 3, 0]),
        _rec(["They", " Was", " ok"], [0, 2, 0]),
        _rec(["a", " b", " c"], [0, 0, 0.05]),  # below the highlight cut: weighs, never marked
    ]
    ev = compute_evidence(shown, threshold=0.1)
    assert [(t.token, t.weight, t.count, t.before) for t in ev.tokens] == [
        ("York", 9.0, 2, "New"),  # "New" precedes both marked "York"s
        ("was", 5.0, 2, None),  # " was" and " Was" are one token (case-blind, stripped); no shared context
    ]
    assert ev.n_marked == 4 and abs(sum(t.share for t in ev.tokens) - 1.0) < 1e-9
    assert token_label(ev) == 'the tokens "York" (after "New"), "was"'
    assert token_label(compute_evidence([_rec(["a"], [0.0])], 0.1)) is None


async def test_the_tokens_explainer_sends_no_request() -> None:
    llm = FakeLLM(fail_chat=True)
    ex = await Explainer(llm, ExplainerSettings(kind="tokens", n_top=4)).explain(synthetic_record(0, " dog"))
    assert ex.text == 'the token "dog"' and ex.usage.requests == 0 and not llm.chat_requests
    assert ex.explainer == "tokens[no llm]"


async def test_the_evidence_label_quotes_the_tokens_its_prompt_showed() -> None:
    seen: list[ChatRequest] = []

    def chat(req: ChatRequest) -> str:
        seen.append(req)
        return "Explanation: names of pets"

    ex = await Explainer(FakeLLM(chat_fn=chat), ExplainerSettings(kind="evidence", n_top=4, highlight_threshold=0.1)
                         ).explain(synthetic_record(0, " dog"))
    assert ex.text == 'names of pets, e.g. "dog"'
    prompt = seen[0].messages[-1].content
    assert prompt.startswith('Tokens: "dog" 100%') and "<<" in prompt and "..." in prompt  # cut to the marked tokens


def _kind_chat(req: ChatRequest) -> str:
    """The fake explainer LLM: names the marked word for the evidence prompt; for the highlighted prompt, a wrong
    label ("mat") so that the selection has a worse candidate to reject; the judge answers as smart_chat does."""
    system, last = req.messages[0].content, req.messages[-1].content
    if "Snippets:" in last:  # the evidence prompt
        word = re.findall(r'Tokens: "([^"]+)"', last)[0]
        return f"Explanation: the word {word}"
    if "Summarize" in system:
        return "Explanation: mat tokens"
    return smart_chat(req)


async def test_selection_across_kinds_reads_only_the_valid_split_and_keeps_the_best(tmp_path: Path) -> None:
    fake = FakeLLM(spec="local:fake", chat_fn=_kind_chat)
    cfg = ExplainConfig(explainer_kind="evidence,tokens,highlighted", scorers="simulation", n_top_examples=4,
                        max_records_per_split=3, highlight_threshold=0.1, baseline=False, yardstick=False,
                        calibrate=False)
    n_before_scoring: list[int] = []
    orig_score_all = __import__("autointerp.pipeline", fromlist=["_Runner"])._Runner.score_all

    async def spy(self, features):  # type: ignore[no-untyped-def]
        n_before_scoring.append(len(fake.logprob_requests))
        await orig_score_all(self, features)

    import autointerp.pipeline

    autointerp.pipeline._Runner.score_all = spy  # type: ignore[method-assign]
    try:
        await run_explain(cfg, tmp_path / "run", _records(3), Clients(fake, fake, fake))
    finally:
        autointerp.pipeline._Runner.score_all = orig_score_all  # type: ignore[method-assign]
    data = load_run(tmp_path / "run")
    for f in data.records:
        cands = [e for e in data.explanations_of(f) if not e.baseline]
        assert [e.explainer.split("[")[0] for e in cands] == ["evidence", "tokens", "highlighted"]
        # every candidate was simulated on the valid split, and only the selected one on a test split
        for e in cands:
            splits = {sp for (eid, sp, _) in data.simulations if eid == e.explanation_id}
            assert "valid" in splits
            if not e.selected:
                assert splits == {"valid"}, (e.text, splits)
        assert data.selected(f).text != "mat tokens"  # the wrong label lost on the valid split
    # every simulation request before scoring was of a valid record: no test token reached the selection
    valid_texts = {"".join(r.tokens) for rec in data.records.values() for r in rec.valid}
    for req in fake.logprob_requests[: n_before_scoring[0]]:
        body = req.prompt.rsplit("Feature explanation:", 1)[-1]
        toks = re.findall(r"^(.*)\t", body, re.M)
        assert "".join(toks) in valid_texts


async def test_the_yardstick_is_scored_like_any_label_and_reported_beside_the_baseline(tmp_path: Path) -> None:
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    cfg = ExplainConfig(scorers="simulation,detection", n_top_examples=4, max_records_per_split=3)
    summary = await run_explain(cfg, tmp_path / "run", _records(4), Clients(fake, fake, fake))
    data = load_run(tmp_path / "run")
    for f in data.records:
        sel, yard = data.selected(f), data.yardstick(f)
        assert yard is not None and yard.text.startswith("the token") and not yard.selected
        assert yard.explanation_id == f"{f}#tokens"
        assert set(data.scores_of(yard)) == set(data.scores_of(sel)) - {"label_prior_correlation"}  # scored alike
    assert "yardstick" in summary.scores["correlation"] and summary.paired_vs_yardstick["correlation"] is not None
    rows = feature_rows(tmp_path / "run")
    assert all(r["yardstick_explanation"].startswith("the token") and "yardstick_correlation" in r for r in rows)
    expl = list(read_jsonl(tmp_path / "run" / "explanations.jsonl"))
    assert sum(bool(e.get("yardstick")) for e in expl) == 4


def _refining_chat(revision: str):  # type: ignore[no-untyped-def]
    """The explainer first answers a wrong label ("mat tokens"), then, asked to refine, ``revision``."""

    def chat(req: ChatRequest) -> str:
        system = req.messages[0].content
        if "You wrote a short explanation" in system:
            return f"Explanation: {revision}"
        if "Summarize" in system:
            return "Explanation: mat tokens"
        return smart_chat(req)

    return chat


async def test_a_refinement_is_kept_only_when_it_scores_better_on_the_valid_split(tmp_path: Path) -> None:
    cfg = ExplainConfig(explainer_kind="highlighted", scorers="simulation", n_top_examples=4, max_records_per_split=3,
                        highlight_threshold=0.1, baseline=False, yardstick=False, calibrate=False, refine=True)
    records = _records(2)
    better = FakeLLM(spec="local:fake", chat_fn=lambda req: _refining_chat(  # the revision names the marked word
        (re.findall(r"<<\s*(\w+)>>", req.messages[-1].content) or ["x"])[0] + " tokens")(req))
    await run_explain(cfg, tmp_path / "better", records, Clients(better, better, better))
    data = load_run(tmp_path / "better")
    for f, rec in data.records.items():
        rows = data.explanations_of(f)
        assert [r.text for r in rows] == ["mat tokens", f"{_word(rec)} tokens"]
        assert data.selected(f).explainer.endswith(",refined")
    # the refinement prompts showed selection-split records only
    refine_prompts = [r.messages[-1].content for r in better.chat_requests if "You wrote" in r.messages[0].content]
    valid = {"".join(r.tokens) for rec in records for r in rec.valid}
    shown = [re.sub(r"<<|>>", "", ln.split(": ", 1)[1]) for p in refine_prompts for ln in p.splitlines()
             if ln.startswith("Example ")]
    assert shown and all(s in valid for s in shown)

    worse = FakeLLM(spec="local:fake", chat_fn=_refining_chat("zebra tokens"))
    await run_explain(cfg, tmp_path / "worse", records, Clients(worse, worse, worse))
    data = load_run(tmp_path / "worse")
    for f in data.records:
        assert data.selected(f).text == "mat tokens"  # the worse revision is stored but not selected
        assert "zebra tokens" in [r.text for r in data.explanations_of(f)]


def _word(rec) -> str:  # type: ignore[no-untyped-def]
    return str(next(t for r in rec.train for t, a in zip(r.tokens, r.activations, strict=True) if a > 0)).strip()
