"""Executors: the local one and Ray give the unsharded run's records; a Ray worker killed mid-shard is
retried by Ray, resumes from its checkpoint, and the merged records still equal an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autointerp.corpus import Shard
from autointerp.errors import UserError
from autointerp.executor import ExecutorConfig, run_sharded, shard_dir
from autointerp.record_store import read_arrays
from autointerp.sampling import SamplingConfig, SamplingSetup, prepare_sampling

CFG = SamplingConfig(tokens=2500, window=16, batch_size=2, n_top=10, n_train=4, n_valid=2, n_test_top=3,
                     n_quantile_bins=3, per_quantile_bin=2, n_random=6, checkpoint_every=1, features=tuple(range(16)))


def _setup(model: Path, corpus: Path) -> SamplingSetup:
    return SamplingSetup(model=str(model), hook="L1/mlp_neurons", corpus=str(corpus), threads=1)


def _assert_same(a: Path, b: Path) -> None:
    x, y = read_arrays(a), read_arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_local_executor_equals_one_pass_and_a_rerun_skips_it(tiny_model_dir: Path, tiny_corpus_file: Path,
                                                             tmp_path: Path) -> None:
    setup = _setup(tiny_model_dir, tiny_corpus_file)
    prepare_sampling(setup, CFG).run(tmp_path / "one")
    res = run_sharded(setup, CFG, tmp_path / "loc", ExecutorConfig(executor="local", workers=3))
    _assert_same(tmp_path / "one", tmp_path / "loc")
    assert not res.resumed and all(shard_dir(tmp_path / "loc", Shard(i, 3)).exists() for i in range(3))
    again = run_sharded(setup, CFG, tmp_path / "loc", ExecutorConfig(executor="local", workers=3))
    assert again.resumed and again.n_windows == res.n_windows


def test_progress_counts_the_tokens_of_every_shard(tiny_model_dir: Path, tiny_corpus_file: Path,
                                                   tmp_path: Path) -> None:
    """The driver's progress is tokens over all shards (not shards finished): it only grows, and ends at the
    merged run's token count, which each shard's progress file also sums to."""
    setup = _setup(tiny_model_dir, tiny_corpus_file)
    seen: list[tuple[int, int]] = []
    res = run_sharded(setup, CFG, tmp_path / "loc", ExecutorConfig(executor="local", workers=3),
                      progress=lambda d, n: seen.append((d, n)))
    done = [d for d, _ in seen]
    assert len(seen) > 3 and done == sorted(done) and {n for _, n in seen} == {CFG.tokens}
    assert done[-1] == res.n_tokens
    files = [json.loads((shard_dir(tmp_path / "loc", Shard(i, 3)) / "progress.json").read_text()) for i in range(3)]
    assert sum(f["tokens"] for f in files) == res.n_tokens and all(f["tokens"] > 0 for f in files)


def test_a_worker_reuses_the_job_its_check_prepared(tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks of a Ray pass run on the workers (``check_shard_inputs``); the shard task that follows on
    the same worker samples with the job they prepared instead of loading the model again, and a task with
    other inputs prepares its own."""
    import autointerp.executor as ex

    monkeypatch.setattr(ex, "_PREPARED", {})
    setup = _setup(tiny_model_dir, tiny_corpus_file)
    described = ex.check_shard_inputs(setup, CFG)
    assert described["model"] == str(tiny_model_dir) and described["corpus"]["window"] == CFG.window
    prepared: list[Any] = []
    real = ex.prepare_sampling
    monkeypatch.setattr(ex, "prepare_sampling", lambda *a, **k: prepared.append(a) or real(*a, **k))
    ex.run_shard(setup, CFG, tmp_path / "r", Shard(0, 2))
    assert prepared == []
    assert json.loads((ex.shard_dir(tmp_path / "r", Shard(0, 2)) / "worker.json").read_text())["reused_checked_job"]
    ex.run_shard(setup, replace(CFG, seed=1), tmp_path / "s", Shard(0, 2))
    assert len(prepared) == 1


def test_executor_settings_are_checked() -> None:
    for bad in (ExecutorConfig(executor="dask"), ExecutorConfig(workers=0), ExecutorConfig(ray_address="auto")):
        with pytest.raises(UserError):
            bad.validate()


@pytest.mark.slow  # about 1.5 min on 2 busy cores (Ray start-up, a killed worker, the retry)
def test_ray_worker_killed_mid_shard_is_retried_and_merges_exactly(tiny_model_dir: Path, tiny_corpus_file: Path,
                                                                   tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    setup = _setup(tiny_model_dir, tiny_corpus_file)
    prepare_sampling(setup, CFG).run(tmp_path / "one")
    run = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    killed: dict[str, Any] = {}

    def kill_shard0() -> None:
        target = shard_dir(run, Shard(0, 2))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ckpt = target / "records" / ".checkpoint.pt"
            worker = target / "worker.json"
            if ckpt.exists() and worker.exists() and not (target / "records" / "partial.pt").exists():
                pid = int(json.loads(worker.read_text())["pid"])
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_shard0, daemon=True)
    watcher.start()
    try:
        res = run_sharded(setup, CFG, run, ExecutorConfig(executor="ray", workers=2, max_retries=3))
    finally:
        watcher.join(timeout=5)
        ray.shutdown()
    assert "pid" in killed, "the watcher never saw shard 0 mid-way"
    rerun_pid = int(json.loads((shard_dir(run, Shard(0, 2)) / "worker.json").read_text())["pid"])
    assert rerun_pid != killed["pid"]  # Ray started the shard again in another worker
    assert res.n_windows > 0
    _assert_same(tmp_path / "one", run)


def test_ray_executor_without_ray_is_one_line_naming_the_extra(
    tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    with pytest.raises(UserError, match=r"autointerp\[ray\]") as e:
        run_sharded(_setup(tiny_model_dir, tiny_corpus_file), CFG, tmp_path / "r", ExecutorConfig(executor="ray"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r" / "shards").exists()


@pytest.mark.slow  # two Ray start-ups (~20 s each on 2 busy cores)
def test_sample_cli_with_ray_starting_beside_the_checks_fails_bad_input_cleanly_and_merges_exactly(
    tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path
) -> None:
    """`sample --executor ray` starts Ray in a background thread while it checks the input: bad input is
    still one line, exit 2, nothing written, and no Ray left running; good input gives the one-pass records."""
    ray = pytest.importorskip("ray")
    from autointerp.cli import main

    setup = _setup(tiny_model_dir, tiny_corpus_file)
    cfg = replace(CFG, features=None)
    prepare_sampling(setup, cfg).run(tmp_path / "one")
    args = ["sample", "--model", str(tiny_model_dir), "--hook", "L1/mlp_neurons", "--corpus", str(tiny_corpus_file),
            "--threads", "1", "--tokens", str(cfg.tokens), "--window", str(cfg.window), "--batch-size",
            str(cfg.batch_size), "--n-top", str(cfg.n_top), "--n-train", str(cfg.n_train), "--n-valid",
            str(cfg.n_valid), "--n-test-top", str(cfg.n_test_top), "--n-quantile-bins", str(cfg.n_quantile_bins),
            "--per-quantile-bin", str(cfg.per_quantile_bin), "--n-random", str(cfg.n_random),
            "--checkpoint-every", str(cfg.checkpoint_every), "--executor", "ray", "--workers", "2"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--features", "9999", "--run-dir", str(tmp_path / "bad")])
    assert e.value.code == 2
    assert not (tmp_path / "bad").exists()
    assert not ray.is_initialized()
    try:
        main([*args, "--run-dir", str(tmp_path / "ray")])
    finally:
        ray.shutdown()
    _assert_same(tmp_path / "one", tmp_path / "ray")
