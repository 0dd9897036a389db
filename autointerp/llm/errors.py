"""Map SDK and transport exceptions to :class:`LLMError` (status, retryable, retry_after).

Retryable: 408, 409, 429, 5xx (529 included), timeouts, connection errors, truncated bodies and bodies that
are not the JSON we expect. Not retryable: every other 4xx (400, 401, 403, 404, 422, ...) and invalid URLs.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

from autointerp.llm.base import LLMError

_RETRYABLE_STATUS = {408, 409, 425, 429}
_BAD_URL = {"InvalidURL", "InvalidUrlClientError", "NonHttpUrlClientError", "UnsupportedProtocol", "InvalidUrl"}
"""Transport exceptions that say the URL itself is wrong: retrying cannot help."""
_TRANSPORT_MODULES = ("aiohttp", "httpx", "httpx2", "httpcore", "h11", "anyio", "ssl", "socket")


def status_retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUS or status >= 500


def parse_retry_after(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date); None when absent."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except Exception:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def map_exception(e: BaseException, backend: str) -> LLMError:
    """Turn any exception raised while calling a backend into an LLMError with its reason."""
    if isinstance(e, LLMError):
        return e
    name = type(e).__name__
    module = type(e).__module__ or ""
    status = getattr(e, "status_code", None)
    response = getattr(e, "response", None)
    if isinstance(status, int):
        headers = getattr(response, "headers", None)
        message = getattr(e, "message", None) or str(e)
        return LLMError(
            f"{backend}: HTTP {status} ({name}): {_short(message)}",
            status=status,
            retryable=status_retryable(status),
            retry_after=parse_retry_after(headers),
        )
    if name in _BAD_URL:
        return LLMError(f"{backend}: invalid URL ({name}: {_short(str(e))}); fix the spec", retryable=False)
    if "Timeout" in name or isinstance(e, TimeoutError):
        return LLMError(f"{backend}: timed out ({name})", retryable=True)
    if "Connection" in name or isinstance(e, ConnectionError):
        return LLMError(f"{backend}: connection error ({name}: {_short(str(e))})", retryable=True)
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) or "Validation" in name or "Decod" in name:
        return LLMError(f"{backend}: malformed response body ({name}: {_short(str(e))})", retryable=True)
    if module.split(".")[0] in _TRANSPORT_MODULES:
        return LLMError(f"{backend}: transport error ({name}: {_short(str(e))})", retryable=True)
    return LLMError(f"{backend}: {name}: {_short(str(e))}", retryable=False)


def garbage(backend: str, what: str) -> LLMError:
    """A 200 answer whose body is not what the API promises (missing fields, wrong types)."""
    return LLMError(f"{backend}: malformed response ({what})", retryable=True)
