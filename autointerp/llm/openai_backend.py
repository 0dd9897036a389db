"""OpenAI and OpenAI-compatible backends (OpenAI, vLLM servers, OpenRouter, llama.cpp) via ``AsyncOpenAI``.

The SDK's own retries are off (``max_retries=0``) and its timeout is set: retries happen once, in
:mod:`autointerp.llm.reliable`. The API key lives only in the SDK client object; it is never part of a
cache key, a log line or a manifest.

``top_logprobs`` has three ways, one per backend (``logprob_strategy``, written to the run manifest):

- ``prompt-logprobs`` (``vllm-server:``): vLLM's ``prompt_logprobs`` answers every position from one request
  carrying the prompt once.
- ``echo`` (``openai-compatible:`` servers that return prompt-token logprobs with ``echo`` + ``logprobs``, the
  OpenAI legacy format with ``text_offset``): one request carrying the prompt once. ``auto`` tries this on
  the first request and keeps it when every position aligns with a prompt token.
- ``prefix-list`` (llama.cpp, ``local:``; any server where the others fail): one request whose ``prompt`` is
  the list ``[prompt[:p] for p in positions]``, each completed by one token with ``logprobs=top_k``. Servers
  with prefix caching read the shared prefix once, but every prefix is *sent* (and billed by a paid API).
  The text up to each position is sent as is, so a position must sit where the tokenizer would end a token
  anyway (callers put positions after a separator such as ``"\\t"``).

Token counts of a prefix list: llama.cpp reports usage for the first prompt only, so the backend counts
every prompt with the server's own tokenizer (``POST /tokenize`` with pieces, on the server root) when the
server has one, and otherwise scales the reported count by characters. The first prompt's cache use is
the server's report; the others' is derived from the order (a one-slot llama.cpp keeps the previous
prompt, so prompt i re-reads prompt i-1 from its cache). Servers that report usage for all prompts (vLLM)
are taken at their word.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import re
from dataclasses import replace
from typing import Any, Literal

from autointerp.llm.base import (
    UNSERVED_STATUSES,
    Capabilities,
    ChatRequest,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
    Unsupported,
)
from autointerp.llm.errors import garbage, map_exception, parse_retry_after, status_retryable
from autointerp.records import Usage

logger = logging.getLogger(__name__)


def _as_dict(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    return dump() if callable(dump) else obj


def chat_token_logprobs(logprobs: Any) -> list[TokenLogprobs]:
    """Each generated token with its top alternatives, from a chat answer's ``logprobs`` (OpenAI's and
    llama.cpp's ``content: [{token, logprob, top_logprobs: [{token, logprob}]}]``); empty when the server gave
    none or gave them in another form (callers treat that as "no logprobs", never as a failed answer)."""
    lp = _as_dict(logprobs)
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list):
        return []
    out: list[TokenLogprobs] = []
    for c in content:
        c = _as_dict(c)
        if not isinstance(c, dict) or not isinstance(c.get("token"), str):
            return []
        top = parse_top_logprobs({"content": [c]})
        if top is None:
            return []
        out.append(TokenLogprobs(top=top, token=c["token"]))
    return out


def parse_top_logprobs(logprobs: Any) -> dict[str, float] | None:
    """Top-k alternatives of the first generated token, from any of the formats servers use.

    Accepts the OpenAI legacy completions format (``top_logprobs: [{token: lp}]``), the chat / llama.cpp
    format (``content: [{token, logprob, top_logprobs: [{token, logprob}]}]``) and llama.cpp's native
    ``completion_probabilities`` (``probs: [{tok_str, prob}]``). Returns None when nothing usable is found.
    """
    import math

    lp = _as_dict(logprobs)
    if not isinstance(lp, dict):
        return None
    top = lp.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], dict) and top[0]:
        first = top[0]
        if all(isinstance(v, (int, float)) for v in first.values()):
            return {str(k): float(v) for k, v in first.items()}
    content = lp.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        alts = content[0].get("top_logprobs")
        if isinstance(alts, list) and alts:
            out: dict[str, float] = {}
            for a in alts:
                if isinstance(a, dict) and "token" in a and isinstance(a.get("logprob"), (int, float)):
                    tok = str(a["token"])
                    out.setdefault(tok, float(a["logprob"]))
            return out or None
    probs = lp.get("probs")
    if isinstance(probs, list) and probs:
        out = {}
        for a in probs:
            if isinstance(a, dict) and "tok_str" in a and isinstance(a.get("prob"), (int, float)):
                p = float(a["prob"])
                out[str(a["tok_str"])] = math.log(p) if p > 0 else -math.inf
        return out or None
    return None


LogprobStrategy = Literal["auto", "prompt-logprobs", "echo", "prefix-list", "none"]
"""``none``: the endpoint serves no ``/completions`` (a chat-only API or gateway), so no top logprobs at all."""

_PATH_CAPABILITY = {"/completions": "completions", "/tokenize": "tokenize"}
"""Paths whose refusal with 404/405/501 means the endpoint lacks a capability (not that one request failed). A
refused ``/chat/completions`` is an error, not a capability: nothing would be left to do (and a 404 there may
mean a wrong model name)."""


_UNKNOWN_MODEL = re.compile(r"model_not_found|\bmodel\b[^.]{0,120}\b(does not exist|not found|is not served)", re.I)


_CONTEXT_OVERFLOW = re.compile(r"maximum context length|context (length|window) (is|of)|prompt is too long", re.I)
"""A 400 saying the prompt does not fit the model (vLLM: "This model's maximum context length is 2048 tokens.
However, your prompt contains ..."): a refused request, not a refused way of asking."""


class UnknownModel(LLMError):
    """A 404 that names the model as unknown: the spec is wrong. Never retried, never a missing capability, and no
    fallback (another way of asking would name the same model)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=404, retryable=False)


def _names_unknown_model(reason: str) -> bool:
    """Whether a 404's text says the model is unknown (vLLM: "The model `x` does not exist."; OpenAI:
    ``model_not_found``), rather than that the path is not served."""
    return _UNKNOWN_MODEL.search(reason) is not None


def _one_line(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _usage(u: Any, timings: Any = None) -> Usage:
    """Usage of one answer: prompt and completion tokens, and the prompt tokens the server read from its cache
    (OpenAI ``prompt_tokens_details.cached_tokens``, else llama.cpp ``timings.cache_n``), where reported."""
    u = _as_dict(u)
    if not isinstance(u, dict):
        return Usage(requests=1)
    prompt = int(u.get("prompt_tokens") or 0)
    cached: int | None = None
    details = _as_dict(u.get("prompt_tokens_details"))
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        cached = int(details["cached_tokens"])
    elif isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
        cached = int(timings["cache_n"])
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=int(u.get("completion_tokens") or 0),
        requests=1,
        cached_prompt_tokens=min(cached, prompt) if cached is not None else 0,
        cache_reported=int(cached is not None),
    )


def _response_usage(r: dict[str, Any]) -> Usage:
    return _usage(r.get("usage"), r.get("timings"))


def prefix_list_usage(reported: Usage, counts: list[int] | None, lengths: list[int]) -> tuple[Usage, str]:
    """Usage of one prefix-list request of ``len(lengths)`` prompts (character lengths ``lengths``), and how the
    prompt tokens were counted.

    ``counts``: tokens of each prompt by the server's tokenizer (None when it has none). When the server's
    reported prompt tokens cover all prompts (it summed them, as vLLM does), they are kept. Otherwise the
    report is the first prompt's (llama.cpp): prompt tokens are the counts (plus the special tokens the
    report shows beyond the first count), or, without counts, the report scaled by each prompt's characters;
    the cache use of prompts after the first is derived from the order (prompt i re-reads prompt i-1)."""
    n = len(lengths)
    completion = max(reported.completion_tokens, n)
    if counts is not None:
        extra = reported.prompt_tokens - counts[0]
        specials = extra if 0 <= extra <= 8 else 0
        per_prompt = [c + specials for c in counts]
        how = "server tokenizer"
    else:
        total_chars = sum(lengths)
        if n == 1 or reported.prompt_tokens * 8 >= total_chars:
            return replace(reported, completion_tokens=completion), "server usage (all prompts)"
        scale = reported.prompt_tokens / max(1, lengths[0])
        per_prompt = [reported.prompt_tokens] + [math.ceil(scale * m) for m in lengths[1:]]
        how = "estimated from the first prompt's reported usage (no tokenizer endpoint)"
    if counts is not None and reported.prompt_tokens >= sum(per_prompt) and n > 1:
        return replace(reported, completion_tokens=completion), "server usage (all prompts)"
    cached = reported.cached_prompt_tokens + sum(min(a, b - 1) for a, b in itertools.pairwise(per_prompt))
    return (
        Usage(
            prompt_tokens=sum(per_prompt),
            completion_tokens=completion,
            requests=1,
            cached_prompt_tokens=cached if reported.cache_reported else 0,
            cache_reported=reported.cache_reported if counts is not None else 0,
        ),
        how,
    )


def _sdk_response_class() -> type:
    """The HTTP response class of the installed openai SDK (``httpx2.Response`` in 3.x, ``httpx`` in 1.x)."""
    import openai._base_client as bc

    http: Any = getattr(bc, "httpx2", None) or getattr(bc, "httpx")  # noqa: B009
    return http.Response  # type: ignore[no-any-return]


def _http_client(timeout_s: float) -> Any:
    """The SDK's aiohttp transport when aiohttp is installed (``pip install autointerp[fast]``): about half
    the client CPU per request of the default httpx transport at high concurrency. None: the SDK default.
    ``AUTOINTERP_HTTP=httpx`` forces the default."""
    import os

    if os.environ.get("AUTOINTERP_HTTP", "") == "httpx":
        return None
    try:
        import aiohttp  # noqa: F401
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient(timeout=timeout_s)
    except Exception:  # no aiohttp, an SDK without the transport, or missing extras: the SDK default
        return None


def _aiohttp_available() -> bool:
    import os

    if os.environ.get("AUTOINTERP_HTTP", "") in ("httpx", "sdk"):
        return False
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


class OpenAIBackend:
    """Chat, completions and next-token logprobs through the ``openai`` SDK.

    Requests go through the SDK's client (auth, transport, timeouts, typed status errors) with its documented
    ``client.post(path, cast_to=Response, body=...)`` and plain-dict bodies: this skips the SDK's per-call
    parameter transformation and response model construction (~1.5 ms of CPU per request), and lets us
    validate the JSON ourselves (a garbage body is a retryable error, not a crash).
    """

    def __init__(
        self,
        spec: str,
        model: str,
        *,
        api_key: str,
        base_url: str | None,
        timeout_s: float,
        use_max_completion_tokens: bool = False,
        supports_completion: bool = True,
        logprob_strategy: LogprobStrategy = "auto",
        tokenizer_endpoint: bool | None = None,
        direct_http: bool = False,
    ) -> None:
        from openai import AsyncOpenAI

        self.spec = spec
        self.model = model
        self.capabilities = Capabilities()
        """What the endpoint turned out not to serve (shared by the clients around this backend; a pool shares
        one between its endpoints)."""
        if not supports_completion:
            self.capabilities.missing["completions"] = "the backend serves chat only"
        self.use_max_completion_tokens = use_max_completion_tokens
        self.logprob_strategy: LogprobStrategy = logprob_strategy
        """How ``top_logprobs`` asks (module doc); ``auto`` until the first request settles it."""
        self.tokenizer_endpoint = tokenizer_endpoint
        """Whether the server has llama.cpp's ``/tokenize`` with pieces (None: not asked yet)."""
        self.token_counting = ""
        """How the prompt tokens of the last prefix-list request were counted (for the manifest)."""
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0, http_client=_http_client(timeout_s)
        )
        self._response_cls = _sdk_response_class()
        # OpenAI-compatible servers: plain aiohttp posts (~0.3 ms of client CPU per request instead of the
        # SDK's ~1.5 ms), same bodies, same error mapping. The SDK stays for `openai:` and `local:`.
        self._direct = direct_http and _aiohttp_available()
        self._base_url = str(self._client.base_url).rstrip("/")
        self._root_url = self._base_url[: -len("/v1")] if self._base_url.endswith("/v1") else self._base_url
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._timeout_s = timeout_s
        self._session: Any = None

    @property
    def supports_completion(self) -> bool:
        return self.capabilities.has("completions")

    @property
    def supports_logprobs(self) -> bool:
        return self.capabilities.has("completions")

    async def probe(self) -> None:
        """One ``GET /models``: returns when the server answers, raises otherwise (endpoint pools' health probe)."""
        try:
            if self._direct:
                async with self._aiohttp_session().get(self._base_url + "/models") as r:
                    await r.read()
                    if r.status >= 500:
                        raise LLMError(f"{self.spec}: HTTP {r.status} on /models", status=r.status, retryable=True)
            else:
                await self._client.models.list()
        except LLMError:
            raise
        except Exception as e:
            raise map_exception(e, self.spec) from e

    def _aiohttp_session(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers=self._headers,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._client.close()

    async def _post_direct(self, url: str, body: dict[str, Any]) -> Any:
        async with self._aiohttp_session().post(url, json=body) as r:
            content = await r.read()
            if r.status >= 400:
                raise LLMError(
                    f"{self.spec}: HTTP {r.status}: {_one_line(content[:400].decode('utf-8', 'replace'))}",
                    status=r.status,
                    retryable=status_retryable(r.status),
                    retry_after=parse_retry_after(r.headers),
                )
        return json.loads(content)

    def _limit(self, n: int) -> dict[str, Any]:
        return {"max_completion_tokens": n} if self.use_max_completion_tokens else {"max_tokens": n}

    async def _post(self, path: str, body: dict[str, Any], *, root: bool = False) -> dict[str, Any]:
        """POST ``body`` to ``path`` under the base URL (``root``: under the server root, without ``/v1``)."""
        url = (self._root_url if root else self._base_url) + path
        try:
            if self._direct:
                data = await self._post_direct(url, body)
            else:
                r: Any = await self._client.post(url, cast_to=self._response_cls, body=body)
                data = json.loads(r.content)
        except Exception as e:
            err = map_exception(e, self.spec)
            if err.status == 404 and "model" in body and _names_unknown_model(err.reason):
                # A wrong model name, not a missing path: an error of the spec (vLLM answers 404 on every path)
                raise UnknownModel(
                    f"{self.spec}: the server serves no model {self.model!r}; fix the model name after the base URL "
                    f"({err.reason.removeprefix(self.spec + ': ')})"
                ) from e
            capability = _PATH_CAPABILITY.get(path)
            if capability is not None and err.status in UNSERVED_STATUSES:
                raise self.capabilities.refuse(capability, err.reason, err.status) from e
            raise err from e
        if not isinstance(data, dict):
            raise garbage(self.spec, f"body is a JSON {type(data).__name__}, not an object")
        if "error" in data and "choices" not in data:
            raise LLMError(f"{self.spec}: error in a 200 response: {str(data['error'])[:200]}", retryable=True)
        return data

    async def chat(self, request: ChatRequest) -> LLMResponse:
        args: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            **self._limit(request.max_tokens),
        }
        if request.stop:
            args["stop"] = list(request.stop)
        if request.seed is not None:
            args["seed"] = request.seed
        if request.json_mode:
            args["response_format"] = {"type": "json_object"}
        if request.top_logprobs > 0:
            args["logprobs"] = True
            args["top_logprobs"] = min(request.top_logprobs, 20)  # OpenAI's limit
        r = await self._post("/chat/completions", args)
        try:
            text = r["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise garbage(self.spec, "no choices[0].message in chat response") from e
        if not isinstance(text, str):
            raise garbage(self.spec, "message content is not a string")
        lps = chat_token_logprobs(r["choices"][0].get("logprobs")) if request.top_logprobs > 0 else []
        if request.top_logprobs > 0 and not lps and text:
            self.capabilities.missing.setdefault("chat_logprobs", "chat answers carry no logprobs")
        return LLMResponse(
            text=text, logprobs=lps, usage=_response_usage(r), model=str(r.get("model") or self.model)
        )

    def _check_completion(self) -> None:
        """Raise :class:`Unsupported` (no request sent) once the endpoint is known to serve no ``/completions``."""
        self.capabilities.check("completions", self.spec)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        self._check_completion()
        args: dict[str, Any] = {
            "model": self.model,
            "prompt": request.prompt,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            args["stop"] = list(request.stop)
        if request.seed is not None:
            args["seed"] = request.seed
        r = await self._post("/completions", args)
        try:
            text = r["choices"][0]["text"]
        except (KeyError, IndexError, TypeError) as e:
            raise garbage(self.spec, "no choices[0].text in completion response") from e
        if not isinstance(text, str):
            raise garbage(self.spec, "choices[0].text is not a string")
        return LLMResponse(text=text, usage=_response_usage(r), model=str(r.get("model") or self.model))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        self._check_completion()
        check_positions(request)
        if not request.positions:
            return LLMResponse(model=self.model)
        spent = Usage()  # a probe that did not answer was still sent: its tokens count
        if self.logprob_strategy == "prompt-logprobs":
            got, spent = await self._whole_prompt_logprobs(request, "prompt-logprobs")
            if got is not None:
                return got
        if self.logprob_strategy in ("auto", "echo"):
            got, used = await self._whole_prompt_logprobs(request, "echo")
            if got is not None:
                return got
            spent = spent + used
        out = await self._prefix_list(request)
        out.usage = out.usage + spent
        return out

    async def _prefix_list(self, request: TopLogprobsRequest) -> LLMResponse:
        prompts = [request.prompt[:p] for p in request.positions]
        body = {"model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "logprobs": request.top_k}
        r = await self._post("/completions", body)
        choices = r.get("choices")
        if (
            not isinstance(choices, list)
            or len(choices) != len(prompts)
            or not all(isinstance(c, dict) for c in choices)
        ):
            n = len(choices) if isinstance(choices, list) else 0
            raise garbage(self.spec, f"{n} choices for {len(prompts)} prompts")
        choices = sorted(choices, key=lambda c: int(c.get("index") or 0))
        out: list[TokenLogprobs] = []
        for i, c in enumerate(choices):
            top = parse_top_logprobs(c.get("logprobs"))
            if top is None:
                raise garbage(self.spec, f"no top logprobs for position {request.positions[i]}")
            out.append(TokenLogprobs(top=top))
        counts = await self.prefix_token_counts(request.prompt, request.positions)
        usage, self.token_counting = prefix_list_usage(_response_usage(r), counts, [len(p) for p in prompts])
        return LLMResponse(logprobs=out, usage=usage, model=str(r.get("model") or self.model))

    async def settle_logprob_strategy(self) -> LogprobStrategy:
        """Settle ``auto`` before a run, so that estimates and the manifest name the way that will be used: a
        server with llama.cpp's ``/tokenize`` takes the prefix list (llama.cpp ignores echo; tokenizing
        evaluates nothing); others get one tiny echo request (its few tokens are not metered). An endpoint
        that serves no ``/completions`` (it refused the probe with 404/405/501) settles on ``none``."""
        try:
            auto = self.logprob_strategy == "auto" and self.supports_completion
            if auto and await self.tokenize_pieces("a") is not None:
                self.logprob_strategy = "prefix-list"  # llama.cpp (it has /tokenize with pieces) ignores echo
            if self.logprob_strategy == "auto" and self.supports_completion:
                probe = "a\tb\tc"
                await self.top_logprobs(TopLogprobsRequest(prompt=probe, positions=(2, 4), top_k=1))
                if self.logprob_strategy == "auto":
                    self.logprob_strategy = "echo"
        except Unsupported as err:
            logger.info("%s serves no %s (%s): no top logprobs", self.spec, err.capability, err.reason)
        if not self.supports_completion:
            self.logprob_strategy = "none"
        return self.logprob_strategy

    async def tokenize_pieces(self, text: str) -> list[bytes] | None:
        """The server tokenizer's pieces of ``text`` (llama.cpp ``POST /tokenize`` with ``with_pieces``); None when
        the server has no such endpoint (asked once; the answer is remembered)."""
        if self.tokenizer_endpoint is False:
            return None
        try:
            r = await self._post("/tokenize", {"content": text, "with_pieces": True}, root=True)
        except LLMError as err:
            if (err.retryable and self.tokenizer_endpoint) or isinstance(err, UnknownModel):
                raise
            logger.info("%s: no /tokenize endpoint (%s); prefix-list tokens are estimated", self.spec, err.reason)
            self.tokenizer_endpoint = False
            self.capabilities.missing.setdefault("tokenize", err.reason)
            return None
        tokens = r.get("tokens")
        pieces: list[bytes] = []
        if isinstance(tokens, list):
            for t in tokens:
                piece = t.get("piece") if isinstance(t, dict) else None
                if isinstance(piece, str):
                    pieces.append(piece.encode())
                elif isinstance(piece, list) and all(isinstance(b, int) for b in piece):
                    pieces.append(bytes(piece))
                else:
                    pieces = []
                    break
        if not pieces and text:
            logger.info("%s: /tokenize gives no pieces; prefix-list tokens are estimated", self.spec)
            self.tokenizer_endpoint = False
            return None
        self.tokenizer_endpoint = True
        return pieces

    async def prefix_token_counts(self, prompt: str, positions: tuple[int, ...]) -> list[int] | None:
        """Tokens of ``prompt[:p]`` for each p, by the server's tokenizer (positions at token boundaries: the
        prefix's tokens are the full prompt's tokens that end by p); None without a tokenizer endpoint."""
        pieces = await self.tokenize_pieces(prompt)
        if pieces is None:
            return None
        ends: list[int] = []
        total = 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
        byte_at = _byte_offsets(prompt)
        return [bisect.bisect_right(ends, byte_at[p]) for p in positions]

    async def _whole_prompt_logprobs(
        self, request: TopLogprobsRequest, way: Literal["echo", "prompt-logprobs"]
    ) -> tuple[LLMResponse | None, Usage]:
        """Every position from one request carrying the prompt once: OpenAI-style ``echo`` + ``logprobs``
        (top-k alternatives and character offset of every prompt token) or vLLM's ``prompt_logprobs``.
        None, and the strategy becomes ``prefix-list``, when the server refuses or its answer does not align
        with every position (unless the strategy was settled on ``way``: then that is an error); always with
        the usage of what was sent."""
        settled = self.logprob_strategy == way
        extra: dict[str, Any] = (
            {"logprobs": request.top_k, "echo": True}
            if way == "echo"
            else {"prompt_logprobs": request.top_k, "return_token_ids": True}
        )
        body = {"model": self.model, "prompt": request.prompt, "max_tokens": 1, "temperature": 0.0, **extra}
        try:
            r = await self._post("/completions", body)
        except LLMError as err:
            if (
                err.retryable
                or isinstance(err, (Unsupported, UnknownModel))
                or (settled and way == "echo")
                or _CONTEXT_OVERFLOW.search(err.reason)
            ):
                raise  # (a prompt too long for the model is too long for the prefix list as well)
            logger.info("%s: %s refused (%s); using the prefix list", self.spec, way, err.reason)
            self.capabilities.missing.setdefault(way.replace("-", "_"), err.reason)
            self.logprob_strategy = "prefix-list"
            return None, Usage()
        usage = _response_usage(r)
        choices = r.get("choices")
        c0 = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        if way == "echo":
            result = align_echo_logprobs(request, c0.get("logprobs"))
        else:
            result = align_prompt_logprobs(request, c0.get("prompt_logprobs"), c0.get("prompt_token_ids"))
        if result is None:
            if settled and way == "echo":
                raise garbage(self.spec, "echo logprobs do not align with the prompt")
            logger.info("%s: no aligned prompt logprobs with %s; using the prefix list", self.spec, way)
            self.capabilities.missing.setdefault(way.replace("-", "_"), "the answer's prompt logprobs do not align")
            self.logprob_strategy = "prefix-list"
            return None, usage
        self.logprob_strategy = way
        return LLMResponse(logprobs=result, usage=usage, model=str(r.get("model") or self.model)), usage


def _byte_offsets(text: str) -> list[int]:
    """UTF-8 byte offset of every character offset 0..len(text) of ``text``."""
    out = [0] * (len(text) + 1)
    total = 0
    for i, ch in enumerate(text):
        total += len(ch.encode("utf-8", "surrogatepass")) if ord(ch) >= 0x80 else 1
        out[i + 1] = total
    return out


def align_echo_logprobs(request: TopLogprobsRequest, logprobs: Any) -> list[TokenLogprobs] | None:
    """Map OpenAI legacy echo logprobs (``tokens``, ``text_offset``, ``top_logprobs`` per token, prompt first)
    to character positions: position p is answered by the token that starts at character p. None when the
    format is not this one or some position starts no token."""
    lp = _as_dict(logprobs)
    if not isinstance(lp, dict):
        return None
    offsets, tops = lp.get("text_offset"), lp.get("top_logprobs")
    if not isinstance(offsets, list) or not isinstance(tops, list) or len(offsets) != len(tops):
        return None
    start: dict[int, int] = {}
    for j, off in enumerate(offsets):
        if isinstance(off, int):
            start.setdefault(off, j)
    out: list[TokenLogprobs] = []
    for p in request.positions:
        at = start.get(p)
        top = tops[at] if at is not None else None
        if not isinstance(top, dict) or not top or not all(isinstance(v, (int, float)) for v in top.values()):
            return None
        ranked = sorted(top.items(), key=lambda kv: -float(kv[1]))[: request.top_k]
        out.append(TokenLogprobs(top={str(k): float(v) for k, v in ranked}))
    return out


def check_positions(request: TopLogprobsRequest) -> None:
    n = len(request.prompt)
    for p in request.positions:
        if not 0 < p <= n:
            raise LLMError(f"top_logprobs position {p} is outside the prompt (1..{n})")
    if request.top_k < 1:
        raise LLMError(f"top_logprobs top_k must be >= 1, got {request.top_k}")


def align_prompt_logprobs(request: TopLogprobsRequest, plp: Any, prompt_token_ids: Any) -> list[TokenLogprobs] | None:
    """Map vLLM ``prompt_logprobs`` to character positions; None when they cannot be aligned.

    vLLM gives, per prompt token i, ``{token_id: {logprob, rank, decoded_token}}`` (the entry of token 0 is
    None), holding the top-k alternatives *and* the actual prompt token; ``prompt_token_ids`` (asked for
    with ``return_token_ids``) says which one is actual. Entry i is the distribution of token i given the
    text before it, so position p is answered by the token that starts at character p. Token texts must
    concatenate to the end of the prompt (token 0, e.g. BOS, covers the rest), else alignment fails.
    """
    if not isinstance(plp, list) or not isinstance(prompt_token_ids, list) or len(plp) != len(prompt_token_ids):
        return None
    texts: list[str] = []
    for i in range(1, len(plp)):
        entry = plp[i]
        if not isinstance(entry, dict):
            return None
        actual = entry.get(str(prompt_token_ids[i]), entry.get(prompt_token_ids[i]))  # type: ignore[call-overload]
        if not isinstance(actual, dict) or not isinstance(actual.get("decoded_token"), str):
            return None
        texts.append(actual["decoded_token"])
    tail = "".join(texts)
    if not request.prompt.endswith(tail):
        return None
    start = len(request.prompt) - len(tail)
    starts: dict[int, int] = {}
    offset = start
    for i, t in enumerate(texts, start=1):
        starts.setdefault(offset, i)
        offset += len(t)
    out: list[TokenLogprobs] = []
    for p in request.positions:
        j = starts.get(p)
        if j is None:
            return None
        entry = plp[j]
        ranked = sorted(
            (v for v in entry.values() if isinstance(v, dict) and isinstance(v.get("logprob"), (int, float))),
            key=lambda v: -float(v["logprob"]),
        )[: request.top_k]
        out.append(TokenLogprobs(top={str(v.get("decoded_token", "")): float(v["logprob"]) for v in ranked}))
    return out
