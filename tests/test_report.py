"""The HTML report without a browser: data, escaping, self-containment, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autointerp.errors import RunDirError
from autointerp.records import Explanation, FeatureId, Score
from autointerp.report import build_report, json_for_html, load_run, report_data
from autointerp.report.synthetic import EVIL_TOKENS, write_synthetic_run
from autointerp.rundir import RunDir, append_jsonl


def _embedded_json(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data element"
    return dict(json.loads(m.group(1)))


def test_json_for_html_cannot_close_the_script_element() -> None:
    text = json_for_html({"t": "</script><script>alert(1)</script>", "u": "a&b>c<!--", "v": "\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": "</script><script>alert(1)</script>", "u": "a&b>c<!--", "v": "\u2028"}


def test_hostile_tokens_are_escaped_and_round_trip(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", evil_tokens=True)
    page = build_report(run.path).read_text(encoding="utf-8")
    for evil in EVIL_TOKENS:
        assert evil not in page
    assert "<img" not in page and "onerror=alert(1)>" not in page
    # Exactly our two script elements, and the only inline script is the report's own (CSP by hash).
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "script-src 'sha256-" in page and "connect-src" not in page
    data = _embedded_json(page)
    tokens = [t for r in data["features"][0]["examples"]["test_top"] for t in r["tokens"]]
    for evil in EVIL_TOKENS:
        assert evil in tokens, "hostile text must survive as data (shown as text), not be dropped"


def test_page_is_self_contained(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    page = build_report(run.path, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no network resources"
    assert "@import" not in page and "innerHTML" not in page
    for slot in ("<!--@CSS@-->", "<!--@JS@-->", "<!--@DATA@-->", "<!--@TITLE@-->", "<!--@CSP@-->"):
        assert slot not in page


def test_report_data_contents(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=4)
    data = report_data(load_run(run.path))
    assert data["score_names"] == ["correlation", "detection"]
    feats = {f["id"]: f for f in data["features"]}
    f0 = feats["synthetic/L0/mlp_neurons:0"]
    assert f0["label"] == "names of European capital cities"
    assert f0["baseline_label"] == "years in the nineteenth century"
    assert isinstance(f0["scores"]["correlation"]["value"], float)
    assert isinstance(f0["baseline"]["correlation"]["value"], float)
    assert set(f0["examples"]) == {"test_top", "test_quantiles", "test_random", "train"}
    top0 = f0["examples"]["test_top"][0]
    assert set(top0["sims"]) == {f0["label_id"], f0["baseline_id"]}
    assert len(top0["sims"][f0["label_id"]]["expected"]) == len(top0["tokens"]) == len(top0["acts"])
    # Undefined score: None with its reason, never a number.
    f1 = feats["synthetic/L0/mlp_neurons:1"]
    reason = "true activations are constant over the scored records"
    assert f1["scores"]["correlation"] == {"value": None, "reason": reason}
    failed = f1["examples"]["test_random"][0]["sims"][f1["label_id"]]
    assert failed["expected"] is None and "no value" in failed["failed"]
    assert "NaN" not in json_for_html(data)


def test_partial_run_and_selection(tmp_path: Path) -> None:
    """A run with explanations but no records yet, two candidates (one selected), a resumed duplicate."""
    run = RunDir.create(tmp_path / "run", "explain", {"x": 1})
    fid = FeatureId("m/L1/mlp_neurons", 3)
    rows = []
    for c, sel in ((0, False), (1, True)):
        e = Explanation(fid, f"cand {c}", "x", "0" * 16, candidate=c)
        rows.append({**e.to_json(), "explanation_id": f"{fid}#{c}", "selected": sel})
    append_jsonl(run.file("explanations.jsonl"), rows)
    s_old = Score("correlation", 0.1)
    s_new = Score("correlation", None, reason="all simulations failed")
    append_jsonl(
        run.file("scores.jsonl"),
        [{"explanation_id": f"{fid}#1", "feature": str(fid), "baseline": False, "score": s.to_json()}
         for s in (s_old, s_new)],
    )
    data = report_data(load_run(run.path))
    (f,) = data["features"]
    assert f["label"] == "cand 1" and f["stats"] is None and f["examples"] == {}
    assert f["scores"]["correlation"] == {"value": None, "reason": "all simulations failed"}
    assert f["baseline"]["correlation"] is None and f["baseline_label"] is None
    build_report(run.path)  # renders without records or baseline

    # A feature whose only explanation failed: no label, the failure reason instead.
    bad = Explanation(FeatureId("m/L1/mlp_neurons", 4), "", "x", "0" * 16)
    append_jsonl(run.file("explanations.jsonl"),
                 [{**bad.to_json(), "explanation_id": "m/L1/mlp_neurons:4#0", "selected": False,
                   "failed": "label longer than 300 characters"}])
    f4 = report_data(load_run(run.path))["features"][1]
    assert f4["label"] is None and f4["label_failed"] == "label longer than 300 characters"


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a run directory"):
        build_report(tmp_path)


def test_cli_report(tmp_path: Path) -> None:
    from autointerp.cli import main

    run = write_synthetic_run(tmp_path / "run")
    out = tmp_path / "page.html"
    main(["report", str(run.path), "--out", str(out)])
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nope")])
    assert e.value.code == 2
