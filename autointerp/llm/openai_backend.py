"""OpenAI and OpenAI-compatible backends (OpenAI, vLLM servers, OpenRouter, llama.cpp) via ``AsyncOpenAI``.

The SDK's own retries are off (``max_retries=0``) and its timeout is set: retries happen once, in
:mod:`autointerp.llm.reliable`. The API key lives only in the SDK client object; it is never part of a
cache key, a log line or a manifest.

``top_logprobs`` sends one request whose ``prompt`` is the list ``[prompt[:p] for p in positions]``, each
completed by one token with ``logprobs=top_k``: servers with prefix caching (llama.cpp, vLLM) read the
shared prefix once. The text up to each position is sent as is, so a position must sit where the tokenizer
would end a token anyway (callers put positions after a separator such as ``"\\t"``); otherwise the last
prompt token differs from the one in the full prompt. On vLLM servers, ``prompt_logprobs`` (in
``extra_body``) can instead answer all positions from the one full prompt (``use_prompt_logprobs``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from autointerp.llm.base import (
    ChatRequest,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)
from autointerp.llm.errors import garbage, map_exception, parse_retry_after, status_retryable
from autointerp.records import Usage

logger = logging.getLogger(__name__)


def _as_dict(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    return dump() if callable(dump) else obj


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


def _usage(u: Any) -> Usage:
    u = _as_dict(u)
    if not isinstance(u, dict):
        return Usage(requests=1)
    return Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        requests=1,
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
        use_prompt_logprobs: bool = False,
        direct_http: bool = False,
    ) -> None:
        from openai import AsyncOpenAI

        self.spec = spec
        self.model = model
        self.supports_completion = supports_completion
        self.supports_logprobs = supports_completion
        self.use_max_completion_tokens = use_max_completion_tokens
        self.use_prompt_logprobs = use_prompt_logprobs
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0, http_client=_http_client(timeout_s)
        )
        self._response_cls = _sdk_response_class()
        # OpenAI-compatible servers: plain aiohttp posts (~0.3 ms of client CPU per request instead of the
        # SDK's ~1.5 ms), same bodies, same error mapping. The SDK stays for `openai:` and `local:`.
        self._direct = direct_http and _aiohttp_available()
        self._base_url = str(self._client.base_url).rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._timeout_s = timeout_s
        self._session: Any = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._client.close()

    async def _post_direct(self, path: str, body: dict[str, Any]) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers=self._headers,
            )
        async with self._session.post(self._base_url + path, json=body) as r:
            content = await r.read()
            if r.status >= 400:
                raise LLMError(
                    f"{self.spec}: HTTP {r.status}: {content[:200].decode('utf-8', 'replace')}",
                    status=r.status,
                    retryable=status_retryable(r.status),
                    retry_after=parse_retry_after(r.headers),
                )
        return json.loads(content)

    def _limit(self, n: int) -> dict[str, Any]:
        return {"max_completion_tokens": n} if self.use_max_completion_tokens else {"max_tokens": n}

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._direct:
                data = await self._post_direct(path, body)
            else:
                r: Any = await self._client.post(path, cast_to=self._response_cls, body=body)
                data = json.loads(r.content)
        except Exception as e:
            raise map_exception(e, self.spec) from e
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
        r = await self._post("/chat/completions", args)
        try:
            text = r["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise garbage(self.spec, "no choices[0].message in chat response") from e
        if not isinstance(text, str):
            raise garbage(self.spec, "message content is not a string")
        return LLMResponse(text=text, usage=_usage(r.get("usage")), model=str(r.get("model") or self.model))

    def _check_completion(self) -> None:
        if not self.supports_completion:
            raise LLMError(
                f"{self.spec} does not serve raw completions / logprobs; use a chat-only method or another backend"
            )

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
        return LLMResponse(text=text, usage=_usage(r.get("usage")), model=str(r.get("model") or self.model))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        self._check_completion()
        check_positions(request)
        if not request.positions:
            return LLMResponse(model=self.model)
        if self.use_prompt_logprobs:
            got = await self._prompt_logprobs(request)
            if got is not None:
                return got
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
        return LLMResponse(logprobs=out, usage=_usage(r.get("usage")), model=str(r.get("model") or self.model))

    async def _prompt_logprobs(self, request: TopLogprobsRequest) -> LLMResponse | None:
        """vLLM's extension: logprobs of every prompt token from one request. None if unavailable/unaligned."""
        body = {
            "model": self.model,
            "prompt": request.prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": request.top_k,
            "return_token_ids": True,
        }
        try:
            r = await self._post("/completions", body)
        except LLMError as err:
            if err.retryable:
                raise
            logger.info("%s: prompt_logprobs refused (%s); using one completion per position", self.spec, err)
            self.use_prompt_logprobs = False
            return None
        choices = r.get("choices")
        c0 = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        result = align_prompt_logprobs(request, c0.get("prompt_logprobs"), c0.get("prompt_token_ids"))
        if result is None:
            logger.info("%s: prompt_logprobs missing or not aligned; using one completion per position", self.spec)
            self.use_prompt_logprobs = False
            return None
        return LLMResponse(logprobs=result, usage=_usage(r.get("usage")), model=str(r.get("model") or self.model))


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
