"""Errors a user can fix. The CLI prints their message on one line and exits 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the problem and the fix, in one line."""


class RunDirError(UserError):
    """The run directory is missing, incomplete or belongs to a different configuration."""
