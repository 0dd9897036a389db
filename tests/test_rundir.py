"""The run-directory model: one rule selects a feature's explanation for every reader, and scores are keyed
by (explanation, score name, judge) so a second judge's scores are kept apart, never averaged together."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fake_llm import FakeLLM, synthetic_record

from autointerp.export import feature_rows
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients, ExplainConfig, run_explain, run_score, summarize
from autointerp.records import Explanation, FeatureId, Score
from autointerp.report import load_run, report_data
from autointerp.rundir import RunDir, append_jsonl
from autointerp.sweep_tables import run_table

KEYWORDS = [" cat", " dog", " bird", " mat"]


def _right(req: ChatRequest) -> str:
    """Explains a feature by its top token, and judges every example correctly."""
    last = req.messages[-1].content
    if "summarize" in req.messages[0].content.lower():
        tops = re.findall(r"^(.*)\t10$", last, re.M)
        return f"Explanation: {tops[0].strip()} tokens"
    word = re.findall(r"Feature explanation: (\w+)", last)[0]
    lines = [ln for ln in last.splitlines() if ln.startswith("Example ")]
    return str([int(f" {word}" in ln) for ln in lines])


def _says_no(req: ChatRequest) -> str:
    """A judge that calls every example non-activating."""
    lines = [ln for ln in req.messages[-1].content.splitlines() if ln.startswith("Example ")]
    return str([0] * len(lines))


async def test_rescoring_with_a_second_judge_keeps_both_judges_scores_apart(tmp_path: Path) -> None:
    a = FakeLLM(spec="fake:judge-a", chat_fn=_right)
    b = FakeLLM(spec="fake:judge-b", chat_fn=_says_no)
    run = tmp_path / "run"
    records = [synthetic_record(i, KEYWORDS[i]) for i in range(4)]
    cfg = ExplainConfig(scorers="detection", n_top_examples=4, classifier_examples=4)
    first = await run_explain(cfg, run, records, Clients(a, a, a))
    assert first.scores["detection"]["explained"][0] == 1.0  # type: ignore[index]

    second = await run_score(run, "detection", judge="fake:judge-b", clients=Clients(a, a, b))
    la, lb = "detection@fake:judge-a", "detection@fake:judge-b"
    assert "detection" not in second.scores, "two judges' scores must not be averaged under one name"
    assert second.scores[la]["explained"][0] == 1.0  # type: ignore[index]
    assert second.scores[lb]["explained"][0] == 0.5  # type: ignore[index]  # all "no": balanced accuracy 0.5
    assert second.n_scored[la]["explained"] == second.n_scored[lb]["explained"] == 4

    rows = feature_rows(run)
    assert all(r[f"score_{la}"] == 1.0 and r[f"score_{lb}"] == 0.5 for r in rows)
    assert all(r[f"baseline_{la}"] is not None and r[f"baseline_{lb}"] is not None for r in rows)
    table = run_table(run)
    assert list(table[f"score_{la}"]) == [1.0] * 4 and list(table[f"score_{lb}"]) == [0.5] * 4
    data = report_data(load_run(run))
    assert set(data["index"]["score_names"]) == {la, lb}
    assert data["cards"][0]["scores"][lb]["value"] == 0.5
    assert data["index"]["list"]["scores"][lb] == [0.5] * 4


def _expl(feature: str, candidate: int, text: str, *, selected: bool = False, failed: str | None = None) -> dict:
    ex = Explanation(FeatureId.parse(feature), text, "token_activation_pair[fake]", "h", candidate=candidate)
    row = {**ex.to_json(), "explanation_id": f"{feature}#{candidate}", "selected": selected}
    return {**row, "failed": failed} if failed else row


def _score(eid: str, feature: str, value: float) -> dict:
    return {"explanation_id": eid, "feature": feature, "baseline": False, "judge": "fake:j",
            "score": Score("correlation", value).to_json()}


def test_every_reader_selects_the_same_explanation(tmp_path: Path) -> None:
    """Feature 0's first candidate failed and none is marked selected; feature 1 marks its second candidate.
    The summary, export, sweep table and report all take the same explanation (and its scores only)."""
    run = RunDir.create(tmp_path / "run", "explain", {})
    f0, f1 = (str(synthetic_record(i).id) for i in range(2))
    append_jsonl(run.file("records.jsonl"), [synthetic_record(i).to_json() for i in range(2)])
    append_jsonl(run.file("explanations.jsonl"), [
        _expl(f0, 0, "", failed="no label"),
        _expl(f0, 1, "label one"),
        _expl(f0, 2, "label two"),
        _expl(f1, 0, "loser"),
        _expl(f1, 1, "winner", selected=True),
    ])
    append_jsonl(run.file("scores.jsonl"), [
        _score(f"{f0}#1", f0, 1.0), _score(f"{f0}#2", f0, 0.0),
        _score(f"{f1}#0", f1, 0.0), _score(f"{f1}#1", f1, 0.8),
    ])
    summary = summarize(run.path)
    assert summary.n_explained == 2 and summary.n_failed_explanations == 0
    assert summary.scores["correlation"]["explained"][0] == pytest.approx(0.9)  # type: ignore[index]
    export = {r["feature"]: r["explanation"] for r in feature_rows(run.path)}
    table = dict(zip(run_table(run.path)["feature"], run_table(run.path)["label"], strict=True))
    report = {f["id"]: f["label"] for f in report_data(load_run(run.path))["cards"]}
    expected = {f0: "label one", f1: "winner"}
    assert export == table == report == expected


def test_scores_written_before_the_judge_field_was_named_are_read(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", "explain", {})
    f0 = str(synthetic_record(0).id)
    append_jsonl(run.file("records.jsonl"), [synthetic_record(0).to_json()])
    append_jsonl(run.file("explanations.jsonl"), [_expl(f0, 0, "cat", selected=True)])
    old = {k: v for k, v in _score(f"{f0}#0", f0, 0.7).items() if k != "judge"}
    append_jsonl(run.file("scores.jsonl"), [{**old, "scorer": "auto[local:x]"}])
    data = load_run(run.path)
    assert data.score_rows == {(f"{f0}#0", "correlation", "auto[local:x]"): Score("correlation", 0.7)}
    assert data.judges() == {"correlation": "auto[local:x]"}
