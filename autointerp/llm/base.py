"""The one async contract every LLM backend implements.

Requests are frozen dataclasses: settings are per request and immutable, so no request can change
another's settings (delphi's shared-mutable-settings bug cannot happen). Every call reports its usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from autointerp.records import Usage

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """Generate an assistant reply to a conversation."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_mode: bool = False
    """Ask the backend for a JSON object (where supported); callers still validate the output."""
    top_logprobs: int = 0
    """When > 0, also ask for the top-k alternatives of every generated token (``LLMResponse.logprobs``, one
    entry per token with ``token`` set). A backend that cannot give them answers without them (``logprobs``
    empty), so callers must handle their absence. Left out of the response cache's key when 0."""


@dataclass(frozen=True)
class CompletionRequest:
    """Continue a raw text prompt."""

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TopLogprobsRequest:
    """Top-k next-token log-probabilities after each of several prefixes of one prompt.

    ``positions`` are character offsets into ``prompt``: for each position p the backend returns the
    distribution of the token that follows ``prompt[:p]``. Simulators compute these offsets when they
    build the prompt (never by matching output tokens). Backends with prefix caching make each extra
    position cheap; a transformers backend answers all positions from one forward pass.

    Choose each p at a token boundary (e.g. right after a ``"\t"`` separator that follows a complete token):
    llama.cpp / OpenAI-compatible backends send the text ``prompt[:p]`` and the server tokenizes it afresh,
    so a p inside a token would condition on a different last token; the transformers and vLLM backends
    refuse such a position with an LLMError.
    """

    prompt: str
    positions: tuple[int, ...]
    top_k: int = 20


@dataclass(frozen=True)
class TokenLogprobs:
    """Top-k alternatives for one next token: token text -> log-probability."""

    top: dict[str, float]
    token: str = ""
    """The token generated there (chat answers asked with ``top_logprobs``); empty for the positions of a
    TopLogprobsRequest."""


@dataclass
class LLMResponse:
    text: str = ""
    """Generated text (chat / completion); empty for logprob requests."""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    """For TopLogprobsRequest: one entry per requested position, in order. For a ChatRequest with
    ``top_logprobs``: one entry per generated token, in order, when the backend gives them (else empty)."""
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    """True when the answer came from the response cache (no request was sent)."""
    model: str = ""


class LLMError(Exception):
    """A request that failed for good (after retries, or a non-retryable status); carries the reason."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        """HTTP status of the last attempt, when there was one."""
        self.retryable = retryable
        """True for transient failures (429, 5xx, timeouts, connection errors, garbage bodies)."""
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), when it said."""


UNSERVED_STATUSES = frozenset({404, 405, 501})
"""HTTP statuses with which an endpoint says it does not serve a path or a method at all."""


class Unsupported(LLMError):
    """A request of a kind the endpoint does not serve (refused with 404/405/501, or known to be missing from an
    earlier refusal): never retried, and not a failure of the work that asked. Callers take the next correct
    path (the JSON simulator, P(yes) undefined with this reason, ...)."""

    def __init__(self, reason: str, capability: str, *, status: int | None = None) -> None:
        super().__init__(reason, status=status, retryable=False)
        self.capability = capability
        """The capability that is missing (one of :data:`CAPABILITIES`)."""


CAPABILITIES = ("completions", "echo", "prompt_logprobs", "tokenize", "chat_logprobs")
"""What an endpoint may lack: raw ``/completions`` (so also the prefix list and teacher-forced logprobs), prompt
logprobs by ``echo``, vLLM's ``prompt_logprobs``, llama.cpp's ``/tokenize``, logprobs of chat answers."""


@dataclass
class Capabilities:
    """What one endpoint serves, learned from its answers: every capability is assumed until a request that
    needs it is refused; then it is missing, with the reason, for the rest of the run (and in the manifest).
    Shared by reference between a backend and every client that wraps it, and between the endpoints of a pool
    (they serve one model)."""

    missing: dict[str, str] = field(default_factory=dict)
    """capability -> why it is missing (the refusal that showed it)."""

    def has(self, capability: str) -> bool:
        return capability not in self.missing

    def refuse(self, capability: str, reason: str, status: int | None = None) -> Unsupported:
        """Mark ``capability`` missing (the first reason is kept) and return the error to raise."""
        self.missing.setdefault(capability, reason)
        return Unsupported(reason, capability, status=status)

    def check(self, capability: str, spec: str) -> None:
        """Raise :class:`Unsupported` when ``capability`` is known to be missing (no request is sent)."""
        if capability in self.missing:
            raise Unsupported(f"{spec} does not serve {capability} ({self.missing[capability]})", capability)


def capabilities_of(client: object) -> Capabilities:
    """The capabilities a client (or backend) tracks; an empty one (nothing known missing) when it tracks none."""
    caps = getattr(client, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else Capabilities()


@dataclass(frozen=True)
class ClientConfig:
    """How a client talks to its backend: timeouts, retries, limits, cache, threads, prices."""

    timeout_s: float | None = None
    """Seconds one attempt of one request may take before it is abandoned (and retried); None: fitted to each
    request from its prompt size and max_tokens, pushed back while the endpoint answers other requests (see
    autointerp.llm.reliable). Two timeouts of one request report the endpoint as stalled."""
    max_attempts: int = 5
    """Attempts per request, the first included, before it is reported failed (retryable errors only)."""
    backoff_s: float = 0.5
    """Base of the exponential backoff between attempts (full jitter), in seconds."""
    max_backoff_s: float = 30.0
    """Longest wait between two attempts, in seconds (a longer Retry-After is capped to this)."""
    max_concurrency: int = 16
    """Requests in flight at once, per client."""
    requests_per_minute: float | None = None
    """Request rate limit (token bucket); None for no limit."""
    tokens_per_minute: float | None = None
    """Token rate limit (prompt estimate + max_tokens, token bucket); None for no limit."""
    cache: bool = True
    """Keep every successful answer in a persistent SQLite cache, so a rerun sends no request."""
    cache_path: Path | None = None
    """The response cache file; default: <cache dir>/llm-cache.sqlite."""
    threads: int | None = None
    """CPU threads for local backends (llama.cpp n_threads and n_threads_batch, torch); None: all cores."""
    context_size: int = 8192
    """Context length (tokens) of a local llama.cpp server."""
    device: str = "cpu"
    """Torch device of the transformers backend, e.g. "cpu" or "cuda"."""
    dtype: str = "float32"
    """Torch dtype of the transformers backend: float32, bfloat16 or float16."""
    prices_path: Path | None = None
    """A JSON price table to use instead of the packaged one (see autointerp/data/prices.json)."""
    api_key_env: str | None = None
    """Environment variable holding the API key; default OPENAI_API_KEY / ANTHROPIC_API_KEY by backend."""
    api_keys_file: Path | None = None
    """JSON file {"openai": KEY, "anthropic": KEY, ...} read when the environment variable is unset;
    default ~/.config/autointerp/api_keys.json."""


@runtime_checkable
class LLMClient(Protocol):
    """What explainers, simulators and scorers use. A backend may not support every kind of request;
    it raises ``LLMError`` naming what is unsupported (``supports_*`` tell in advance)."""

    spec: str
    """The spec this client was built from, e.g. ``openai:gpt-4o-mini`` or ``local:qwen2.5-coder-1.5b``."""

    @property
    def supports_completion(self) -> bool: ...

    @property
    def supports_logprobs(self) -> bool:
        """Whether ``top_logprobs`` may work; False once the endpoint refused what it needs (see Capabilities)."""
        ...

    async def chat(self, request: ChatRequest) -> LLMResponse: ...

    async def complete(self, request: CompletionRequest) -> LLMResponse: ...

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse: ...

    async def aclose(self) -> None: ...


class ClientWrapper:
    """Base of every client that wraps another (retries, cache, meter, pool member, ...): ``spec`` and what the
    inner client serves are read through to it, so a capability found missing by the backend shows in every
    layer at once. Subclasses define ``chat`` / ``complete`` / ``top_logprobs``; ``aclose`` closes ``inner``."""

    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.spec = inner.spec

    @property
    def supports_completion(self) -> bool:
        return bool(self.inner.supports_completion)

    @property
    def supports_logprobs(self) -> bool:
        return bool(self.inner.supports_logprobs)

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_of(self.inner)

    async def aclose(self) -> None:
        await self.inner.aclose()
