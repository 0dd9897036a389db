"""CLI commands of this stage (registered on the shared app)."""

from __future__ import annotations

from autointerp.cli.app import app  # noqa: F401
