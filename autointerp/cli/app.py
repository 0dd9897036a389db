"""The typer application object, shared by the command modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="autointerp",
    help=(
        "Explain what the features of a language model mean, and score the explanations.\n\n"
        "Stages: sample (sample activations; old name: cache) -> explain (label + simulate + score) -> score / "
        "export / sweep / report. Every run writes its own run directory with a manifest."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    """Explain what the features of a language model mean, and score the explanations."""


@app.command()
def version() -> None:
    """Print autointerp's version and the versions of its main dependencies."""
    from rich.console import Console

    from autointerp.rundir import package_versions

    console = Console()
    for name, v in package_versions().items():
        console.print(f"{name:14s} {v or '-'}")
