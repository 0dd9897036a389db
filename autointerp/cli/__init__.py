"""The ``autointerp`` command line. Each stage's commands live in their own module below."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from autointerp.cli import (  # noqa: F401  (each module registers its commands)
    commands_llm,
    commands_pipeline,
    commands_report,
    commands_sample,
    commands_sources,
)
from autointerp.cli.app import app
from autointerp.errors import UserError

err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in (
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "openai",
        "anthropic",
        "urllib3",
        "filelock",
        "huggingface_hub",
        "transformers",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; a UserError becomes one line on stderr and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    setup_logging(verbose="-v" in args or "--verbose" in args)
    try:
        rc = app(args=args, standalone_mode=False)
    except UserError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command to resume", highlight=False)
        sys.exit(130)
    except Exception as e:
        # Usage errors of the (vendored) click raise here in non-standalone mode: show them, exit 2.
        show = getattr(e, "show", None)
        if callable(show) and hasattr(e, "exit_code"):
            show()
            sys.exit(int(getattr(e, "exit_code", 2)) or 2)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)
