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
    # Our script elements only (the index, one chunk, the report's script); the only inline script that
    # runs is the report's own (CSP by hash), and fetch may reach the page's own origin only.
    assert page.count("<script") == 3 and page.count("</script>") == 3
    assert "script-src 'sha256-" in page and "connect-src 'self'" in page
    m = re.search(r'<script type="application/json" id="chunk-0">(.*?)</script>', page, re.S)
    assert m
    tokens = [t for r in json.loads(m.group(1))[0]["examples"]["test_top"] for t in r["tokens"]]
    for evil in EVIL_TOKENS:
        assert evil in tokens, "hostile text must survive as data (shown as text), not be dropped"


def test_page_is_self_contained(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    page = build_report(run.path, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no network resources"
    assert "@import" not in page and "innerHTML" not in page
    for slot in ("<!--@CSS@-->", "<!--@JS@-->", "<!--@DATA@-->", "<!--@CHUNKS@-->", "<!--@TITLE@-->", "<!--@CSP@-->"):
        assert slot not in page


def test_report_data_contents(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=4)
    data = report_data(load_run(run.path))
    assert data["index"]["score_names"] == ["correlation", "detection"]
    feats = {f["id"]: f for f in data["cards"]}
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
    (f,) = data["cards"]
    assert f["label"] == "cand 1" and f["stats"] is None and f["examples"] == {}
    assert f["scores"]["correlation"] == {"value": None, "reason": "all simulations failed"}
    assert f["baseline"]["correlation"] is None and f["baseline_label"] is None
    build_report(run.path)  # renders without records or baseline

    # A feature whose only explanation failed: no label, the failure reason instead.
    bad = Explanation(FeatureId("m/L1/mlp_neurons", 4), "", "x", "0" * 16)
    append_jsonl(run.file("explanations.jsonl"),
                 [{**bad.to_json(), "explanation_id": "m/L1/mlp_neurons:4#0", "selected": False,
                   "failed": "label longer than 300 characters"}])
    f4 = report_data(load_run(run.path))["cards"][1]
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


# -- the large-run layout, the index, bad input, export files, compare, serve ---------------------------


def test_index_columns_match_the_cards_and_undefined_scores_keep_their_reason(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=5)
    data = report_data(load_run(run.path))
    idx, cards = data["index"], data["cards"]
    lst = idx["list"]
    assert lst["id"] == [c["id"] for c in cards]
    assert lst["label"] == [c["label"] for c in cards]
    for n in idx["score_names"]:
        assert lst["scores"][n] == [c["scores"][n]["value"] for c in cards]
        assert lst["baseline"][n] == [c["baseline"][n]["value"] for c in cards]
    k = lst["id"].index("synthetic/L0/mlp_neurons:1")
    assert lst["scores"]["correlation"][k] is None
    assert idx["reasons"][lst["reason"]["correlation"][k]] == "true activations are constant over the scored records"
    assert lst["freq"] == [c["stats"]["frequency"] for c in cards] or all(
        abs(a - b) <= 1e-3 * abs(b) for a, b in zip(lst["freq"], [c["stats"]["frequency"] for c in cards], strict=True)
    )


def test_overview_histograms_means_and_undefined_counts(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=8)
    ov = report_data(load_run(run.path))["index"]["overview"]
    corr = ov["scores"]["correlation"]
    assert sum(corr["explained"]["hist"]) == corr["explained"]["n"] == 7
    assert sum(corr["baseline"]["hist"]) == corr["baseline"]["n"] == 8
    assert corr["explained"]["undefined"] == {"true activations are constant over the scored records": 1}
    lo, hi = corr["explained"]["ci"]
    assert lo <= corr["explained"]["mean"] <= hi
    assert len(corr["edges"]) == len(corr["explained"]["hist"]) + 1
    assert ov["failed_simulations"] == {"the simulator's reply had no value for token 3": 1}
    assert ov["missing"] == [] and ov["warnings"] == []


def test_large_runs_get_a_folder_of_chunks_built_by_the_same_code(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=6)
    page = build_report(run.path, single_file_max=4)  # auto -> folder, 6 > 4
    assert page == run.path / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert 'id="chunk-' not in text and '"layout":"folder"' in text
    data = report_data(load_run(run.path))
    from autointerp.report.report import CHUNK_SIZE

    chunk = json.loads((page.parent / "chunks" / "0.json").read_text(encoding="utf-8"))
    assert chunk == json.loads(json.dumps(data["cards"][:CHUNK_SIZE]))
    single = build_report(run.path, tmp_path / "one.html", layout="file").read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="chunk-0">(.*?)</script>', single, re.S)
    assert m and json.loads(m.group(1)) == chunk, "both layouts carry the same card data"


def test_corrupt_jsonl_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path: Path) -> None:
    from autointerp.report import read_run

    run = write_synthetic_run(tmp_path / "run", n_features=3)
    lines = run.file("scores.jsonl").read_text(encoding="utf-8").splitlines()
    lines.insert(2, '{"explanation_id": "broken')
    run.file("scores.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data, warnings = read_run(run.path)
    assert any("scores.jsonl:3" in w for w in warnings), warnings
    index = report_data(data, warnings=warnings)["index"]
    assert any("scores.jsonl:3" in w for w in index["overview"]["warnings"])
    assert len(index["list"]["id"]) == 3  # the rest of the file is still read


def test_run_without_explanations_says_what_is_missing(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=3)
    for name in ("explanations.jsonl", "simulations.jsonl", "scores.jsonl"):
        run.file(name).unlink()
    index = report_data(load_run(run.path))["index"]
    (msg,) = index["overview"]["missing"]
    assert "no explanations yet" in msg and "3 features" in msg
    assert index["overview"]["files"]["records.jsonl"] is True
    assert index["overview"]["files"]["explanations.jsonl"] is False
    assert index["list"]["label"] == [None, None, None]
    build_report(run.path)


def test_cli_names_what_a_run_without_explanations_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autointerp.cli import main

    run = write_synthetic_run(tmp_path / "run", n_features=2)
    for name in ("explanations.jsonl", "simulations.jsonl", "scores.jsonl"):
        run.file(name).unlink()
    main(["report", str(run.path)])
    err = " ".join(capsys.readouterr().err.split())
    assert "no explanations yet" in err and "autointerp explain" in err
    assert (run.path / "report.html").is_file()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_an_exported_dataset_opens_like_a_run(tmp_path: Path, fmt: str) -> None:
    from autointerp.export import export_run

    run = write_synthetic_run(tmp_path / "run", n_features=4)
    out = tmp_path / f"labels.{fmt}"
    export_run(run.path, fmt, out)
    from_file = report_data(__import__("autointerp.report", fromlist=["read_run"]).read_run(out)[0])["index"]
    from_run = report_data(load_run(run.path))["index"]
    assert from_file["list"]["id"] == from_run["list"]["id"]
    assert from_file["list"]["label"] == from_run["list"]["label"]
    for n in from_run["score_names"]:
        assert from_file["list"]["scores"][n] == from_run["list"]["scores"][n]
        assert from_file["list"]["baseline"][n] == from_run["list"]["baseline"][n]
    k = from_file["list"]["id"].index("synthetic/L0/mlp_neurons:1")
    assert from_file["reasons"][from_file["list"]["reason"]["correlation"][k]].startswith("true activations")
    page = build_report(out)
    assert page == tmp_path / "labels-report.html" and page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_export_file_without_the_schema_columns_is_refused(tmp_path: Path) -> None:
    from autointerp.errors import UserError

    bad = tmp_path / "x.jsonl"
    bad.write_text('{"id": 1, "label": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="lacks the column"):
        build_report(bad)


def test_compare_pairs_scores_by_feature(tmp_path: Path) -> None:
    import numpy as np

    a = write_synthetic_run(tmp_path / "a", n_features=6, seed=0, quality=0.8)
    b = write_synthetic_run(tmp_path / "b", n_features=6, seed=1, quality=0.2)
    ra, rb = load_run(a.path), load_run(b.path, records=False)
    cmp = report_data(ra, compare=rb)["index"]["compare"]
    la = report_data(ra)["index"]["list"]
    lb = report_data(rb)["index"]["list"]
    diffs = [x - y for x, y in zip(la["scores"]["correlation"], lb["scores"]["correlation"], strict=True)
             if x is not None and y is not None]
    assert cmp["paired"]["correlation"]["n"] == len(diffs) == 5
    assert cmp["paired"]["correlation"]["mean"] == pytest.approx(float(np.mean(diffs)), rel=1e-3)
    assert cmp["label"] == lb["label"] and cmp["name"] == "b"


def test_cli_report_folder_and_serve_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from autointerp.cli import main

    run = write_synthetic_run(tmp_path / "run", n_features=3)
    main(["report", str(run.path), "--layout", "folder"])
    assert (run.path / "report" / "index.html").is_file()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["serve", str(run.path), "--port", str(busy)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"port {busy}" in err and "--port" in err and len(err.splitlines()) == 1


def test_served_folder_gives_the_page_and_its_chunks(tmp_path: Path) -> None:
    import threading
    import urllib.request

    from autointerp.report.serve import make_server, url_of

    run = write_synthetic_run(tmp_path / "run", n_features=3)
    page = build_report(run.path, layout="folder")
    server = make_server(page.parent, 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = url_of(server)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.read().decode("utf-8").startswith("<!DOCTYPE html>")
        with urllib.request.urlopen(url.replace("index.html", "chunks/0.json"), timeout=10) as r:
            assert [c["id"] for c in json.loads(r.read())][:1] == ["synthetic/L0/mlp_neurons:0"]
    finally:
        server.shutdown()
        server.server_close()


async def test_card_shows_the_exact_prompt_the_explainer_was_sent(tmp_path: Path) -> None:
    from fake_llm import FakeLLM, synthetic_record

    from autointerp.pipeline import Clients, ExplainConfig, run_explain

    fake = FakeLLM(chat_fn=lambda req: "Explanation: the word cat")
    run = tmp_path / "run"
    cfg = ExplainConfig(max_records_per_split=2, baseline=False, scorers="simulation")
    await run_explain(cfg, run, [synthetic_record(0, " cat")], Clients(fake, fake, fake))
    sent = fake.chat_requests  # the explainer's request (the simulator here reads logprobs, not chat)
    (card,) = report_data(load_run(run))["cards"]
    shown = [(m["role"], m["content"]) for m in card["prompt"]["messages"]]
    assert any(shown == [(m.role, m.content) for m in req.messages] for req in sent), "not the prompt sent"

    # A changed template is detected by its hash: the prompt is then not shown, with the reason.
    expl = run / "explanations.jsonl"
    expl.write_text(expl.read_text(encoding="utf-8").replace(card["explanations"][0]["prompt_hash"], "0" * 16),
                    encoding="utf-8")
    (card,) = report_data(load_run(run))["cards"]
    assert card["prompt"]["messages"] is None and "template changed" in card["prompt"]["reason"]


def test_scatter_pairs_input_and_output_scores_per_feature_with_spearman(tmp_path: Path) -> None:
    """The overview's input-vs-output view: sides come from the scorer registry, the default pair is the one
    most features have (detection against intervention_kl: 6, correlation only 5), and rho is Spearman's over
    the features with both scores (feature 1's correlation is undefined, so it is left out, not counted as 0)."""
    from scipy.stats import spearmanr

    run = write_synthetic_run(tmp_path / "run", n_features=6, output_scores=True)
    index = report_data(load_run(run.path))["index"]
    sc = index["scatter"]
    assert sc["inputs"] == ["correlation", "detection"] and sc["outputs"] == ["intervention_kl"]
    assert (sc["x"], sc["y"]) == ("detection", "intervention_kl")
    assert sc["spearman"]["detection"]["intervention_kl"]["n"] == 6
    corr, kl = index["list"]["scores"]["correlation"], index["list"]["scores"]["intervention_kl"]
    both = [(a, b) for a, b in zip(corr, kl, strict=True) if a is not None and b is not None]
    assert len(both) == 5
    cell = sc["spearman"]["correlation"]["intervention_kl"]
    assert cell["n"] == 5 and cell["reason"] is None
    assert cell["rho"] == pytest.approx(spearmanr([a for a, _ in both], [b for _, b in both]).statistic, abs=1e-3)


def test_scatter_without_an_output_score_says_so_and_undefined_rho_has_a_reason(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=6)
    sc = report_data(load_run(run.path))["index"]["scatter"]
    assert sc["outputs"] == [] and sc["y"] is None and sc["spearman"]["correlation"] == {}
    two = write_synthetic_run(tmp_path / "two", n_features=2, output_scores=True)
    cell = report_data(load_run(two.path))["index"]["scatter"]["spearman"]["detection"]["intervention_kl"]
    assert cell["rho"] is None and "needs 3" in cell["reason"]


def test_export_rows_carry_input_and_output_scores_with_their_side(tmp_path: Path) -> None:
    from autointerp.export import export_run

    run = write_synthetic_run(tmp_path / "run", n_features=4, output_scores=True)
    out = tmp_path / "features.jsonl"
    assert export_run(run.path, "jsonl", out) == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        settings = json.loads(row["score_settings"])
        assert settings["intervention_kl"]["side"] == "output" and isinstance(row["score_intervention_kl"], float)
        assert settings["detection"]["side"] == "input" and isinstance(row["score_detection"], float)
        assert settings["correlation"]["side"] == "input" and "score_correlation" in row
        assert row["baseline_intervention_kl"] == row["score_intervention_kl"]  # steering does not read the label


async def test_scores_undefined_by_the_run_settings_get_no_column_but_a_failed_one_does(tmp_path: Path) -> None:
    from fake_llm import FakeLLM
    from test_pipeline import _records, smart_chat

    from autointerp.pipeline import Clients, ExplainConfig, run_explain

    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    await run_explain(ExplainConfig(calibrate=False, max_records_per_split=3), tmp_path / "run", _records(3),
                      Clients(fake, fake, fake))
    data = report_data(load_run(tmp_path / "run"))
    names = data["index"]["score_names"]
    assert "correlation" in names and "r_squared" not in names and "correlation_quantiles" not in names
    undefined = data["index"]["overview"]["undefined_scores"]
    assert "not calibrated (--no-calibrate)" in undefined["r_squared"] and "correlation_quantiles" in undefined
    assert all("r_squared" not in card["scores"] for card in data["cards"])
