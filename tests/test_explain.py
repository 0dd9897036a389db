"""Explainers: prompt formats, escaping, answer parsing, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_llm import FakeLLM, synthetic_record

from autointerp.explain import (
    Explainer,
    ExplainerSettings,
    ExplanationFailed,
    escape_text,
    escape_token,
    format_highlighted,
    format_token_activation_pairs,
    parse_explanation,
    select_train_examples,
)
from autointerp.prompts import load_template
from autointerp.records import ActivationRecord


def _rec(tokens: list[str], acts: list[float]) -> ActivationRecord:
    return ActivationRecord(tokens=tokens, token_ids=list(range(len(tokens))), activations=np.array(acts))


def test_escaping_of_token_text() -> None:
    assert escape_token("\n") == "\\n"
    assert escape_token("a\tb") == "a\\tb"
    assert escape_token("<bos>") == "\\<bos\\>"
    assert escape_token("\x01") == "\\x01"
    assert escape_text("a<<b>>") == "a\\<\\<b\\>\\>"


def test_token_activation_pairs_normalised_by_max_over_examples() -> None:
    text = format_token_activation_pairs([_rec(["a", "\n"], [0, 2.0]), _rec(["b", "c"], [4.0, -1.0])], 10)
    assert "a\t0\n\\n\t5" in text
    assert "b\t10\nc\t0" in text
    assert text.count("<start>") == 2
    nine = format_token_activation_pairs([_rec(["x"], [3.0])], 9)
    assert "x\t9" in nine


def test_highlighted_merges_contiguous_spans_and_escapes() -> None:
    text = format_highlighted([_rec(["The", " New", " York", " <<", " x"], [0, 1, 2, 0, 3])])
    assert text == "Example 1: The<< New York>> \\<\\<<< x>>"


@pytest.mark.parametrize(
    ("raw", "cot", "label"),
    [
        ("Explanation: names of cities.", False, "names of cities"),
        ('"the word cat"', False, "the word cat"),
        ("  \n**Explanation:** `numbers`\nmore text", False, "numbers"),
        ("Tokens 1 and 3 are high...\nExplanation: dates in May", True, "dates in May"),
        ('Explanation: words that start with "when"', False, 'words that start with "when"'),
        ('words that start with "when".', False, 'words that start with "when"'),
        ("'quoted label'.", False, "quoted label"),
        ('Explanation: "cities', False, "cities"),
        ('"\"when\" at the start of clauses"', False, '"when" at the start of clauses'),
    ],
)
def test_parse_explanation_keeps_balanced_quotes(raw: str, cot: bool, label: str) -> None:
    assert parse_explanation(raw, cot=cot) == label


@pytest.mark.parametrize(
    ("raw", "cot"), [("", False), ("Explanation: ...", False), ("x" * 400, False), ("no marker", True)]
)
def test_parse_explanation_rejects_garbage(raw: str, cot: bool) -> None:
    with pytest.raises(ExplanationFailed):
        parse_explanation(raw, cot=cot)


async def test_explainer_builds_prompt_from_train_only_and_parses() -> None:
    rec = synthetic_record(3)
    fake = FakeLLM()
    ex = Explainer(fake, ExplainerSettings(kind="highlighted", n_top=3))
    expl = await ex.explain(rec, candidate=1, temperature=0.7, seed=5)
    assert expl.text == "the word cat"
    assert expl.candidate == 1 and expl.feature == rec.id
    assert expl.prompt_hash == load_template("explain_highlighted.j2").hash
    req = fake.chat_requests[0]
    assert req.temperature == 0.7 and req.seed == 5
    last = req.messages[-1].content
    assert last.count("Example ") == 3 and "<< cat>>" in last
    # few-shot example lives in the template
    assert any(m.role == "assistant" for m in req.messages)


async def test_explainer_failures_are_reported() -> None:
    rec = synthetic_record(0)
    with pytest.raises(ExplanationFailed, match="empty"):
        await Explainer(FakeLLM(chat_fn=lambda r: "   ")).explain(rec)
    with pytest.raises(ExplanationFailed, match="request failed"):
        await Explainer(FakeLLM(fail_chat=True)).explain(rec)
    for r in rec.train:
        r.activations[:] = 0
    with pytest.raises(ExplanationFailed, match="dead"):
        await Explainer(FakeLLM()).explain(rec)


def test_select_train_examples_top_then_quantiles() -> None:
    rec = synthetic_record(1)
    for i, r in enumerate(rec.train):
        r.activations[0] = float(10 + i)
    chosen = select_train_examples(rec, 2, 2)
    assert [r.max_activation for r in chosen[:2]] == [15.0, 14.0]
    assert len(chosen) == 4


def test_trailing_spaces_visible_and_copy_guard() -> None:
    from autointerp.explain import copies_example

    assert escape_token(" ") == "␣" and escape_token("a  ") == "a␣␣" and escape_token(" cat") == " cat"
    assert copies_example(
        "words with prefixes like un-, dis- and im-", "Explanation: negative prefixes like un-, dis- and im-"
    )
    assert copies_example("names of major cities", "Explanation: names of large cities")
    assert not copies_example("names of cities and countries", "Explanation: years in dates")
    assert not copies_example("years", "Explanation: years in dates")


async def test_copied_few_shot_label_is_failed() -> None:
    fake = FakeLLM(chat_fn=lambda r: "Explanation: years in dates")
    with pytest.raises(ExplanationFailed, match="copies a few-shot"):
        await Explainer(fake).explain(synthetic_record(0))


def test_token_stats_count_marked_tokens_and_weigh_by_activation() -> None:
    from autointerp.explain import token_stats

    recs = [_rec(["the", " cat", " sat"], [0, 4.0, 1.0]), _rec([" cat", " dog", "\n"], [2.0, 0, 0.2])]
    frequent, weighted = token_stats(recs, threshold=0.1, n=2)  # marked: above 0.4
    assert frequent == '"cat" (2), "sat" (1)'
    assert weighted == '"cat" 10.0, "sat" 1.7'  # 6.0 and 1.0, scaled so the first is 10
    assert token_stats([_rec(["a"], [0.0])], 0.1, 3) == ("none", "none")


def test_trimmed_examples_keep_the_marked_span_and_its_context() -> None:
    from autointerp.explain import trim_examples

    rec = ActivationRecord(tokens=list("abcdefgh"), token_ids=list(range(8)),
                           activations=np.array([0, 0, 0, 3.0, 0, 2.0, 0, 0]), window=7)
    (out,) = trim_examples([rec], threshold=0.1, context=1)
    assert out.tokens == ["...", "c", "d", "e", "f", "g", "..."]
    assert out.token_ids == [-1, 2, 3, 4, 5, 6, -1] and out.window == 7
    assert out.activations.tolist() == [0, 0, 3.0, 0, 2.0, 0, 0]
    quiet = _rec(["x", "y"], [0, 0])
    assert trim_examples([quiet], 0.1, 1) == [quiet]
    (edge,) = trim_examples([_rec(["a", "b", "c"], [5.0, 0, 0])], 0.1, 1)
    assert edge.tokens == ["a", "b", "..."]


def test_token_stats_and_trimming_reach_the_prompt_and_its_hash() -> None:
    from autointerp.explain import build_explainer_request, explainer_prompt_hash
    from autointerp.pipeline import ExplainConfig
    from autointerp.report.report import _explainer_settings

    rec = synthetic_record(0, " cat")
    plain = ExplainerSettings(kind="highlighted", n_top=4, highlight_threshold=0.1)
    rich = ExplainerSettings(kind="highlighted", n_top=4, highlight_threshold=0.1, token_stats=3, trim=1)
    examples = select_train_examples(rec, 4, 0)
    text = build_explainer_request(rich, examples).messages[-1].content
    assert 'Marked tokens, most frequent first (times marked): "cat" (8)' in text
    assert "..." in text and "..." not in build_explainer_request(plain, examples).messages[-1].content
    assert explainer_prompt_hash(rich) != explainer_prompt_hash(plain)
    # the report rebuilds a run's explainer settings through the run's own config
    cfg = ExplainConfig(explainer_kind="highlighted", token_stats=3, trim_examples=1)
    from autointerp.config import config_to_dict

    settings, why = _explainer_settings({"config": config_to_dict(cfg)})
    assert why is None and settings == cfg.explainer_settings() and settings.token_stats == 3


async def test_an_unusable_label_is_retried_once_sampled_and_the_failure_is_kept(tmp_path: Path) -> None:
    """A greedy answer that copies a few-shot example is failed; one more candidate at the candidate
    temperature is asked for, and the copy stays in explanations.jsonl as failed (explain_retries=0: not)."""
    from autointerp.llm.base import ChatRequest
    from autointerp.pipeline import Clients, ExplainConfig, run_explain
    from autointerp.rundir import read_jsonl

    def chat(req: ChatRequest) -> str:
        shown = [m.content for m in req.messages if m.role == "assistant"]
        return shown[0] if req.temperature == 0 else "Explanation: the word cat"

    for retries, explained in ((1, 2), (0, 0)):
        fake = FakeLLM(chat_fn=chat)
        run = tmp_path / str(retries)
        cfg = ExplainConfig(max_records_per_split=2, baseline=False, explain_retries=retries)
        summary = await run_explain(cfg, run, [synthetic_record(i) for i in range(2)], Clients(fake, fake, fake))
        assert summary.n_explained == explained
        rows = list(read_jsonl(run / "explanations.jsonl"))
        assert sum("copies a few-shot" in (r.get("failed") or "") for r in rows) == 2
        assert [r["text"] for r in rows if r["selected"]] == ["the word cat"] * explained
        assert len(fake.chat_requests) == 2 * (1 + retries)
