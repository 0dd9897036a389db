"""Checks a command runs before it acts: validate everything, then act.

Every check raises a one-line :class:`~autointerp.errors.UserError` naming the problem and the fix, and
none leaves a file behind. The order a command follows:

1. checks that need no model: option values, LLM specs, keys and prices (:func:`check_llm_settings`), the
   run directory (:func:`check_run_dir`), then one quick probe of each HTTP endpoint (:func:`probe_llms`);
2. load the subject model and the feature source, then the checks that need them: feature ranges against
   the source's width (``sampling.selected_features``) and the source's weights (:func:`check_source`);
3. only then create the run directory and start work.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import ClientConfig

log = logging.getLogger(__name__)


def check_run_dir(path: Path, option: str = "--run-dir") -> None:
    """UserError unless ``path`` is a directory, or can be made one, that this process can write into.

    Nothing stays behind: the deepest existing folder on the way is probed with a temporary file that is
    deleted at once (permission bits alone are no answer: root ignores them, a read-only mount does not).
    ``option`` is the CLI option that names the folder (for the message)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"run directory {p} is a file, not a folder; pass a folder path with {option}")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"run directory {p} cannot be made: {probe} is a file; pass another {option}")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".autointerp-write-check-"):
            pass
    except OSError as e:
        raise UserError(
            f"run directory {p} is not writable ({probe}: {e.strerror or e}); pass a {option} you can write to"
        ) from e


def check_llm_settings(specs: Iterable[str], config: ClientConfig) -> None:
    """The price table is readable, and each LLM spec parses strictly and has its key (no network)."""
    from autointerp.llm.factory import check_spec
    from autointerp.llm.usage import PriceTable

    PriceTable.load(config.prices_path)
    for spec in dict.fromkeys(specs):
        check_spec(spec, config)


def probe_llms(specs: Iterable[str], timeout_s: float = 10.0) -> None:
    """One quick ``/v1/models`` probe of each HTTP endpoint among ``specs`` (see ``factory.probe_endpoint``)."""
    from autointerp.llm.factory import probe_endpoint

    for spec in dict.fromkeys(specs):
        probe_endpoint(spec, timeout_s)


def check_source(source: Any, features: Sequence[int] | None) -> None:
    """Read the weights the sampling pass will use (``features`` of ``source``, None for all) by encoding one
    zero vector: corrupt, NaN or Inf weights fail now, before the run directory exists, not mid-pass."""
    import torch

    x = torch.zeros(1, int(source.d_in))
    with torch.no_grad():
        source.encode(x, list(features) if features is not None else None)
