"""``autointerp llm ask / cache-stats / cache-clear``: try an LLM spec, inspect or clear the response cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autointerp.cli.app import app
from autointerp.cli.options import config_options
from autointerp.config import field_help
from autointerp.llm.base import ChatMessage, ChatRequest, ClientConfig

console = Console()
llm_app = typer.Typer(name="llm", help="Try an LLM spec and manage the LLM response cache.", no_args_is_help=True)
app.add_typer(llm_app, name="llm")

_H = field_help(ClientConfig)


@llm_app.command("ask")
@config_options(
    ClientConfig,
    include=("timeout_s", "max_attempts", "threads", "cache", "cache_path", "prices_path"),
    flags={"timeout_s": "--timeout", "prices_path": "--prices"},
)
def ask(
    spec: str = typer.Argument(
        ...,
        help="LLM spec, e.g. local:qwen2.5-coder-1.5b, openai:gpt-4o-mini, "
        "anthropic:MODEL, openai-compatible:http://127.0.0.1:8080/v1/MODEL",
    ),
    prompt: str = typer.Argument(..., help="The user message."),
    system: str = typer.Option("", help="An optional system message."),
    max_tokens: int = typer.Option(256, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
    seed: int | None = typer.Option(None, help="Sampling seed (part of the cache key)."),
    *,
    config: ClientConfig,
) -> None:
    """Send one chat request and print the reply and its usage (tokens, requests, cache hits, cost)."""
    from autointerp.llm.factory import make_client

    cfg = config
    messages = ((ChatMessage("system", system),) if system else ()) + (ChatMessage("user", prompt),)
    request = ChatRequest(messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed)

    async def run() -> None:
        client = make_client(spec, cfg)
        try:
            response = await client.chat(request)
        finally:
            await client.aclose()
        console.print(escape(response.text), highlight=False, soft_wrap=True)
        u = client.meter.total
        cost, reason = client.meter.cost_usd()
        cost_text = f"${cost:.6f}" if cost is not None else f"undefined ({reason})"
        console.print(
            f"[dim]{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens, {u.requests} request(s), "
            f"{u.cache_hits} cache hit(s), cost {escape(cost_text)}[/]",
            highlight=False,
            soft_wrap=True,
        )

    asyncio.run(run())


@llm_app.command("cache-stats")
def cache_stats(cache_path: Path | None = typer.Option(None, help=_H["cache_path"])) -> None:
    """Show where the LLM response cache is, how big it is, and its entries per spec."""
    from autointerp.llm.cache import ResponseCache

    cache = ResponseCache(cache_path)
    s = cache.stats()
    cache.close()
    console.print(
        f"{escape(s.path)}: {s.entries} entries, {s.bytes / 1e6:.2f} MB of answers", highlight=False, soft_wrap=True
    )
    if s.by_spec:
        table = Table("spec", "entries")
        for spec, n in sorted(s.by_spec.items()):
            table.add_row(escape(spec), str(n))
        console.print(table)


@llm_app.command("cache-clear")
def cache_clear(
    spec: str | None = typer.Option(None, help="Only delete the answers of this spec."),
    cache_path: Path | None = typer.Option(None, help=_H["cache_path"]),
) -> None:
    """Delete cached LLM answers (all, or one spec's)."""
    from autointerp.llm.cache import ResponseCache

    cache = ResponseCache(cache_path)
    n = cache.clear(spec)
    cache.close()
    console.print(f"deleted {n} cached answer(s) from {escape(str(cache.path))}", highlight=False, soft_wrap=True)
