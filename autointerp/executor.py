"""Executors of a sharded sampling pass: the n shards in this process, or as Ray tasks; then one exact merge.

A shard is a plain function of (setup, config, run directory, shard) -> ``<run>/shards/<i>-of-<n>/`` holding
its mergeable partial state (autointerp/sampling.py). Running it here or as a Ray task changes nothing else:

- ``local``: the shards one after the other in this process (a rerun skips finished shards and resumes a
  cut one from its checkpoint);
- ``ray``: one Ray task per shard, with Ray's own retries (``max_retries``): a task whose worker dies is
  started again by Ray and resumes from the shard's checkpoint. On a GPU machine each task asks for one GPU
  (``num_gpus=1``); on CPUs each asks for ``threads`` CPUs and sets that many torch threads. Ray starts
  in-process by default (``ray.init(num_cpus=workers * threads)``; the workers inherit this process's
  environment), or joins ``ray_address``. ``start_ray`` does that in a background thread, so Ray's start-up
  overlaps the checks that come before any shard. The checks themselves run on the workers
  (:func:`check_on_workers`: every input check of ``prepare_sampling``, with the model loaded), so the
  driver never loads the model or its tokenizer, and a worker keeps the job it prepared for its shard
  task instead of loading the model again.

Then the partial states are merged into ``<run>/records``, identical to an unsharded run's records. Each shard
writes ``worker.json`` (host, pid, start time) beside its state, so a cluster run shows where each shard ran,
and ``progress.json`` (its tokens so far, about once a second), so the driver's progress bar counts the
tokens of every worker.
Ray is the optional extra ``autointerp[ray]``.

The LLM stage splits the same way by feature range (:func:`run_explain_sharded`): part i of n explains the
i-th of n contiguous blocks of feature ranges of a sample run into ``<run>/parts/<i>-of-<n>/`` (a partial
explain run, resumable range by range), as a local call or a Ray task with Ray's retries; the parts are then
merged into ``<run>`` (:func:`autointerp.rundir.merge_explain_runs`), equal to an unsplit run's files. A rerun
skips finished parts; the driver's progress counts the ranges finished in every part's manifest.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autointerp.corpus import Shard
from autointerp.errors import UserError
from autointerp.sampling import (
    SamplingConfig,
    SamplingResult,
    SamplingSetup,
    merge_shard_runs,
    prepare_sampling,
    source_dirs,
)

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")

ShardProgress = Callable[[int, int], None]
"""Called with (done, in all): tokens sampled over every shard for a sampling pass, feature ranges for the
LLM stage."""

PROGRESS_FILE = "progress.json"
"""A shard's tokens sampled so far (rewritten about once a second), read by the driver's progress display."""


@dataclass(frozen=True)
class ExecutorConfig:
    """How the shards of a pass are run."""

    executor: str = "local"
    """local (shards one after the other in this process) or ray (one Ray task per shard)."""
    workers: int = 2
    """Shards to cut the pass into, run in parallel with --executor ray (on a GPU machine: one per GPU)."""
    ray_address: str | None = None
    """Address of an existing Ray cluster (e.g. ray://head:10001 or auto); default: start Ray in-process."""
    max_retries: int = 3
    """Times Ray restarts a shard whose worker died (it resumes from the shard's checkpoint)."""

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise UserError(f"unknown --executor {self.executor!r}; use one of: {', '.join(EXECUTORS)}")
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if self.max_retries < 0:
            raise UserError(f"--max-retries must be at least 0, got {self.max_retries}")
        if self.ray_address and self.executor != "ray":
            raise UserError("--ray-address only applies with --executor ray; drop it, or add --executor ray")


_PREPARED: dict[str, Any] = {}
"""The sampling job this (worker) process prepared in :func:`check_shard_inputs`, by its inputs: the shard task
that lands on the same worker reuses it (model, tokenizer and source loaded once per worker)."""


def _job_key(setup: SamplingSetup, config: SamplingConfig) -> str:
    from autointerp.config import config_to_dict

    # CUDA_VISIBLE_DEVICES: a job prepared on one GPU is never reused by a task given another
    return json.dumps([repr(setup), config_to_dict(config), os.environ.get("CUDA_VISIBLE_DEVICES")], default=str)


def check_shard_inputs(setup: SamplingSetup, config: SamplingConfig) -> dict[str, Any]:
    """Prepare the sampling job here (every input check of ``prepare_sampling``, weights loaded), keep it for
    a shard task of this process, and return its manifest entries (``SamplingJob.describe``)."""
    job = prepare_sampling(setup, config)
    _PREPARED.clear()  # one job per worker process
    _PREPARED[_job_key(setup, config)] = job
    return job.describe()


def check_on_workers(
    setup: SamplingSetup, config: SamplingConfig, execution: ExecutorConfig, ray_start: RayStart | None = None
) -> dict[str, Any]:
    """Check the inputs of a Ray pass on the workers (one :func:`check_shard_inputs` task per worker, with the
    shards' resources) and return the job's manifest entries. Bad input raises its UserError (one line) before
    anything is written; the workers keep their prepared jobs for the shard tasks that follow."""
    ray = _ray_up(setup, execution, ray_start)
    task = _remote(ray, check_shard_inputs, setup, execution)
    refs = {task.remote(setup, config): Shard(i, execution.workers) for i in range(execution.workers)}
    return _gather(ray, refs, None, "input check on the worker of shard")[0]


def _ray_up(setup: SamplingSetup, execution: ExecutorConfig, ray_start: RayStart | None) -> Any:
    """Ray, once the background start-up (if any) is done, with CPUs for every worker."""
    if ray_start is not None:
        ray_start.wait()
    return _start_ray(execution, execution.workers * setup.threads)


def _remote(ray: Any, fn: Callable[..., Any], setup: SamplingSetup, execution: ExecutorConfig) -> Any:
    """``fn`` as a Ray task with a shard's resources (one GPU, or ``threads`` CPUs) and Ray's retries."""
    gpu = setup.device.startswith("cuda")
    return ray.remote(num_cpus=0 if gpu else setup.threads, num_gpus=1 if gpu else 0,
                      max_retries=execution.max_retries)(fn)


def shard_dir(run_dir: Path, shard: Shard) -> Path:
    return Path(run_dir) / "shards" / f"{shard.index:03d}-of-{shard.count:03d}"


def run_shard(setup: SamplingSetup, config: SamplingConfig, run_dir: Path, shard: Shard,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Sample one shard into ``shard_dir(run_dir, shard)`` (resumable; a finished shard returns at once). Its
    tokens sampled so far go to ``PROGRESS_FILE`` there about once a second (and to ``progress``, in-process).
    A job this process prepared for the same inputs (:func:`check_shard_inputs`) is reused."""
    job = _PREPARED.get(_job_key(setup, config))
    reused = job is not None
    job = job or prepare_sampling(setup, config)
    out = shard_dir(run_dir, shard)
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker.json").write_text(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "shard": str(shard), "device": setup.device, "threads": setup.threads, "reused_checked_job": reused,
    }))
    last = [0.0]

    def report(done: int, _total: int) -> None:
        if progress is not None:
            progress(done)
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            _write_progress(out, done)

    res = job.run(out, shard=shard, progress=report)
    _write_progress(out, res.n_tokens)
    return {"shard": str(shard), "n_tokens": res.n_tokens, "n_windows": res.n_windows, "seconds": res.seconds,
            "resumed": res.resumed}


def _write_progress(out: Path, tokens: int) -> None:
    tmp = out / f".{PROGRESS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"tokens": int(tokens)}))
    os.replace(tmp, out / PROGRESS_FILE)


def shards_progress(run_dir: Path, shards: list[Shard]) -> int:
    """Tokens sampled so far over ``shards`` (from their progress files; a shard not started counts 0)."""
    done = 0
    for s in shards:
        try:
            done += int(json.loads((shard_dir(run_dir, s) / PROGRESS_FILE).read_text())["tokens"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return done


def _finished(setup: SamplingSetup, config: SamplingConfig, run_dir: Path) -> SamplingResult | None:
    """The merged records of an earlier run of the same pass in ``run_dir``, if finished."""
    from autointerp.config import config_to_dict
    from autointerp.errors import RunDirError
    from autointerp.record_store import load_records_meta

    dirs = source_dirs(run_dir)
    if not all((d / "records" / "meta.json").exists() for d in dirs):
        return None
    metas = [load_records_meta(d) for d in dirs]
    if any(m.get("config") != config_to_dict(config) for m in metas) or sorted(
        str(m.get("source")) for m in metas
    ) != sorted(setup.address()[1].split(",")):
        raise RunDirError(f"{run_dir} holds records of another configuration; use a new --run-dir")
    m = metas[0]
    return SamplingResult(dirs[0] / "records", int(m["n_tokens"]), int(m["n_windows"]),
                          sum(len(x["features"]) for x in metas), sum(int(x["n_dead"]) for x in metas), 0.0, None,
                          True, m.get("content_fingerprint"))


@dataclass
class RayStart:
    """A Ray start-up running in a background thread (``start_ray``)."""

    ready: threading.Event
    errors: list[BaseException]

    def wait(self) -> None:
        """Block until Ray is up; raise the start-up's error, if any."""
        self.ready.wait()
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        """Wait for the start-up, then shut Ray down (a command that fails its checks leaves no Ray behind)."""
        self.ready.wait()
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()


def start_ray(execution: ExecutorConfig, num_cpus: int) -> RayStart:
    """``_start_ray`` in a background thread, returning at once: Ray's start-up (~10 s on 2 cores) then
    overlaps the checks and the model load that precede the shards. A missing Ray extra fails here; an error
    of the start-up itself is raised by ``RayStart.wait`` (``run_sharded``)."""
    _ray()
    handle = RayStart(threading.Event(), [])

    def start() -> None:
        try:
            _start_ray(execution, num_cpus)
        except BaseException as e:  # handed to the waiting thread
            handle.errors.append(e)
        finally:
            handle.ready.set()
        # Ray's processes die with the thread that started them (PR_SET_PDEATHSIG): this one stays (parked,
        # daemon) until the process ends.
        threading.Event().wait()

    threading.Thread(target=start, name="ray-start", daemon=True).start()
    return handle


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'autointerp[ray]' (or use --executor local)") from None
    return ray


def run_sharded(
    setup: SamplingSetup,
    config: SamplingConfig,
    run_dir: Path,
    execution: ExecutorConfig,
    progress: ShardProgress | None = None,
    ray_start: RayStart | None = None,
) -> SamplingResult:
    """Sample ``execution.workers`` shards with the chosen executor, then merge them into ``run_dir/records``
    (``ray_start``: Ray already starting, from ``start_ray``)."""
    execution.validate()
    done = _finished(setup, config, run_dir)
    if done is not None:
        if ray_start is not None:
            ray_start.wait()
        return done
    n = execution.workers
    shards = [Shard(i, n) for i in range(n)]
    t0 = time.perf_counter()
    summaries: list[dict[str, Any]] = []
    if execution.executor == "local":
        for s in shards:
            others = shards_progress(run_dir, [x for x in shards if x != s])
            summaries.append(run_shard(setup, config, run_dir, s, _offset(progress, others, config.tokens)))
    else:
        summaries = _run_ray(setup, config, run_dir, shards, execution, progress, ray_start)
    parts = [shard_dir(run_dir, s) for s in shards]
    result = merge_shard_runs(parts, run_dir)
    seconds = time.perf_counter() - t0
    tokens_run = sum(int(s["n_tokens"]) for s in summaries if not s["resumed"])
    return replace(result, seconds=seconds, tokens_per_s=tokens_run / seconds if tokens_run and seconds > 0 else None)


def _offset(progress: ShardProgress | None, others: int, total: int) -> Callable[[int], None] | None:
    """One in-process shard's token count as the whole pass's progress (the other shards' tokens added)."""
    if progress is None:
        return None
    report = progress
    return lambda done: report(others + done, total)


def _run_ray(
    setup: SamplingSetup,
    config: SamplingConfig,
    run_dir: Path,
    shards: list[Shard],
    execution: ExecutorConfig,
    progress: ShardProgress | None,
    ray_start: RayStart | None,
) -> list[dict[str, Any]]:
    ray = _ray_up(setup, execution, ray_start)
    task = _remote(ray, run_shard, setup, execution)
    refs = {task.remote(setup, config, Path(run_dir).resolve(), s): s for s in shards}
    return _gather(ray, refs, None if progress is None else
                   lambda _: progress(shards_progress(run_dir, shards), config.tokens))


def _start_ray(execution: ExecutorConfig, num_cpus: int) -> Any:
    """Ray, joined to ``execution.ray_address`` or started in-process with ``num_cpus`` CPUs (once)."""
    ray = _ray()
    if not ray.is_initialized():
        if execution.ray_address:
            ray.init(address=execution.ray_address, log_to_driver=False)
        else:
            # No runtime_env: the local workers inherit this environment (PYTHONPATH included), and a
            # runtime_env makes Ray start fresh workers for it (~6 s more on 2 cores).
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def _gather(ray: Any, refs: dict[Any, Shard], tick: Callable[[int], None] | None, what: str = "shard"
            ) -> list[dict[str, Any]]:
    """The results of the tasks ``refs`` (ref -> shard) as they finish; ``tick(tasks done)`` after each and
    every 2 s. A task's UserError is raised as such (one line)."""
    pending = list(refs)
    done: list[dict[str, Any]] = []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)
        for ref in ready:
            try:
                done.append(ray.get(ref))
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, UserError):
                    raise cause from None
                raise
            log.info("%s %s finished (%d of %d)", what, refs[ref], len(done), len(refs))
        if tick is not None:
            tick(len(done))
    return done


# -- the LLM stage: feature ranges ----------------------------------------------------------------------
ExplainClients = Callable[[Any], Any]
"""ExplainConfig -> pipeline.Clients, built inside each task (default: from the config's LLM specs)."""


def part_dir(run_dir: Path, shard: Shard) -> Path:
    """Where part ``shard`` of a split explain run in ``run_dir`` writes its partial run."""
    return Path(run_dir) / "parts" / f"{shard.index:03d}-of-{shard.count:03d}"


def run_explain_part(config: Any, run_dir: Path, sample_run: Path, features: list[int] | None, shard: Shard,
                     clients: ExplainClients | None = None, retry_failed: bool = False) -> dict[str, Any]:
    """Explain part ``shard`` (a block of feature ranges) of ``sample_run``'s records into
    ``part_dir(run_dir, shard)`` (resumable: finished ranges are skipped)."""
    import asyncio

    from autointerp.pipeline import RecordStream, run_explain

    out = part_dir(run_dir, shard)
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker.json").write_text(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "shard": str(shard),
    }))
    stream = RecordStream.of_sample_run(sample_run, features)
    summary = asyncio.run(run_explain(config, out, stream, clients(config) if clients else None, shard=shard,
                                      retry_failed=retry_failed))
    return {"shard": str(shard), "failed_features": summary.failed_features, "n_features": summary.n_features}


def explain_parts_progress(run_dir: Path, n: int) -> tuple[int, int]:
    """(feature ranges finished, feature ranges in all) over the parts of a split explain run, from the
    parts' manifests (cheap: for a progress display across workers)."""
    from autointerp.rundir import RunDir

    done = total = 0
    for i in range(n):
        m = part_dir(run_dir, Shard(i, n)) / "manifest.json"
        if m.exists():
            stage = RunDir(m.parent).manifest().get("stages", {}).get("explain", {})
            done += int(stage.get("ranges_done") or 0)
            total += int(stage.get("ranges") or 0)
    return done, total


def run_explain_sharded(
    config: Any,
    run_dir: Path,
    sample_run: Path,
    features: list[int] | None,
    execution: ExecutorConfig,
    progress: ShardProgress | None = None,
    clients: ExplainClients | None = None,
    retry_failed: bool = False,
) -> Any:
    """Explain ``sample_run``'s features in ``execution.workers`` parts (blocks of feature ranges) with the
    chosen executor, then merge them into ``run_dir``; returns the merged run's RunSummary. A rerun skips
    finished parts (and, within a part, finished ranges). ``progress`` gets (ranges done, ranges in all)."""
    from autointerp.pipeline import RecordStream, shard_ranges, summarize
    from autointerp.rundir import FINISHED, RunDir, merge_explain_runs

    execution.validate()
    stream = RecordStream.of_sample_run(sample_run, features)
    n_ranges = len(stream.ranges(config.range_size))
    n = max(1, min(execution.workers, n_ranges))
    shards = [Shard(i, n) for i in range(n)]
    for s in shards:
        shard_ranges(stream.ranges(config.range_size), s)  # bad input before any work

    def finished(s: Shard) -> bool:
        m = part_dir(run_dir, s) / "manifest.json"
        return m.exists() and RunDir(m.parent).manifest().get("stages", {}).get("explain", {}).get("status") == "done"

    todo = [s for s in shards if retry_failed or not finished(s)]
    summaries: list[dict[str, Any]] = []
    if execution.executor == "local":
        for s in todo:
            summaries.append(run_explain_part(config, run_dir, sample_run, features, s, clients, retry_failed))
            if progress is not None:
                progress(*explain_parts_progress(run_dir, n))
    elif todo:
        summaries = _run_ray_explain(config, run_dir, sample_run, features, todo, execution, progress, clients,
                                     retry_failed)
    parts = [part_dir(run_dir, s) for s in shards]
    for p in parts:  # a part finished with failed features is merged as such (a rerun of the run retries them)
        status = RunDir(p).manifest().get("stages", {}).get("explain", {}).get("status")
        if status not in FINISHED:
            raise UserError(f"part {p} did not finish (explain stage: {status}); rerun the command")
    merge_explain_runs(parts, run_dir)
    failed = [f for s in summaries for f in s["failed_features"]]
    return summarize(run_dir, failed_features=failed)


def _run_ray_explain(
    config: Any,
    run_dir: Path,
    sample_run: Path,
    features: list[int] | None,
    shards: list[Shard],
    execution: ExecutorConfig,
    progress: ShardProgress | None,
    clients: ExplainClients | None,
    retry_failed: bool,
) -> list[dict[str, Any]]:
    threads = int(config.threads)
    ray = _start_ray(execution, execution.workers * threads)
    task = ray.remote(num_cpus=threads, max_retries=execution.max_retries)(run_explain_part)
    run_dir = Path(run_dir).resolve()
    refs = {task.remote(config, run_dir, Path(sample_run).resolve(), features, s, clients, retry_failed): s
            for s in shards}
    n = shards[0].count
    return _gather(ray, refs, None if progress is None else lambda _: progress(*explain_parts_progress(run_dir, n)))
