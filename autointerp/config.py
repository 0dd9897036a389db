"""Config dataclasses whose field docstrings double as CLI help.

Write a config as a dataclass with a docstring string literal under each field::

    @dataclass(frozen=True)
    class CacheConfig:
        tokens: int = 200_000
        \"\"\"Number of corpus tokens to run through the model.\"\"\"

``field_help(CacheConfig)["tokens"]`` returns that docstring, and CLI options use it as their help, so
the documentation lives in exactly one place. ``config_to_dict`` gives the JSON form for manifests.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
from functools import cache
from typing import Any


@cache
def field_help(cls: type) -> dict[str, str]:
    """Map each dataclass field of ``cls`` (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        stmts = body.body
        for a, b in itertools.pairwise(stmts):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a (possibly nested) config dataclass, for manifests and cache keys."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"not a dataclass instance: {cfg!r}")

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)

    out = conv(cfg)
    assert isinstance(out, dict)
    return out
