"""``autointerp sources`` (list / show SAE addresses) and ``autointerp train-sae`` (the embedded SAE)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autointerp.cli.app import app
from autointerp.cli.options import config_options
from autointerp.config import field_help
from autointerp.train_sae import TrainSaeConfig

console = Console()


@app.command()
def sources(
    address: str | None = typer.Argument(None, help="An address to show, e.g. gemma2-9b/L20; omit to list all."),
    sae_dir: Path | None = typer.Option(
        None, "--sae-dir", help="Local folder laid out like the SAE's hub repo (also $AUTOINTERP_SAE_DIR)."
    ),
    all_l0: bool = typer.Option(
        False, "--all", help="With an address prefix like gemma2-9b/L20: list every width and L0."
    ),
    fetch: bool = typer.Option(
        False, "--fetch", help="Get the SAE's files now (local folder, hub cache or download) and load it."
    ),
    revision: str | None = typer.Option(
        None, "--revision", help="Hub revision (commit) to fetch instead of the registry's."
    ),
) -> None:
    """List the SAE addresses this tool knows, or show what one address resolves to."""
    from autointerp.sources.registry import find_local, iter_specs, resolve_address, site_summaries

    if address is None:
        table = Table(title=escape("SAE addresses (<family>/L<layer>[/<site>][/<width>][/l0_<N>])"))
        for col in ("address", "model", "site", "layers", "widths", "canonical L0", "hook", "format", "release"):
            table.add_column(col)
        for s in site_summaries():
            widths = ", ".join(f"[bold]{w}[/]" if w == s["default_width"] else w for w in s["widths"])
            l0 = (
                "-"
                if s["l0"] is None
                else f"{s['l0'][0]:g}-{s['l0'][1]:g}"
                if s["l0"][0] != s["l0"][1]
                else f"{s['l0'][0]:g}"
            )
            table.add_row(
                s["address"],
                s["model"],
                s["site"],
                s["layers"],
                widths,
                l0,
                s["hook"],
                s["format"] + (" (shipped)" if s["local"] else ""),
                s["release"],
            )
        console.print(table)
        console.print(
            "Neurons: <model>/L<layer>/<hook>, e.g. gemma3-270m/L6/mlp_neurons (hooks: resid_pre, resid_post, "
            "mlp_in, mlp_neurons, mlp_out, attn_out, attn_z). Default width in bold; default L0 is canonical "
            "(closest to 100). gemma3-270m/L6 is the SAE this project trained and ships (embedded); the gs2 sites "
            "are Google DeepMind's Gemma Scope 2 (hub download, or --sae-dir)."
        )
        return
    if all_l0:
        prefix = address.strip("/")
        specs = [s for s in iter_specs() if s.address == prefix or s.address.startswith(prefix + "/")]
        if specs:
            table = Table(title=f"SAEs under {prefix}")
            for col in ("address", "width", "L0", "canonical", "neuronpedia"):
                table.add_column(col)
            for sp in specs:
                table.add_row(
                    sp.address,
                    sp.width_label or "-",
                    "-" if sp.l0 is None else f"{sp.l0:g}",
                    "yes" if sp.canonical else "",
                    sp.neuronpedia or "-",
                )
            console.print(table)
            return
    spec = resolve_address(address)
    table = Table(show_header=False, title=spec.address)
    table.add_column("field", style="bold")
    table.add_column("value")
    if spec.kind == "neurons":
        table.add_row("kind", "neurons (raw hook dimensions)")
        table.add_row("model", spec.model)
        table.add_row("hook", f"{spec.hook} ({spec.hook.tl_name})")
        console.print(table)
        return
    root = find_local(spec, sae_dir)
    table.add_row("kind", "SAE")
    table.add_row("model", f"{spec.model} ({spec.model_name})")
    table.add_row("hook", f"{spec.hook} ({spec.hook.tl_name})")
    table.add_row("format", spec.format or "-")
    table.add_row("release", spec.release or "-")
    table.add_row("repo", spec.repo_id or f"shipped: {spec.local_root}")
    if spec.repo_id:
        table.add_row(
            "revision", f"{spec.revision}" + ("" if spec.revision_pinned else " (not pinned; revision=COMMIT pins one)")
        )
    table.add_row("path", spec.path or "-")
    table.add_row("d_in", str(spec.d_in))
    table.add_row("width", f"{spec.width} ({spec.width_label})")
    table.add_row("L0", "-" if spec.l0 is None else f"{spec.l0:g}" + (" (canonical)" if spec.canonical else ""))
    table.add_row("neuronpedia", spec.neuronpedia or "-")
    table.add_row(
        "local file", str(root / spec.path) if root and spec.path else "not found locally (hub download on use)"
    )
    if fetch:
        from autointerp.sources.registry import resolve_source

        src = resolve_source(address, local_dir=sae_dir, revision=revision)
        info = getattr(src, "info", {})
        table.add_row(
            "loaded",
            f"{info.get('file', '-')}: d_in {src.d_in}, {src.n_features} features, {info.get('architecture', '-')}",
        )
    console.print(table)


@app.command("train-sae")
@config_options(TrainSaeConfig, exclude=("out",))
def train_sae_cmd(
    out: Path = typer.Option(..., "--out", help=field_help(TrainSaeConfig)["out"]),
    *,
    config: TrainSaeConfig,
) -> None:
    """Train a small TopK SAE on a subject model and save it as a Gemma Scope params.npz (JumpReLU form)."""
    from autointerp.train_sae import train_and_save

    cfg = replace(config, out=str(out))
    report = train_and_save(cfg)
    table = Table(show_header=False, title=f"SAE written to {out}")
    for key, value in report.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
