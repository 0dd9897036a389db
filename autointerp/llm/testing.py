"""Loopback HTTP servers for testing LLM clients offline: a fake OpenAI-compatible server and a fault proxy.

Both are small HTTP/1.1 servers written on asyncio streams (keep-alive, Content-Length bodies), bound to
127.0.0.1 on a free port. They exist so that retries, rate limits, caching and concurrency can be tested
and benchmarked through the *real* SDKs without any network:

- :class:`FakeOpenAIServer` answers ``/v1/chat/completions`` and ``/v1/completions`` after a fixed latency,
  deterministically from the request (the reply echoes the prompt and the temperature), and counts requests.
- :class:`FaultProxy` forwards to an upstream server (the fake one, or a real llama.cpp server) and, on a
  schedule, answers instead with 429 + Retry-After, 500, 400, a stall, a truncated body or garbage JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx

logger = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    502: "Bad Gateway",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


@dataclass
class HTTPReply:
    """What a handler answers. ``mode`` lets a test server misbehave on purpose."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    mode: Literal["normal", "truncate", "stall"] = "normal"
    """truncate: announce the full length, send half the body, close; stall: never answer."""


S = TypeVar("S", bound="LoopbackHTTPServer")

Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[HTTPReply]]


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPReply:
    return HTTPReply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


class LoopbackHTTPServer:
    """A minimal asyncio HTTP/1.1 server on 127.0.0.1 calling ``handle(method, path, headers, body)``."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        raise NotImplementedError

    async def start(self: S) -> S:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self: S) -> S:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    method, path, _ = line.decode("latin-1").split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(n) if n else b""
                try:
                    reply = await self.handle(method, path, headers, body)
                except Exception as e:  # e.g. the upstream of a proxy failed: answer 502, keep serving
                    logger.debug("handler failed: %r", e)
                    reply = json_reply({"error": {"message": f"handler failed: {type(e).__name__}"}}, 502)
                if reply.mode == "stall":
                    await asyncio.sleep(3600)
                    return
                head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
                hdrs = {"Content-Length": str(len(reply.body)), **reply.headers}
                head += [f"{k}: {v}" for k, v in hdrs.items()]
                data = reply.body if reply.mode == "normal" else reply.body[: len(reply.body) // 2]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
                if reply.mode == "truncate" or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


def fake_tokens(text: str) -> list[str]:
    """The fake server's tokenizer: each run of non-space characters is a token, each space character another
    (so ``text[:p]`` right after a tab or newline tokenizes as a prefix of ``text``'s tokens)."""
    return re.findall(r"\S+|\s", text)


class FakeOpenAIServer(LoopbackHTTPServer):
    """An OpenAI-compatible server that answers after ``latency_s``, deterministically, and counts requests.

    Chat reply: ``"t=<temperature> <last user message>"`` (with ``logprobs`` and ``top_logprobs=k``: each token
    with the k alternatives, in the chat ``content`` format). Completion reply: ``"t=<temperature> ok"``; with
    ``logprobs=k`` it returns k alternatives ``"a0".."a{k-1}"`` (log-probabilities -1, -2, ...) in the
    OpenAI legacy ``top_logprobs`` format, or llama.cpp's ``content`` format when ``logprobs_format`` says so.

    Token accounting is exact (tokens by :func:`fake_tokens`) and kept on the server: ``prompt_tokens_received``
    counts every prompt token of every request, ``prompt_tokens_evaluated`` those not read from its one-slot
    prefix cache (the previous prompt, as llama.cpp keeps it; the last token is always evaluated). Usage in
    replies covers all prompts (``usage_mode="sum"``, like vLLM) or the first prompt only (``"first"``, like
    llama.cpp, with ``timings``), with ``prompt_tokens_details.cached_tokens``. ``tokenize=True`` serves
    llama.cpp's ``POST /tokenize`` (with pieces); ``echo=True`` answers ``echo`` + ``logprobs`` with the
    alternatives of every prompt token and its ``text_offset`` (OpenAI legacy); otherwise echo is ignored,
    as llama.cpp does.
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        logprobs_format: Literal["openai", "llamacpp"] = "openai",
        usage_mode: Literal["sum", "first"] = "sum",
        tokenize: bool = False,
        echo: bool = False,
        prefix_logprobs: bool = False,
    ) -> None:
        super().__init__()
        self.prefix_logprobs = prefix_logprobs
        """Add an alternative ``n<tokens before>`` (log-probability -0.5) that depends on the text before."""
        self.latency_s = latency_s
        self.logprobs_format = logprobs_format
        self.usage_mode = usage_mode
        self.tokenize = tokenize
        self.echo = echo
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.prompt_tokens_received = 0
        self.prompt_tokens_evaluated = 0
        self._slot: list[str] = []

    def _alts(self, k: int, prefix: str) -> dict[str, float]:
        """k deterministic alternatives: "a0".."a{k-1}" (log-probabilities -1, -2, ...), led by
        ``n<tokens in prefix>`` (-0.5) when ``prefix_logprobs`` is set."""
        alts = {f"a{j}": -(j + 1.0) for j in range(k)}
        if self.prefix_logprobs:
            alts = {f"n{len(fake_tokens(prefix))}": -0.5, **dict(list(alts.items())[: k - 1])}
        return alts

    def _read_prompt(self, tokens: list[str]) -> int:
        """Account one prompt; returns the tokens served from the one-slot cache."""
        common = 0
        for a, b in zip(self._slot, tokens, strict=False):
            if a != b:
                break
            common += 1
        cached = min(common, len(tokens) - 1) if tokens else 0
        self._slot = tokens
        self.prompt_tokens_received += len(tokens)
        self.prompt_tokens_evaluated += len(tokens) - cached
        return cached

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        self.requests += 1
        self.auth_headers.append(headers.get("authorization", ""))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return json_reply({"error": {"message": "bad json"}}, 400)
        self.bodies.append(req)
        temp = req.get("temperature", 1.0)
        if path.endswith("/chat/completions"):
            last = req["messages"][-1]["content"]
            text = f"t={temp} {last}"
            answer: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"
            }
            if req.get("logprobs") and req.get("top_logprobs"):
                k = int(req["top_logprobs"])
                answer["logprobs"] = {"content": [
                    {"token": t, "logprob": -1.0,
                     "top_logprobs": [{"token": a, "logprob": lp} for a, lp in self._alts(k, "").items()]}
                    for t in fake_tokens(text)
                ]}
            return json_reply(
                {
                    "id": "fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": req.get("model", ""),
                    "choices": [answer],
                    "usage": {"prompt_tokens": len(last.split()) + 5, "completion_tokens": 3, "total_tokens": 0},
                }
            )
        if path.endswith("/completions"):
            prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
            k = req.get("logprobs")
            choices = []
            counts: list[tuple[int, int]] = []
            for i, p in enumerate(prompts):
                toks = fake_tokens(p)
                counts.append((len(toks), self._read_prompt(toks)))
                choice: dict[str, Any] = {"index": i, "text": f"t={temp} ok", "finish_reason": "length"}
                if k and self.echo and req.get("echo"):
                    offsets = [sum(len(t) for t in toks[:j]) for j in range(len(toks))]
                    choice["logprobs"] = {
                        "tokens": [*toks, "a0"],
                        "token_logprobs": [None] + [-1.0] * len(toks),
                        "top_logprobs": [None, *(self._alts(int(k), p[:o]) for o in [*offsets[1:], len(p)])],
                        "text_offset": [*offsets, len(p)],
                    }
                elif k:
                    alts = self._alts(int(k), p)
                    if self.logprobs_format == "openai":
                        choice["logprobs"] = {
                            "tokens": ["a0"],
                            "token_logprobs": [-1.0],
                            "top_logprobs": [alts],
                            "text_offset": [len(p)],
                        }
                    else:
                        choice["logprobs"] = {
                            "content": [
                                {
                                    "token": "a0",
                                    "logprob": -1.0,
                                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts.items()],
                                }
                            ]
                        }
                choices.append(choice)
            shown = counts if self.usage_mode == "sum" else counts[:1]
            reply: dict[str, Any] = {
                "id": "fake",
                "object": "text_completion",
                "created": 0,
                "model": req.get("model", ""),
                "choices": choices,
                "usage": {
                    "prompt_tokens": sum(n for n, _ in shown),
                    "completion_tokens": len(shown),
                    "prompt_tokens_details": {"cached_tokens": sum(c for _, c in shown)},
                },
            }
            if self.usage_mode == "first":
                reply["timings"] = {"prompt_n": counts[0][0] - counts[0][1], "cache_n": counts[0][1]}
            return json_reply(reply)
        if path == "/tokenize" and self.tokenize:
            pieces = fake_tokens(str(req.get("content", "")))
            if req.get("with_pieces"):
                return json_reply({"tokens": [{"id": j, "piece": t} for j, t in enumerate(pieces)]})
            return json_reply({"tokens": list(range(len(pieces)))})
        if path.endswith("/models"):
            return json_reply({"object": "list", "data": [{"id": "fake", "object": "model"}]})
        return json_reply({"error": {"message": f"no route {path}"}}, 404)


@contextlib.contextmanager
def serving_in_thread(server: S) -> Iterator[S]:
    """Run ``server`` on its own event loop in a daemon thread (for code that runs its own ``asyncio.run``, such
    as the CLI); stopped on exit."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    if not ready.wait(10):
        raise RuntimeError("the loopback server did not start within 10 s")
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


class ChatOnlyServer(LoopbackHTTPServer):
    """A chat-only OpenAI-compatible endpoint, as many hosted APIs and gateways are: ``/v1/chat/completions``
    and ``/v1/models`` only; ``/v1/completions``, ``/tokenize`` and anything else are 404, as such a server
    answers. Replies come from ``chat_fn(messages) -> text`` and look like a real server's (id, model,
    ``finish_reason``, usage counted by :func:`fake_tokens`); no logprobs, even when asked for.
    ``empty_choices``: answer chat with 200 and an empty ``choices`` list instead (a broken gateway)."""

    def __init__(self, chat_fn: Callable[[list[dict[str, str]]], str], empty_choices: bool = False) -> None:
        super().__init__()
        self.chat_fn = chat_fn
        self.empty_choices = empty_choices
        self.paths: list[str] = []
        """The path of every request, in order."""

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        self.paths.append(path)
        if path.endswith("/chat/completions") and method == "POST":
            req = json.loads(body or b"{}")
            text = self.chat_fn(req["messages"])
            prompt = sum(len(fake_tokens(m["content"])) for m in req["messages"])
            choices = [] if self.empty_choices else [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ]
            completion = len(fake_tokens(text))
            return json_reply({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": req.get("model", ""),
                "choices": choices,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            })
        if path.endswith("/models") and method == "GET":
            return json_reply({"object": "list", "data": [{"id": "m", "object": "model"}]})
        return json_reply({"error": {"message": f"Not Found: {path}", "type": "not_found_error"}}, 404)


FaultKind = Literal["429", "500", "400", "stall", "truncate", "garbage"]
Schedule = Callable[[int, dict[str, Any]], "FaultKind | None"]
"""(attempt number of this request body, starting at 1; the parsed body) -> a fault, or None to forward."""


class FaultProxy(LoopbackHTTPServer):
    """Forwards every request to ``upstream`` unless ``schedule`` picks a fault for it.

    Attempts are counted per identical request body, so a schedule can fail the first attempt of a request
    and let its retry through. ``log`` records (body key, attempt, fault or "ok") for every request seen.
    """

    def __init__(self, upstream: str, schedule: Schedule, retry_after_s: float = 0.05) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.schedule = schedule
        self.retry_after_s = retry_after_s
        self.attempts: dict[bytes, int] = {}
        self.log: list[tuple[str, int, str]] = []
        self._client: httpx.AsyncClient | None = None

    async def stop(self) -> None:
        await super().stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        attempt = self.attempts.get(body, 0) + 1
        self.attempts[body] = attempt
        try:
            parsed = json.loads(body or b"{}")
        except json.JSONDecodeError:
            parsed = {}
        fault = self.schedule(attempt, parsed)
        self.log.append((body.decode(errors="replace"), attempt, fault or "ok"))
        if fault == "429":
            return json_reply({"error": {"message": "rate limited"}}, 429, {"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "500":
            return json_reply({"error": {"message": "internal error"}}, 500)
        if fault == "400":
            return json_reply({"error": {"message": "bad request"}}, 400)
        if fault == "stall":
            return HTTPReply(mode="stall")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=600)
        fwd = {k: v for k, v in headers.items() if k in ("content-type", "authorization", "x-api-key")}
        fwd.update({k: v for k, v in headers.items() if k.startswith("anthropic-")})
        r = await self._client.request(method, self.upstream + path, content=body, headers=fwd)
        out = HTTPReply(r.status_code, r.content, {"Content-Type": r.headers.get("content-type", "application/json")})
        if fault == "truncate":
            out.mode = "truncate"
        elif fault == "garbage":
            out.body = b'{"choices": [{"text": "oops'
        return out
