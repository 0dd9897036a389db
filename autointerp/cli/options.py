"""CLI options generated from config dataclasses, so each setting is declared once: in its config class.

``@config_options(ExplainConfig)`` on a typer command whose signature has a parameter ``config:
ExplainConfig`` replaces that parameter, for typer, by one option per dataclass field: the flag is the field
name with dashes (``n_top_examples`` -> ``--n-top-examples``; booleans get ``--x/--no-x``), the default is
the field's default and the help is the docstring written under the field (:func:`autointerp.config.field_help`).
The command receives the built config (its ``__post_init__`` validation runs as usual).

``flags`` renames a field's flag (keeping an older flag name working, e.g. ``llm_cache`` -> ``--cache/--no-cache``),
``exclude`` leaves fields out (settings the command derives itself), ``include`` keeps only some fields, and
``defaults`` changes a field's default for one command.

``overrides=True`` serves commands that change some settings of an existing run (``autointerp score``): every
option defaults to unset, and the command receives only the options given, as a ``dict`` of field name to
value, to lay over the run's own config (which then validates them).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import typer

from autointerp.config import field_help

F = TypeVar("F", bound=Callable[..., Any])


def flag_for(name: str, annotation: Any) -> list[str]:
    """The flag of a field: ``--name-with-dashes``, ``--x/--no-x`` for booleans."""
    dashed = name.replace("_", "-")
    return [f"--{dashed}/--no-{dashed}"] if annotation is bool else [f"--{dashed}"]


def config_options(
    cls: type,
    *,
    param: str = "config",
    flags: Mapping[str, str] | None = None,
    exclude: Collection[str] = (),
    include: Collection[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    overrides: bool = False,
) -> Callable[[F], F]:
    """Declare the fields of the config dataclass ``cls`` as the options of a typer command (see the module
    doc); the command's ``param`` parameter receives ``cls(**options)``, or with ``overrides`` the dict of the
    options given. Fields not declared as options keep their defaults."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    flags = dict(flags or {})
    defaults = dict(defaults or {})
    fields = [
        f for f in dataclasses.fields(cls)
        if f.init and f.name not in exclude and (include is None or f.name in include)
    ]
    unknown = (set(flags) | set(defaults)) - {f.name for f in fields}
    unknown |= set(include or ()) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} options: {sorted(unknown)} are not declared fields")
    if overrides and defaults:
        raise TypeError("overrides: every option defaults to unset; defaults do not apply")

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        fn_hints = typing.get_type_hints(fn)
        if param not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {param!r} to receive a {cls.__name__}")
        params = [
            p.replace(annotation=fn_hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != param
        ]
        taken = {p.name for p in params}
        names: list[str] = []
        for f in fields:
            if f.name in taken:
                raise TypeError(f"{fn.__name__}: option {f.name} is declared twice (by hand and by {cls.__name__})")
            annotation = hints[f.name]
            if overrides:
                default = None
            elif f.name in defaults:
                default = defaults[f.name]
            elif f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = ...
            decl = flags[f.name].split() if f.name in flags else flag_for(f.name, annotation)
            option = typer.Option(default, *decl, help=helps.get(f.name, ""))
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=annotation | None if overrides else annotation))
            names.append(f.name)

        @functools.wraps(fn)
        def command(*args: Any, **options: Any) -> Any:
            settings = {n: options.pop(n) for n in names}
            if overrides:
                given = {n: v for n, v in settings.items() if v is not None}
                return fn(*args, **{param: given}, **options)
            return fn(*args, **{param: cls(**settings)}, **options)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {
            **{p.name: p.annotation for p in params},
            "return": fn_hints.get("return", sig.return_annotation),
        }
        return typing.cast(F, command)

    return decorate
