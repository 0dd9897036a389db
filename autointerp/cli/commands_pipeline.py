"""``autointerp explain`` (sample if needed, explain, simulate, score), ``autointerp score`` (rescore a run)
and ``autointerp export`` (feature table as parquet / jsonl / csv / Neuronpedia JSON)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from autointerp.cli.app import app
from autointerp.cli.commands_sample import SAE_DIR_HELP, SAE_HELP
from autointerp.cli.options import config_options
from autointerp.config import field_help
from autointerp.errors import UserError
from autointerp.executor import ExecutorConfig
from autointerp.pipeline import SCORE_SETTINGS, ExplainConfig

console = Console()
log = logging.getLogger(__name__)

_H = field_help(ExplainConfig)
_HE = field_help(ExecutorConfig)
_DE = ExecutorConfig()
RETRY_FAILED_HELP = (
    "Also compute again what failed as a property of an answer (unusable labels, unparseable simulations or "
    "judge answers); failed requests are always retried."
)



def _prepare_sampling(
    model: str | None,
    hook: str | None,
    sae: str | None,
    sae_dir: Path | None,
    features: str | None,
    tokens: int,
    window: int,
    corpus: str,
    device: str,
    threads: int,
    models: Any = None,
    n_train_random: int = 0,
) -> Any:
    """Load the subject and source and check what needs them (feature range, weights); nothing is written.
    Returns a function that samples into ``<run_dir>/sample`` (the one sampling call) and returns the
    FeatureRecords (with ``n_train_random`` train-side random windows each, for the contrastive explainer). The
    loaded subject and source are added to ``models`` (a
    :class:`~autointerp.scorers.base.Models`) so scorers that need them (steering) check them now and reuse
    them later."""
    from autointerp.pipeline import RecordStream
    from autointerp.sampling import SamplingConfig, SamplingSetup, choose_features, prepare_sampling, sampling_features

    if not (sae or hook):
        raise UserError(
            "give --sample-run DIR, or --sae ADDRESS, or --model NAME with --hook HOOK (e.g. L6/mlp_neurons)"
        )
    cfg = SamplingConfig(
        tokens=tokens, window=window, features=sampling_features(features),
        n_train_random=n_train_random,
    )
    setup = SamplingSetup(model=model, hook=hook, sae=sae, sae_dir=sae_dir, corpus=corpus, device=device,
                          threads=threads)
    job = prepare_sampling(setup, cfg)
    if models is not None:
        models.add_subject(job.subject.name, job.subject)
        models.add_source(job.source.address, job.source, job.subject)

    def sample(run_dir: Path) -> Any:
        sample_run = run_dir / "sample"
        names = ", ".join(s.address for s in job.sources)
        console.print(f"sampling {tokens} tokens of {corpus} through {escape(names)} ...")
        job.run(sample_run)
        chosen = choose_features(sample_run, features) if cfg.features is None else None
        return RecordStream.of_sample_run(sample_run, chosen)

    return sample


def _load_sample_run(sample_run: Path, features: str | None) -> Any:
    """The records of ``sample_run`` as a :class:`~autointerp.pipeline.RecordStream` (read range by range)."""
    from autointerp.pipeline import RecordStream
    from autointerp.sampling import choose_features

    return RecordStream.of_sample_run(sample_run, choose_features(sample_run, features))


def _print_usage(usage: dict[str, Any]) -> None:
    """One line per role of usage.json (all sessions of the run), then the cost or why it is undefined."""
    from autointerp.llm.usage import ROLES

    for role in ROLES:
        u = usage.get(role)
        if not isinstance(u, dict) or not (u.get("requests") or u.get("cache_hits")):
            continue
        cost = u.get("cost_usd")
        console.print(
            f"{role} [dim]{escape(str(u.get('spec', '')))}[/]: {u.get('requests', 0):,} requests, "
            f"{u.get('cache_hits', 0):,} answered from the cache, {u.get('prompt_tokens', 0):,} prompt + "
            f"{u.get('completion_tokens', 0):,} completion tokens, "
            + ("cost undefined" if cost is None else f"${cost:.4f}")
        )
    total = usage.get("total")
    if isinstance(total, dict):
        cost = total.get("cost_usd")
        if cost is None:
            console.print(f"LLM cost: undefined ({escape(str(usage.get('cost_reason')))})")
        else:
            console.print(f"LLM cost: ${cost:.4f} (prices: {escape(str(usage.get('prices', '')))})")


def _print_label_checks(summary: Any) -> None:
    """The paired gain over the shuffled baseline and how much the simulations read the label, each with a
    sentence on what it means."""
    # Labels are "<name>" or "<name>@<judge>" (one per simulator setting of a run scored by several).
    comparisons = (
        ("gain over the shuffled baseline", summary.paired_gain, summary.n_paired,
         "how much better each label predicts its own feature than another feature's label does; a CI above 0 "
         "means the labels carry information about their features."),
        ("over the token-list yardstick", summary.paired_vs_yardstick, summary.n_paired_vs_yardstick,
         "how much better each label predicts its feature than the list of its five most-activating marked tokens "
         "(no LLM) does; above 0, the labels earned their LLM calls."),
    )
    for what, diffs, counts, meaning in comparisons:
        for label, d in sorted(diffs.items()):
            if label.partition("@")[0] != "correlation" or d is None:
                continue
            console.print(
                f"{escape(label)} {what} (same features, paired): {d[0]:+.3f} [{d[1]:+.2f}, {d[2]:+.2f}], "
                f"n={counts.get(label, 0)}: {meaning}"
            )
    for label, (median, n) in sorted(summary.label_prior.items()):
        console.print(
            f"{escape(label)} (median of {n}): {median:.2f}: how alike the simulations under the label and under "
            "a shuffled label are; near 1, the simulator predicts from the text alone and ignores the label."
        )
    for flag in summary.flags:
        console.print(f"[yellow]warning[/]: {escape(flag)}")


def _print_results(run_dir: Path, summary: Any) -> None:
    from autointerp.cli.results_table import MAX_ROWS, feature_table, means_table
    from autointerp.export import feature_rows

    rows = feature_rows(run_dir)
    first = ("correlation", "detection", "fuzzing", "saebench_detection")
    # Score labels are "<name>", or "<name>@<judge>" for each judge of a run scored by several.
    # Scores undefined for every feature (e.g. r_squared under --no-calibrate) get no line per feature: the means
    # table's caption names them.
    defined = [n for n in summary.scores if any(summary.n_scored.get(n, {}).values())]
    names = sorted(defined, key=lambda n: (
        first.index(n.partition("@")[0]) if n.partition("@")[0] in first else len(first), n))
    console.print(feature_table(rows, names))
    if len(rows) > MAX_ROWS:
        console.print(f"({len(rows) - MAX_ROWS} more features: see `autointerp export` or `autointerp report`)")
    console.print(means_table(summary.scores, summary.n_scored))
    for label, refused in sorted(summary.n_calibration_refused.items()):
        console.print(
            f"{escape(label)}: calibration refused for {refused['explained']} explained and "
            f"{refused['baseline']} baseline features (slope <= 0: the simulation anti-correlates, or a "
            "constant simulation); their scores are undefined and left out of the means."
        )
    _print_label_checks(summary)
    n_failed = len(summary.failed_features)
    console.print(
        f"{summary.n_explained}/{summary.n_features} features explained, "
        f"{summary.n_failed_explanations} failed explanations, {n_failed} errors (failed features)."
    )
    if n_failed:
        console.print(
            f"[red]{n_failed} feature{'s' if n_failed > 1 else ''} failed[/]: rerun the same command to retry failed "
            "LLM requests (add --retry-failed to also redo unusable answers)."
        )
    _print_usage(summary.run_usage)
    for e in summary.errors[:10]:
        console.print(f"[red]error[/] {escape(e['feature'])} ({e['stage']}): {escape(e['error'])}")
    console.print(f"run directory: {escape(str(run_dir))}")


@app.command()
@config_options(ExplainConfig, flags={"llm_cache": "--llm-cache/--no-llm-cache --cache/--no-cache"})
def explain(
    sample_run: Path | None = typer.Option(
        None, "--sample-run", "--cache-run",
        help="A run directory written by `autointerp sample` (--cache-run: its old name).",
    ),
    sae: str | None = typer.Option(None, "--sae", help=SAE_HELP),
    sae_dir: Path | None = typer.Option(None, "--sae-dir", help=SAE_DIR_HELP),
    model: str | None = typer.Option(
        None, "--model", help="Subject model, e.g. gemma3-270m; with --sae, default the SAE's own model."
    ),
    hook: str | None = typer.Option(None, "--hook", help="Hook point of the neurons, e.g. L6/mlp_neurons."),
    features: str | None = typer.Option(
        None, "--features", help="Feature ranges, e.g. 0-99,200; or random:N[,min=K][,seed=S]: N features drawn "
        "(seeded) among the sampled features that fired on at least K tokens (default 20); default all."
    ),
    tokens: int = typer.Option(50_000, "--tokens", help="Corpus tokens to sample when no --sample-run is given."),
    window: int = typer.Option(64, "--window", help="Tokens per sampled window when no --sample-run is given."),
    corpus: str = typer.Option("wiki", "--corpus", help="Corpus to sample from (wiki, lee, a file, hf:<name>)."),
    device: str = typer.Option("cpu", "--device", help="Torch device of the subject model when sampling."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory; default ~/autointerp-runs/explain-<time>."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help=RETRY_FAILED_HELP),
    shard: str | None = typer.Option(
        None, "--shard", help="Explain only part i of n (i/n, from 0/n): the i-th of n contiguous blocks of the "
        "feature ranges (--range-size) of a --sample-run, into a partial run; combine all n with `autointerp merge`."
    ),
    executor: str | None = typer.Option(
        None, "--executor", help=_HE["executor"] + " Splits the features into --workers parts (blocks of feature "
        "ranges) and merges them. Default: one process, no parts."
    ),
    workers: int = typer.Option(_DE.workers, "--workers", help=_HE["workers"]),
    ray_address: str | None = typer.Option(None, "--ray-address", help=_HE["ray_address"]),
    max_retries: int = typer.Option(_DE.max_retries, "--max-retries", help=_HE["max_retries"]),
    *,
    config: ExplainConfig,
) -> None:
    """Explain features: sample (or reuse --sample-run), explain, simulate, score; print a table.

    Rerunning the same command with the same --run-dir resumes: finished work is skipped, and LLM requests
    that failed (server down, timeouts, rate limits) are sent again. Exit status: 0 all done, 1 finished
    with failed features (rerun to retry), 2 bad input (nothing done)."""
    from autointerp.checks import check_llm_settings, check_run_dir, probe_llms
    from autointerp.paths import default_run_dir
    from autointerp.pipeline import run_explain
    from autointerp.scorers.base import Models
    from autointerp.scorers.registry import check_scorers

    part, execution = _split_options(shard, executor, workers, ray_address, max_retries)
    if part is not None and sample_run is None:
        raise UserError("--shard splits the features of a finished sample run; give --sample-run DIR "
                        "(run `autointerp sample` first)")
    models = Models(device=config.scorer_device, threads=config.threads)
    check_scorers(config, [], models)  # scorer models installed, alpha a number; sources below
    # Validate everything, then act: options, specs, keys, prices, the run directory, the endpoints; then
    # the model-dependent checks; only then is the run directory created.
    check_llm_settings(config.role_specs().values(), config.client_config())
    out = run_dir or default_run_dir("explain")
    check_run_dir(out)
    probe_llms(config.role_specs().values())
    resuming = sample_run is None and not (sae or model or hook) and (out / "records.jsonl").exists()
    sample = None
    if sample_run is None and not resuming:
        from autointerp.explain import CONTRASTIVE_POOL

        pool = CONTRASTIVE_POOL if "contrastive" in config.explainer_kinds else 0
        sample = _prepare_sampling(
            model, hook, sae, sae_dir, features, tokens, window, corpus, device, config.threads, models, pool
        )
        check_scorers(config, list(models.loaded_sources()), models)  # e.g. steering needs a decoder
    records = _load_sample_run(sample_run, features) if sample_run is not None else None
    if records is not None and not records:
        raise UserError("no feature records to explain; check --features and the sample run")
    if sample is not None:
        records = sample(out)
    if execution is not None:
        summary = _run_split(config, out, sample_run or out / "sample", features if sample_run else None,
                             execution, retry_failed)
    else:
        summary = asyncio.run(
            run_explain(config, out, records, models=models, retry_failed=retry_failed, shard=part)
        )
    _print_results(out, summary)
    if part is not None:
        console.print(f"part {part} done; when all {part.count} are, run: autointerp merge PART_DIRS... --out RUN")
    _exit_for(summary)


def _split_options(
    shard: str | None, executor: str | None, workers: int, ray_address: str | None, max_retries: int
) -> tuple[Any, Any]:
    """(the --shard part or None, the ExecutorConfig or None); UserError for bad or clashing options."""
    from autointerp.corpus import Shard
    from autointerp.executor import ExecutorConfig

    part = Shard.parse(shard) if shard else None
    if executor is None and not ray_address:
        return part, None
    execution = ExecutorConfig(executor=executor or "ray", workers=workers, ray_address=ray_address,
                               max_retries=max_retries)
    execution.validate()
    if part is not None:
        raise UserError("--shard runs one part by hand; --executor runs all of them: give only one")
    return None, execution


def _run_split(
    config: ExplainConfig, out: Path, sample_run: Path, features: str | None, execution: Any, retry_failed: bool
) -> Any:
    """Explain ``sample_run``'s features in parts with ``execution`` (a progress bar counts the feature ranges
    finished in every part), merged into ``out``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from autointerp.executor import run_explain_sharded
    from autointerp.sampling import choose_features

    feats = choose_features(sample_run, features)
    with Progress(TextColumn(f"[bold]explaining in {execution.workers} parts ({execution.executor})"), BarColumn(),
                  TextColumn("{task.completed:,.0f}/{task.total:,.0f} feature ranges"), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("explain", total=0)
        return run_explain_sharded(config, out, sample_run, feats, execution, retry_failed=retry_failed,
                                   progress=lambda d, n: bar.update(task, completed=d, total=n))


@app.command()
@config_options(ExplainConfig, include=SCORE_SETTINGS, overrides=True, param="settings")
def score(
    settings: dict[str, Any],
    run_dir: Path = typer.Argument(..., help="A run directory written by `autointerp explain`."),
    scorers: str = typer.Option("detection,fuzzing", "--scorers", help=_H["scorers"]),
    judge: str | None = typer.Option(None, "--judge", help="Judge LLM spec; default: the run's."),
    simulator: str | None = typer.Option(None, "--simulator", help="Simulator LLM spec; default: the run's."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help=RETRY_FAILED_HELP),
) -> None:
    """Score the explanations of an existing run with (other) scorers; adds rows to scores.jsonl. Scorer and
    LLM client settings not given keep the run's own.

    Exit status as `explain`: 0 all done, 1 with failed features (rerun to retry), 2 bad input."""
    from autointerp.checks import check_llm_settings, probe_llms
    from autointerp.llm.base import ClientConfig
    from autointerp.pipeline import run_score

    specs = [s for s in (judge, simulator) if s]
    check_llm_settings(specs, ClientConfig())
    probe_llms(specs)
    ExplainConfig.from_dict({**settings, "scorers": scorers})  # bad values (alpha, negatives, scorers): exit 2 now
    summary = asyncio.run(
        run_score(run_dir, scorers, judge=judge, simulator=simulator, settings=settings, retry_failed=retry_failed)
    )
    _print_results(run_dir, summary)
    _exit_for(summary)


def _exit_for(summary: Any) -> None:
    """Exit status 1 when any feature failed (a rerun retries what failed for transient reasons)."""
    if summary.failed_features:
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `autointerp explain`."),
    fmt: str = typer.Option(
        "parquet", "--format", help="parquet, jsonl, csv; or neuronpedia / neuronpedia-activations (JSONL rows of "
        "Neuronpedia's Explanation / Activation tables; .gz compresses)."),
    out: Path = typer.Option(..., "--out", help="Output file."),
    neuronpedia_user: str | None = typer.Option(
        None, "--neuronpedia-user", help="Your Neuronpedia user id, written as authorId / creatorId (required "
        "columns of Neuronpedia's tables)."),
) -> None:
    """Export one row per feature: ids, explanation, explainer, prompt hash, every score, activation stats."""
    from autointerp.export import export_run

    n = export_run(run_dir, fmt, out, neuronpedia_user=neuronpedia_user)
    console.print(f"wrote {n} rows to {escape(str(out))}")
