"""Prompt templates: loading, rendering and hashing.

Every prompt lives in a file under ``prompts/`` (see :func:`autointerp.paths.prompts_dir`); code never
holds a prompt as a string literal. Templates are Jinja2 with ``StrictUndefined`` (a missing variable is
an error, not an empty string).

Chat templates hold several messages; each message starts with a marker line of its own::

    === system ===
    You explain neurons ...
    === user ===
    {{ examples }}

Completion templates (no marker line) render to one plain string. A template's hash (first 16 hex
digits of the sha256 of its file text) is recorded in the run manifest and in every explanation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from autointerp.errors import UserError
from autointerp.llm.base import ChatMessage, Role
from autointerp.paths import prompts_dir
from autointerp.rundir import short_hash

_MARKER = re.compile(r"^=== (system|user|assistant) ===[ \t]*$", re.MULTILINE)
_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, trim_blocks=True
)


@dataclass(frozen=True)
class PromptTemplate:
    """One template file."""

    name: str
    """File name relative to the prompts folder, e.g. ``explain_token_activation_pair.j2``."""
    text: str
    """The file's text, as read."""

    @property
    def hash(self) -> str:
        """First 16 hex digits of the sha256 of the file text."""
        return short_hash(self.text)

    def render(self, variables: dict[str, Any]) -> str:
        """Render as one string (completion templates)."""
        try:
            return _compiled(self.text).render(**variables)
        except jinja2.UndefinedError as e:
            raise UserError(f"prompt template {self.name}: {e}; pass that variable or fix the template") from e

    def render_chat(self, variables: dict[str, Any]) -> tuple[ChatMessage, ...]:
        """Render and split at the ``=== role ===`` marker lines into chat messages."""
        rendered = self.render(variables)
        parts = _MARKER.split(rendered)
        # parts = [preamble, role1, body1, role2, body2, ...]
        if parts[0].strip():
            raise UserError(f"prompt template {self.name}: text before the first '=== role ===' line; remove it")
        messages: list[ChatMessage] = []
        for i in range(1, len(parts) - 1, 2):
            role: Role = parts[i]  # type: ignore[assignment]
            messages.append(ChatMessage(role=role, content=parts[i + 1].strip("\n")))
        if not messages:
            raise UserError(f"prompt template {self.name} has no '=== user ===' message; add one")
        return tuple(messages)


@cache
def _compiled(text: str) -> jinja2.Template:
    """The template ``text`` compiled once (compiling took a third of an explain run's CPU time with a fast LLM)."""
    return _ENV.from_string(text)


@cache
def _load(path: Path, mtime: float) -> str:
    return path.read_text(encoding="utf-8")


def load_template(name: str, directory: Path | None = None) -> PromptTemplate:
    """Load ``name`` from ``directory`` (default: the prompts folder)."""
    path = (directory or prompts_dir()) / name
    if not path.is_file():
        raise UserError(f"prompt template {path} not found; check the name or set AUTOINTERP_PROMPTS")
    return PromptTemplate(name=name, text=_load(path, path.stat().st_mtime))

