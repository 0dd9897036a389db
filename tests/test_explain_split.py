"""The LLM stage splits by feature range: the parts of a split explain run (``explain --shard i/n``, or the
local and Ray executors) merge into files equal to an unsplit run's (records, explanations, simulations,
scores; usage summed per role); a rerun skips finished ranges; the pipeline holds one range of records at a
time; `merge` refuses overlapping, missing, repeated, mixed or unfinished parts with one line (exit 2) and
writes nothing."""

from __future__ import annotations

import gc
import json
import os
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fake_llm import FakeLLM
from test_bad_input import assert_one_line_error, run_cli
from test_pipeline import _records, smart_chat

from autointerp.corpus import Shard
from autointerp.errors import UserError
from autointerp.llm.base import ChatRequest
from autointerp.pipeline import Clients, ExplainConfig, RecordStream, run_explain
from autointerp.records import FeatureRecord
from autointerp.rundir import RunDir, load_run_usage, merge_explain_runs, read_jsonl

CFG = ExplainConfig(range_size=2, max_records_per_split=2, scorers="simulation,detection", classifier_examples=3)
FILES = ("records.jsonl", "explanations.jsonl", "simulations.jsonl", "scores.jsonl")


def fake_clients(config: Any = None) -> Clients:
    """The deterministic fake LLM in every role (module level: Ray tasks build it in their workers)."""
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    return Clients(fake, fake, fake)


def _strip(row: Any) -> Any:
    """A row without what differs between two identical runs: wall times."""
    if isinstance(row, dict):
        return {k: _strip(v) for k, v in row.items() if k != "seconds"}
    if isinstance(row, list):
        return [_strip(v) for v in row]
    return row


def _rows(run: Path, name: str) -> list[str]:
    return sorted(json.dumps(_strip(r), sort_keys=True) for r in read_jsonl(run / name))


def _usage(run: Path) -> dict[str, tuple[int, int, int]]:
    usage = load_run_usage(run)
    return {role: (u["requests"], u["prompt_tokens"], u["completion_tokens"])
            for role, u in usage.items() if role in ("explainer", "simulator", "judge")}


def assert_same_run(a: Path, b: Path) -> None:
    for name in FILES:
        ra, rb = _rows(a, name), _rows(b, name)
        assert ra and ra == rb, f"{name} differs between {a.name} and {b.name}"
    assert _usage(a) == _usage(b)


async def test_merged_parts_equal_the_unsplit_run(tmp_path: Path) -> None:
    records = _records(6)  # 3 ranges of 2 features
    await run_explain(CFG, tmp_path / "full", records, fake_clients())
    assert json.loads((tmp_path / "full" / "manifest.json").read_text())["stages"]["explain"]["ranges"] == 3
    for n in (1, 2, 3):
        parts = [tmp_path / f"n{n}" / f"part{i}" for i in range(n)]
        for i, p in enumerate(parts):
            await run_explain(CFG, p, RecordStream.of(records), fake_clients(), shard=Shard(i, n))
        merge_explain_runs(parts[::-1], tmp_path / f"merged{n}")  # the order given does not matter
        assert_same_run(tmp_path / "full", tmp_path / f"merged{n}")
        stage = RunDir.open(tmp_path / f"merged{n}").manifest()["stages"]["explain"]
        assert stage["status"] == "done" and stage["merged_parts"] == n
        parts_stage = [RunDir.open(p).manifest()["stages"]["explain"] for p in parts]
        assert sum(s["ranges_done"] for s in parts_stage) == sum(s["ranges"] for s in parts_stage) == 3
    # the merged run is a run like any other: resuming it sends nothing
    fake = FakeLLM(spec="local:fake", chat_fn=smart_chat)
    await run_explain(CFG, tmp_path / "merged3", None, Clients(fake, fake, fake))
    assert fake.chat_requests == [] and fake.logprob_requests == []


async def test_a_rerun_skips_finished_ranges(tmp_path: Path) -> None:
    records = _records(6)

    broken = [True]

    def chat(req: ChatRequest) -> str:
        if broken[0] and "zzfail" in req.messages[-1].content:
            raise RuntimeError("explainer exploded")
        return smart_chat(req)

    records[4].train[0].tokens[0] = "zzfail"  # the explainer fails on feature 4: the last range is not finished
    first = FakeLLM(spec="local:fake", chat_fn=chat)
    s1 = await run_explain(CFG, tmp_path / "r", records, Clients(first, first, first))
    assert s1.failed_features == ["toy/L0/mlp_neurons:4"]
    manifest = RunDir.open(tmp_path / "r").manifest()
    assert len(manifest["ranges_done"]) == 2 and manifest["stages"]["explain"]["status"] == "partial"
    broken[0] = False
    good = FakeLLM(spec="local:fake", chat_fn=chat)
    s2 = await run_explain(CFG, tmp_path / "r", records, Clients(good, good, good))
    assert s2.failed_features == [] and s2.n_explained == 6
    explained = {r.messages[-1].content for r in good.chat_requests if "summarize" in r.messages[0].content.lower()}
    assert len(explained) == 1, "only the unfinished range's failed feature is explained again"
    assert len(RunDir.open(tmp_path / "r").manifest()["ranges_done"]) == 3


async def test_the_pipeline_holds_one_range_of_records_at_a_time(tmp_path: Path) -> None:
    stored = [r.to_json() for r in _records(8)]
    made: list[weakref.ref[FeatureRecord]] = []
    most = [0]

    def load(ids: Any) -> Any:
        for row in stored:
            if row["id"] in set(ids):
                r = FeatureRecord.from_json(row)  # a fresh object, as a store read makes it
                made.append(weakref.ref(r))
                yield r

    def chat(req: ChatRequest) -> str:
        gc.collect()
        most[0] = max(most[0], sum(w() is not None for w in made))
        return smart_chat(req)

    fake = FakeLLM(spec="local:fake", chat_fn=chat)
    stream = RecordStream([str(row["id"]) for row in stored], load)
    summary = await run_explain(CFG, tmp_path / "r", stream, Clients(fake, fake, fake))
    assert summary.n_explained == 8
    assert 0 < most[0] <= CFG.range_size, f"{most[0]} records alive at once; a range holds {CFG.range_size}"


async def test_bad_parts_are_refused_with_one_line_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _records(6)
    for n in (2, 3):
        for i in range(n):
            await run_explain(CFG, tmp_path / f"s{i}of{n}", records, fake_clients(), shard=Shard(i, n))
    await run_explain(replace(CFG, seed=1), tmp_path / "seed1", records, fake_clients(), shard=Shard(1, 3))
    await run_explain(CFG, tmp_path / "unfinished", records, fake_clients(), shard=Shard(2, 3))
    RunDir.open(tmp_path / "unfinished").set_stage("explain", "running")
    await run_explain(CFG, tmp_path / "whole", records, fake_clients())
    await run_explain(CFG, tmp_path / "other-records", _records(7)[1:], fake_clients(), shard=Shard(2, 3))
    p = {name: str(tmp_path / name) for name in
         ("s0of3", "s1of3", "s2of3", "s0of2", "s1of2", "seed1", "unfinished", "whole", "other-records")}
    cases = [
        ([p["s0of3"], p["s1of2"], p["s2of3"]], "overlap"),
        ([p["s0of3"], p["s2of3"]], "missing"),
        ([p["s0of3"], p["s1of3"], p["s1of3"], p["s2of3"]], "twice"),
        ([p["s0of3"], p["seed1"], p["s2of3"]], "different runs (their config differ)"),
        ([p["s0of3"], p["s1of3"], p["other-records"]], "different runs (their features differ)"),
        ([p["s0of3"], p["s1of3"], p["unfinished"]], "unfinished"),
        ([p["s0of3"], p["whole"]], "not a part of a split explain run"),
        ([p["s0of3"], str(tmp_path / "nothing")], "not a run directory"),
    ]
    for parts, words in cases:
        capsys.readouterr()
        assert run_cli(["merge", *parts, "--out", str(tmp_path / "m")]) == 2, words
        err = capsys.readouterr().err
        assert_one_line_error(err)
        assert words in " ".join(err.split()), err
        assert not (tmp_path / "m").exists()
    capsys.readouterr()
    assert run_cli(["merge", p["s1of2"], p["s0of2"], "--out", str(tmp_path / "m")]) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "m")
    # a part resumed as a whole run, or a whole run as a part, is refused before anything is written
    for path, shard in ((tmp_path / "s0of2", None), (tmp_path / "whole", Shard(0, 2))):
        before = (path / "manifest.json").read_text()
        with pytest.raises(UserError, match="--shard"):
            await run_explain(CFG, path, records, fake_clients(), shard=shard)
        assert (path / "manifest.json").read_text() == before
    with pytest.raises(UserError, match="gets no features"):
        await run_explain(CFG, tmp_path / "empty", records, fake_clients(), shard=Shard(3, 4))
    assert not (tmp_path / "empty").exists()


@pytest.fixture()
def sample_run(tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path) -> Path:
    args = ["sample", "--model", str(tiny_model_dir), "--hook", "L1/mlp_neurons", "--corpus", str(tiny_corpus_file),
            "--tokens", "600", "--window", "16", "--batch-size", "8", "--n-top", "12", "--n-train", "5",
            "--n-valid", "2", "--n-test-top", "3", "--features", "0-5", "--run-dir", str(tmp_path / "sample"),
            "--threads", "1"]
    assert run_cli(args) == 0
    return tmp_path / "sample"


EXPLAIN = ["--range-size", "2", "--max-records-per-split", "2", "--scorers", "simulation", "--threads", "1"]


def test_cli_parts_and_the_local_executor_merge_to_the_unsplit_run(
    sample_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import autointerp.pipeline

    monkeypatch.setattr(autointerp.pipeline, "open_clients", lambda config: (fake_clients(), []))
    base = ["explain", "--sample-run", str(sample_run), *EXPLAIN]
    assert run_cli([*base, "--run-dir", str(tmp_path / "full")]) == 0
    for i in range(2):
        assert run_cli([*base, "--shard", f"{i}/2", "--run-dir", str(tmp_path / f"p{i}")]) == 0
    assert run_cli(["merge", str(tmp_path / "p0"), str(tmp_path / "p1"), "--out", str(tmp_path / "m")]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "m")
    run = tmp_path / "local"
    assert run_cli([*base, "--executor", "local", "--workers", "3", "--run-dir", str(run)]) == 0
    assert_same_run(tmp_path / "full", run)
    assert sorted(p.name for p in (run / "parts").iterdir()) == ["000-of-003", "001-of-003", "002-of-003"]
    capsys.readouterr()
    assert run_cli([*base, "--executor", "local", "--workers", "3", "--run-dir", str(run)]) == 0  # rerun: skipped
    assert_same_run(tmp_path / "full", run)
    for bad, words in (
        (["--shard", "3/2"], "bad --shard '3/2'"),
        (["--shard", "0/2", "--executor", "local"], "give only one"),
        (["--shard", "5/6"], "gets no features"),
    ):
        capsys.readouterr()
        assert run_cli([*base, *bad, "--run-dir", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert_one_line_error(err)
        assert words in " ".join(err.split()), err
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # Ray start-up: about 30 s on 2 busy cores
def test_ray_executor_explains_parts_as_tasks_and_merges_them(sample_run: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from autointerp.executor import ExecutorConfig, run_explain_sharded
    from autointerp.pipeline import RecordStream

    cfg = ExplainConfig(range_size=2, max_records_per_split=2, scorers="simulation", threads=1)
    full = tmp_path / "full"
    import asyncio

    asyncio.run(run_explain(cfg, full, RecordStream.of_sample_run(sample_run), fake_clients()))
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), tests])}})
    seen: list[tuple[int, int]] = []
    try:
        execution = ExecutorConfig(executor="ray", workers=2)
        run_explain_sharded(cfg, tmp_path / "ray", sample_run, None, execution,
                            progress=lambda d, n: seen.append((d, n)), clients=fake_clients)
        assert_same_run(full, tmp_path / "ray")
        pids = {json.loads((tmp_path / "ray" / "parts" / p / "worker.json").read_text())["pid"]
                for p in ("000-of-002", "001-of-002")}
        assert os.getpid() not in pids  # the parts ran in Ray's workers
        assert seen and seen[-1] == (3, 3)  # progress over both workers' ranges
        before = (tmp_path / "ray" / "scores.jsonl").read_text()
        run_explain_sharded(cfg, tmp_path / "ray", sample_run, None, execution, clients=fake_clients)  # rerun
        assert (tmp_path / "ray" / "scores.jsonl").read_text() == before
    finally:
        ray.shutdown()
