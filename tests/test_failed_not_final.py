"""Failed is not final: LLM requests that failed for good (server down, rate limits exhausted) are not written
as results; a rerun sends them again and finishes the work. Failures that are properties of an answer stay
unless --retry-failed. The stage says ``partial`` and the CLI exits 1 while any feature failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_llm import FakeLLM
from test_bad_input import run_cli
from test_pipeline import _records, smart_chat

from autointerp.llm.base import ChatRequest, LLMError, LLMResponse, TopLogprobsRequest
from autointerp.pipeline import Clients, ExplainConfig, run_explain, run_score
from autointerp.rundir import RunDir, load_run, read_jsonl


class Switchable(FakeLLM):
    """A FakeLLM whose server can be down: every request then fails as a client does after its retries."""

    def __init__(self, down: bool = True) -> None:
        super().__init__(chat_fn=smart_chat)
        self.down = down
        self.sent = 0

    def _gate(self) -> None:
        self.sent += 1
        if self.down:
            raise LLMError("fake: connection error (ConnectionRefusedError) (after 5 attempts)", retryable=True)

    async def chat(self, request: ChatRequest) -> LLMResponse:
        self._gate()
        return await super().chat(request)

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        self._gate()
        return await super().top_logprobs(request)


CFG = ExplainConfig(scorers="simulation,detection", n_top_examples=4, max_records_per_split=3)


def _stage(run: Path) -> dict[str, object]:
    return dict(RunDir.open(run).manifest()["stages"]["explain"])


async def test_a_rerun_after_a_dead_server_finishes_the_work(tmp_path: Path) -> None:
    run = tmp_path / "run"
    llm = Switchable(down=True)
    s1 = await run_explain(CFG, run, _records(), Clients(llm, llm, llm))
    assert len(s1.failed_features) == 4 and s1.n_explained == 0
    assert _stage(run)["status"] == "partial"
    assert not list(read_jsonl(run / "explanations.jsonl")), "a failed request must not be written as a result"
    assert {e["stage"] for e in read_jsonl(run / "errors.jsonl")} == {"explain"}

    llm.down = False
    s2 = await run_explain(CFG, run, _records(), Clients(llm, llm, llm))
    assert s2.failed_features == [] and s2.n_explained == 4
    assert _stage(run)["status"] == "done"
    assert s2.scores["correlation"]["explained"] is not None and s2.scores["detection"]["explained"] is not None


async def test_failed_simulations_and_judge_prompts_are_retried_on_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    explainer, other = Switchable(down=False), Switchable(down=True)
    s1 = await run_explain(CFG, run, _records(), Clients(explainer, other, other))
    assert s1.n_explained == 4 and len(s1.failed_features) == 4
    data = load_run(run)
    assert not data.simulations and not data.score_rows, "results of failed requests must not be stored"
    assert _stage(run)["status"] == "partial"

    other.down = False
    sent_before = explainer.sent
    s2 = await run_explain(CFG, run, _records(), Clients(explainer, other, other))
    assert explainer.sent == sent_before, "finished explanations are not asked for again"
    assert s2.failed_features == []
    data = load_run(run)
    assert all(sim.ok for sim in data.simulations.values())
    names = {name for (_, name, _) in data.score_rows}
    assert {"correlation", "detection"} <= names
    assert all(sc.value is not None for (_, n, _), sc in data.score_rows.items() if n in ("correlation", "detection"))

    # run_score retries a failed judge the same way
    judge = Switchable(down=True)
    s3 = await run_score(run, "fuzzing", clients=Clients(explainer, other, judge))
    assert len(s3.failed_features) == 4 and RunDir.open(run).manifest()["stages"]["score"]["status"] == "partial"
    judge.down = False
    s4 = await run_score(run, "fuzzing", clients=Clients(explainer, other, judge))
    assert s4.failed_features == [] and s4.scores["fuzzing"]["explained"] is not None


async def test_unusable_answers_stay_unless_retry_failed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    bad = FakeLLM(chat_fn=lambda r: "Explanation: ...")  # an unusable label, every time
    s1 = await run_explain(ExplainConfig(baseline=False), run, _records(2), Clients(bad, bad, bad))
    assert s1.n_failed_explanations == 2 and len(s1.failed_features) == 2
    assert _stage(run)["status"] == "partial"
    n = len(bad.chat_requests)
    await run_explain(ExplainConfig(baseline=False), run, _records(2), Clients(bad, bad, bad))
    assert len(bad.chat_requests) == n, "an unusable answer is a result: a plain rerun keeps it"

    good = FakeLLM(chat_fn=smart_chat)
    cfg = ExplainConfig(baseline=False)
    s3 = await run_explain(cfg, run, _records(2), Clients(good, good, good), retry_failed=True)
    assert s3.n_explained == 2 and s3.failed_features == [] and _stage(run)["status"] == "done"


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny cache run (random 2-layer Llama, 4 neurons)."""
    from conftest import WORDS

    root = tmp_path_factory.mktemp("cache")
    model = tiny_model_dir
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)) for i in range(30)))
    args = ["cache", "--model", str(model), "--hook", "L1/mlp_neurons", "--corpus", str(corpus), "--tokens", "600",
            "--window", "16", "--batch-size", "8", "--n-top", "12", "--n-train", "5", "--n-valid", "2",
            "--n-test-top", "3", "--features", "0-3", "--run-dir", str(root / "run"), "--threads", "1"]
    assert run_cli(args) == 0
    return root / "run"


def test_cli_exit_status_1_while_features_failed_then_0_after_a_rerun(
    cache_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import autointerp.pipeline

    llm = Switchable(down=True)
    monkeypatch.setattr(autointerp.pipeline, "open_clients", lambda config: (Clients(llm, llm, llm), []))
    args = ["explain", "--cache-run", str(cache_run), "--run-dir", str(tmp_path / "x"), "--max-records-per-split", "2"]
    assert run_cli(args) == 1
    out = capsys.readouterr().out
    assert "4 errors (failed features)" in " ".join(out.split()) and "rerun" in out
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["stages"]["explain"]["status"] == "partial"
    llm.down = False
    assert run_cli(args) == 0
    assert json.loads((tmp_path / "x" / "manifest.json").read_text())["stages"]["explain"]["status"] == "done"


async def test_a_torn_last_line_is_cut_off_when_the_run_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    llm = Switchable(down=False)
    await run_explain(CFG, run, _records(), Clients(llm, llm, llm))
    scores = run / "scores.jsonl"
    whole = scores.read_text()
    with open(scores, "a") as f:
        f.write('{"explanation_id": "toy/L0/mlp_neurons:0#0", "score": {"na')  # a kill mid-write
    await run_explain(CFG, run, _records(), Clients(llm, llm, llm))  # resume: nothing left to compute
    assert scores.read_text() == whole, "the fragment must not stay in the file"
    for name in ("records.jsonl", "explanations.jsonl", "simulations.jsonl", "scores.jsonl"):
        for line in (run / name).read_text().splitlines():
            json.loads(line)  # strict JSONL


async def test_a_dead_feature_is_not_a_failure(tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    recs = _records(3)
    dead = recs[2]
    silent = [replace(r, activations=np.zeros_like(r.activations)) for r in dead.train]
    recs[2] = replace(dead, stats=replace(dead.stats, max=0.0, frequency=0.0, mean=0.0, mean_active=0.0), train=silent)
    llm = Switchable(down=False)
    s = await run_explain(ExplainConfig(baseline=False), tmp_path / "run", recs, Clients(llm, llm, llm))
    assert s.n_explained == 2 and s.failed_features == [] and _stage(tmp_path / "run")["status"] == "done"


def test_sweep_exits_1_while_a_cell_has_failed_features_then_0_after_a_rerun(
    cache_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import autointerp.sweep

    llm = Switchable(down=True)
    monkeypatch.setattr(autointerp.sweep.PipelineRunner, "clients_for", lambda self, config: Clients(llm, llm, llm))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"name: down\nsample_run: {cache_run}\nfeatures: [0, 1]\n"
        "base: {max_records_per_split: 2, baseline: false}\ngrid: {n_top_examples: [3]}\nn_boot: 50\n"
    )
    args = ["sweep", str(spec), "--sweep-dir", str(tmp_path / "sw"), "--no-plots"]
    assert run_cli(args) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "1 of 1 cells have failed features" in out and "rerun" in out
    llm.down = False
    assert run_cli(args) == 0


async def test_a_run_resumes_under_new_execution_settings_and_settings_added_since_but_not_other_results(
    tmp_path: Path,
) -> None:
    from autointerp.rundir import RunDirError

    run = tmp_path / "run"
    llm = FakeLLM(chat_fn=smart_chat)
    await run_explain(ExplainConfig(baseline=False), run, _records(2), Clients(llm, llm, llm))
    sent = len(llm.chat_requests)
    manifest = json.loads((run / "manifest.json").read_text())
    # as a run written before range_size and records_per_prompt existed, with the old default timeout
    for k in ("range_size", "records_per_prompt"):
        del manifest["config"][k]
    manifest["config"]["timeout_s"] = 120.0
    (run / "manifest.json").write_text(json.dumps(manifest))
    s = await run_explain(ExplainConfig(baseline=False, llm_concurrency=3), run, _records(2), Clients(llm, llm, llm))
    assert s.n_explained == 2 and len(llm.chat_requests) == sent, "resumed: nothing asked again"
    config = json.loads((run / "manifest.json").read_text())["config"]
    assert (config["timeout_s"], config["llm_concurrency"], config["range_size"]) == (0.0, 3, 1024)
    with pytest.raises(RunDirError, match=r"other settings \(n_top_examples\)"):
        await run_explain(ExplainConfig(baseline=False, n_top_examples=3), run, _records(2), Clients(llm, llm, llm))
