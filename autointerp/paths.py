"""Where autointerp keeps things: the cache directory, default run directories, and prompt files.

Nothing is ever written into the current working directory unless the user passes a path there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The user cache directory: ``$AUTOINTERP_CACHE``, else ``$XDG_CACHE_HOME/autointerp``, else
    ``~/.cache/autointerp``. Converted models, assembled GGUF files and the LLM response cache live here."""
    env = os.environ.get("AUTOINTERP_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "autointerp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_root() -> Path:
    """Parent of default run directories: ``$AUTOINTERP_RUNS``, else ``~/autointerp-runs``."""
    env = os.environ.get("AUTOINTERP_RUNS")
    return Path(env).expanduser() if env else Path.home() / "autointerp-runs"


def default_run_dir(command: str) -> Path:
    """A fresh run directory name for ``command`` under :func:`runs_root`, e.g. ``cache-20261122-031500``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs_root() / f"{command}-{stamp}"


def prompts_dir() -> Path:
    """Prompt templates: ``$AUTOINTERP_PROMPTS``, else the ``prompts/`` folder of the project."""
    env = os.environ.get("AUTOINTERP_PROMPTS")
    return Path(env).expanduser() if env else PROJECT_ROOT / "prompts"


def datasets_dir() -> Path:
    """The project's ``datasets/`` folder (puzzles, embedded SAE, dataset cards)."""
    return PROJECT_ROOT / "datasets"
