"""``autointerp sample`` (old name, kept as an alias: ``autointerp cache``): one streaming pass over a corpus
that samples examples for every feature of a source; ``--shard i/n`` samples one of n slices, and
``autointerp merge`` combines the shards into records identical to an unsharded run's."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autointerp.cli.app import app
from autointerp.cli.options import config_options
from autointerp.config import config_to_dict, field_help
from autointerp.errors import UserError
from autointerp.executor import ExecutorConfig
from autointerp.sampling import SamplingConfig, SamplingResult, SamplingSetup

console = Console()
log = logging.getLogger(__name__)

_HS = field_help(SamplingSetup)
SAE_HELP = _HS["sae"]
SAE_DIR_HELP = _HS["sae_dir"]

_HE = field_help(ExecutorConfig)
_DE = ExecutorConfig()

STAGE = "sample"


@config_options(SamplingSetup, param="setup")
@config_options(SamplingConfig, exclude=("features",))
def sample(
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default: a new sample-<time> folder)."),
    features: str = typer.Option(None, "--features", help="Feature subset, e.g. 0-99,200,300-310 (default: all)."),
    shard: str = typer.Option(
        None, "--shard", help="Sample only slice i of n (i/n, from 0/n) and write a mergeable partial state; "
        "combine all n with `autointerp merge`."
    ),
    executor: str = typer.Option(
        None, "--executor", help=_HE["executor"] + " Default: one pass in this process, no shards."
    ),
    workers: int = typer.Option(_DE.workers, "--workers", help=_HE["workers"]),
    ray_address: str = typer.Option(None, "--ray-address", help=_HE["ray_address"]),
    max_retries: int = typer.Option(_DE.max_retries, "--max-retries", help=_HE["max_retries"]),
    *,
    config: SamplingConfig,
    setup: SamplingSetup,
) -> None:
    """Sample top, quantile and random examples and statistics for every feature, in one pass over a corpus."""
    from autointerp.checks import check_run_dir
    from autointerp.corpus import Shard
    from autointerp.paths import default_run_dir
    from autointerp.rundir import RunDir
    from autointerp.sampling import feature_rule, parse_feature_ranges, prepare_sampling

    if feature_rule(features) is not None:
        raise UserError(f"--features {features} chooses among sampled features: use it with `autointerp explain`; "
                        "`sample` takes feature ranges (e.g. 0-99,200) or samples every feature")
    cfg = replace(config, features=tuple(parse_feature_ranges(features)) if features else None)
    cfg.validate()
    part = Shard.parse(shard) if shard else None
    execution = None
    if executor is not None or ray_address:
        execution = ExecutorConfig(executor=executor or "ray", workers=workers, ray_address=ray_address,
                                   max_retries=max_retries)
        execution.validate()
        if part is not None:
            raise UserError("--shard runs one shard by hand; --executor runs all of them: give only one")
    subject_name, address = setup.address()
    run_path = run_dir or default_run_dir(STAGE if part is None else f"{STAGE}-shard{part.index}of{part.count}")
    manifest_cfg = {
        "model": subject_name,
        "source": address,
        "corpus": setup.corpus,
        "text_field": setup.text_field,
        "dtype": setup.dtype,
        "sampling": config_to_dict(cfg),
        "shard": None if part is None else str(part),
        "shards": None if execution is None else execution.workers,
    }
    check_run_dir(run_path)
    ray_start = None
    if execution is not None and execution.executor == "ray":
        from autointerp.executor import start_ray

        # Ray starts in the background while the command resolves its inputs; the checks then run on its workers
        ray_start = start_ray(execution, execution.workers * setup.threads)
    # Bad input (model, hook, SAE, corpus, features, weights) fails here, before anything is written. With an
    # executor the shards load the model themselves: the local one checks here without the subject's weights,
    # Ray checks on its workers (the driver loads no model or tokenizer; each worker keeps its job).
    job = None
    try:
        if ray_start is not None and execution is not None:
            from autointerp.executor import check_on_workers

            described = check_on_workers(setup, cfg, execution, ray_start)
        else:
            job = prepare_sampling(setup, cfg, weights=execution is None)
            described = job.describe()
    except BaseException:
        if ray_start is not None:
            ray_start.stop()
        raise
    run = RunDir.create(run_path, STAGE, manifest_cfg)
    console.print(f"run dir [bold]{escape(str(run.path))}[/]")
    # A pass that already finished here is reused only over the same corpus (checked before anything is
    # written or printed: a changed corpus is refused, and the finished run's records and stage stay as they are)
    finished = job.finished(run.path, part) if job is not None else None
    if finished is not None:
        _print_result(f"sample: {address} (already done)", finished, cfg.window)
        return
    run.update_manifest(described)
    run.set_stage(STAGE, "running")
    start = time.perf_counter()
    try:
        with Progress(
            TextColumn("[bold]sampling" + ("" if part is None else f" shard {part}")
                       + ("" if execution is None else f" ({execution.workers} {execution.executor} shards)")),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False, refresh_per_second=2,
        ) as bar:
            total = cfg.tokens if part is None else -(-cfg.tokens // part.count)
            task = bar.add_task("sampling", total=total, rate="")
            first: dict[str, float] = {}

            def progress(done: int, _total: int) -> None:
                now = time.perf_counter()
                if not first:
                    first.update(t=now, done=float(done))
                elapsed = now - first["t"]
                rate = f"{(done - first['done']) / elapsed:,.0f} tok/s" if elapsed > 0 else ""
                bar.update(task, completed=min(done, total), rate=rate)

            if execution is None:
                assert job is not None
                result = job.run(run.path, progress=progress, shard=part)
            else:
                from autointerp.executor import run_sharded

                result = run_sharded(setup, cfg, run.path, execution, progress=progress, ray_start=ray_start)
    except BaseException as e:  # never leave the stage "running": say how it ended
        run.set_stage(STAGE, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      error=f"{type(e).__name__}: {e}")
        raise
    seconds = time.perf_counter() - start
    run.update_manifest({"content_fingerprint": result.content_fingerprint})
    run.set_stage(STAGE, "done", tokens=result.n_tokens, windows=result.n_windows, features=result.n_features,
                  dead=result.n_dead, tokens_per_s=result.tokens_per_s, seconds=round(seconds, 2))
    _print_result(f"sample: {address}" + ("" if part is None else f" (shard {part})"), result, cfg.window)
    if part is not None:
        console.print(f"shard {part} done; when all {part.count} are, run: autointerp merge SHARD_DIRS... --out RUN")


def _print_result(title: str, result: SamplingResult, window: int) -> None:
    table = Table(title=escape(title), show_header=False)
    table.add_row("features", f"{result.n_features:,}")
    if result.n_dead is not None:
        table.add_row("dead features", f"{result.n_dead:,} ({result.n_dead / max(1, result.n_features):.1%})")
    table.add_row("tokens", f"{result.n_tokens:,} in {result.n_windows:,} windows of {window}")
    rate = "-" if result.tokens_per_s is None else f"{result.tokens_per_s:,.0f}"
    table.add_row("tokens/s", rate + (" (resumed)" if result.resumed else ""))
    table.add_row("records", escape(str(result.records_dir)))
    console.print(table)


app.command("sample")(sample)
app.command(
    "cache", help="Alias of `autointerp sample` (its old name): sample examples and statistics for every feature."
)(sample)


@app.command()
def merge(
    parts: list[Path] = typer.Argument(
        ..., help="The run directories of all n shards (`sample --shard i/n`) or parts (`explain --shard i/n`)."
    ),
    out: Path = typer.Option(..., "--out", help="New run directory for the merged run."),
) -> None:
    """Merge the shards of one sampling pass into records identical to an unsharded run's, or the parts of a
    split explain run into one explain run (records, explanations, simulations, scores; usage summed)."""
    from autointerp.rundir import RunDir, is_explain_part
    from autointerp.sampling import check_shard_runs, config_from_dict, merge_shard_runs

    explain_parts = [is_explain_part(p) for p in parts]
    if any(explain_parts):
        if not all(explain_parts):
            bad = parts[explain_parts.index(False)]
            RunDir.open(bad)  # not a run directory at all: says so
            raise UserError(f"{bad} is not a part of a split explain run; merge sampling shards and explain "
                            "parts separately")
        from autointerp.cli.commands_pipeline import _print_results
        from autointerp.pipeline import summarize
        from autointerp.rundir import merge_explain_runs

        merge_explain_runs(parts, out)
        _print_results(out, summarize(out))
        return
    per_source = check_shard_runs(parts)  # every check before anything is written
    loaded = per_source[0]
    fp = loaded[0]["fingerprint"]
    cfg = config_from_dict(fp["config"])
    source = ",".join(lo[0]["fingerprint"]["source"] for lo in per_source)
    manifest_cfg = {"model": fp["model"], "source": source, "corpus": fp["corpus"]["corpus"],
                    "sampling": config_to_dict(cfg), "shards": len(loaded)}
    run = RunDir.create(out, STAGE, manifest_cfg)
    run.set_stage(STAGE, "running")
    result = merge_shard_runs(parts, run.path)
    run.update_manifest({"model": fp["model"], "source": source, "corpus": fp["corpus"],
                         "content_fingerprint": result.content_fingerprint,
                         "merged_from": [str(p) for p in parts]})
    run.set_stage(STAGE, "done", tokens=result.n_tokens, windows=result.n_windows, features=result.n_features,
                  dead=result.n_dead, merged_shards=len(loaded))
    _print_result(f"merged {len(loaded)} shards: {source}", result, cfg.window)
