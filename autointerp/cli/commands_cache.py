"""``autointerp cache``: one streaming pass over a corpus that samples examples for every feature of a source."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autointerp.cli.app import app
from autointerp.config import config_to_dict, field_help
from autointerp.errors import UserError
from autointerp.sampling import SamplingConfig

console = Console()
log = logging.getLogger(__name__)

_H = field_help(SamplingConfig)
SAE_HELP = "SAE registry address (see `autointerp sources`) or the path of a local SAE file or folder."
SAE_DIR_HELP = "Local folder laid out like the SAE's hub repo (files of a registry --sae address)."
_D = SamplingConfig()


def _source_for(model: str | None, hook: str | None, sae: str | None, sae_dir: Path | None) -> tuple[str, str, Any]:
    """(subject model name, source address, resolver) from the CLI options; nothing is loaded yet.

    ``sae`` is a registry address, or the path of a local SAE file or folder (any format ``load_sae``
    reads). ``model`` with ``sae`` is the subject model the SAE is applied to (default: the SAE's own)."""
    from autointerp.hooks import HookPoint

    if sae:
        local = Path(sae).expanduser()
        if local.exists() or sae.startswith(("/", "~", "./", "../")):
            return _local_sae(local, model, hook)
        if sae_dir is not None and not sae_dir.expanduser().is_dir():
            raise UserError(f"--sae-dir {sae_dir} is not a folder; pass the folder laid out like the SAE's hub repo")
        try:
            from autointerp.sources.registry import resolve_address, resolve_source
        except ImportError as e:  # the registry is optional until it lands
            raise UserError(f"--sae needs the SAE registry (autointerp.sources.registry): {e}") from e
        spec = resolve_address(sae)
        if hook and HookPoint.parse(hook) != spec.hook:
            raise UserError(f"--hook {hook} does not match {sae}, which reads {spec.hook}; drop --hook")
        subject_name = model or spec.model

        def resolver(subject: Any) -> Any:
            return resolve_source(sae, local_dir=sae_dir, subject=subject)

        return subject_name, spec.address, resolver
    if sae_dir is not None:
        raise UserError("--sae-dir only applies with --sae ADDRESS; drop it, or add --sae")
    if not hook:
        raise UserError("give --hook (e.g. --hook L6/mlp_neurons) for neurons, or --sae ADDRESS for an SAE")
    hp = HookPoint.parse(hook)
    name = model or "gemma3-270m"

    def neurons(subject: Any) -> Any:
        from autointerp.sources.neurons import NeuronSource

        return NeuronSource(name, hp, subject.hook_dim(hp))

    return name, f"{name}/{hp}", neurons


def _local_sae(path: Path, model: str | None, hook: str | None) -> tuple[str, str, Any]:
    """A local SAE file or folder: its header is read now (format, width, hook); weights when sampling."""
    from autointerp.sources.formats import check_compatible, load_sae

    sae = load_sae(path, hook=hook)
    name = model or sae.model_name
    if not name:
        raise UserError(f"--sae {path} does not name the model it was trained on; pass --model NAME")

    def resolver(subject: Any) -> Any:
        check_compatible(sae, int(subject.hook_dim(sae.hook)), name)
        return sae

    return name, sae.address, resolver


@app.command()
def cache(
    model: str = typer.Option(
        None, "--model", help="Subject model: embedded gemma3-270m (default) or smollm2-135m, a local folder, or a "
        "Hugging Face id. With --sae, defaults to the SAE's model."
    ),
    hook: str = typer.Option(None, "--hook", help="Hook point for neurons, e.g. L6/mlp_neurons or L6/resid_post."),
    sae: str = typer.Option(None, "--sae", help=SAE_HELP),
    sae_dir: Path = typer.Option(None, "--sae-dir", help=SAE_DIR_HELP),
    corpus: str = typer.Option(
        "wiki", "--corpus", help="wiki (embedded), lee, a .txt/.jsonl/.parquet file, or hf:<dataset>[:split]."
    ),
    text_field: str = typer.Option("text", "--text-field", help="Text field/column of .jsonl/.parquet/hf corpora."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default: a new cache-<time> folder)."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype: float32, bfloat16 or float16."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch."),
    features: str = typer.Option(None, "--features", help="Feature subset, e.g. 0-99,200,300-310 (default: all)."),
    tokens: int = typer.Option(_D.tokens, "--tokens", help=_H["tokens"]),
    window: int = typer.Option(_D.window, "--window", help=_H["window"]),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", help=_H["batch_size"]),
    n_top: int = typer.Option(_D.n_top, "--n-top", help=_H["n_top"]),
    n_train: int = typer.Option(_D.n_train, "--n-train", help=_H["n_train"]),
    n_valid: int = typer.Option(_D.n_valid, "--n-valid", help=_H["n_valid"]),
    n_test_top: int = typer.Option(_D.n_test_top, "--n-test-top", help=_H["n_test_top"]),
    n_quantile_bins: int = typer.Option(_D.n_quantile_bins, "--n-quantile-bins", help=_H["n_quantile_bins"]),
    per_quantile_bin: int = typer.Option(_D.per_quantile_bin, "--per-quantile-bin", help=_H["per_quantile_bin"]),
    n_random: int = typer.Option(_D.n_random, "--n-random", help=_H["n_random"]),
    seed: int = typer.Option(_D.seed, "--seed", help=_H["seed"]),
    checkpoint_every: int = typer.Option(_D.checkpoint_every, "--checkpoint-every", help=_H["checkpoint_every"]),
) -> None:
    """Sample top, quantile and random examples and statistics for every feature, in one pass over a corpus."""
    from autointerp.checks import check_run_dir, check_source
    from autointerp.corpus import load_corpus
    from autointerp.paths import default_run_dir
    from autointerp.rundir import RunDir
    from autointerp.sampling import parse_feature_ranges, run_sampling, selected_features
    from autointerp.subject import load_subject

    cfg = SamplingConfig(
        tokens=tokens, window=window, batch_size=batch_size, n_top=n_top, n_train=n_train, n_valid=n_valid,
        n_test_top=n_test_top, n_quantile_bins=n_quantile_bins, per_quantile_bin=per_quantile_bin,
        n_random=n_random, seed=seed, features=tuple(parse_feature_ranges(features)) if features else None,
        checkpoint_every=checkpoint_every,
    )
    cfg.validate()
    subject_name, address, make_source = _source_for(model, hook, sae, sae_dir)
    run_path = run_dir or default_run_dir("cache")
    manifest_cfg = {
        "model": subject_name,
        "source": address,
        "corpus": corpus,
        "text_field": text_field,
        "dtype": dtype,
        "sampling": config_to_dict(cfg),
    }
    check_run_dir(run_path)
    # Bad input (model, hook, SAE, corpus) fails here, before anything is written to the run directory.
    subject = load_subject(subject_name, device=device, dtype=dtype, threads=threads)
    source = make_source(subject).to(subject.device)
    windows = load_corpus(corpus, subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=cfg.seed,
                          text_field=text_field)
    check_source(source, selected_features(cfg, source))
    run = RunDir.create(run_path, "cache", manifest_cfg)
    console.print(f"run dir [bold]{escape(str(run.path))}[/]")
    run.update_manifest({
        "model": subject_name,
        "source": address,
        "hook": str(source.hook),
        "corpus": windows.describe(),
        "seeds": {"sampling": cfg.seed},
        "device": device,
        "threads": threads,
    })
    run.set_stage("cache", "running")
    start = time.perf_counter()
    try:
        with Progress(
            TextColumn("[bold]sampling"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("sampling", total=cfg.tokens, rate="")
            first: dict[str, float] = {}

            def progress(done: int, total: int) -> None:
                now = time.perf_counter()
                if not first:
                    first.update(t=now, done=float(done))
                elapsed = now - first["t"]
                rate = f"{(done - first['done']) / elapsed:,.0f} tok/s" if elapsed > 0 else ""
                bar.update(task, completed=min(done, total), rate=rate)

            result = run_sampling(subject, source, windows, cfg, run.path, progress=progress)
    except BaseException as e:  # never leave the stage "running": say how it ended
        run.set_stage("cache", "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      error=f"{type(e).__name__}: {e}")
        raise
    seconds = time.perf_counter() - start
    run.set_stage("cache", "done", tokens=result.n_tokens, windows=result.n_windows, features=result.n_features,
                  dead=result.n_dead, tokens_per_s=result.tokens_per_s, seconds=round(seconds, 2))

    table = Table(title=f"cache: {escape(address)}", show_header=False)
    table.add_row("features", f"{result.n_features:,}")
    table.add_row("dead features", f"{result.n_dead:,} ({result.n_dead / max(1, result.n_features):.1%})")
    table.add_row("tokens", f"{result.n_tokens:,} in {result.n_windows:,} windows of {cfg.window}")
    rate = "-" if result.tokens_per_s is None else f"{result.tokens_per_s:,.0f}"
    table.add_row("tokens/s", rate + (" (resumed)" if result.resumed else ""))
    table.add_row("records", escape(str(result.records_dir)))
    console.print(table)
