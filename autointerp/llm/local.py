"""``local:<name>``: an embedded GGUF model served by llama.cpp (xllamacpp) in this process, on loopback.

The server starts when the client is built (model load: ~1 s for SmolLM2, a few s for Qwen2.5-Coder-1.5B),
listens on 127.0.0.1 on a free port with ``n_threads`` and ``n_threads_batch`` set explicitly, and is
spoken to with the real ``openai`` SDK (``/v1/chat/completions``, ``/v1/completions`` with ``logprobs``).
Servers are shared per (GGUF file, context size, threads) within a process and stop when their last
client closes (or at exit). llama.cpp keeps the KV cache of the previous prompt, so the per-position
1-token completions of ``top_logprobs`` (sent in order, the ``prefix-list`` strategy) re-read only what
follows the shared prefix; every prefix is counted as sent, by the server's ``/tokenize``.

Positions for ``top_logprobs``: the text ``prompt[:p]`` is sent as the prompt of position p, and llama.cpp
tokenizes it afresh; choose p at token boundaries (e.g. right after a ``"\\t"`` or ``"\\n"`` separator).
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import ClientConfig
from autointerp.llm.factory import backend_timeout
from autointerp.llm.openai_backend import OpenAIBackend

logger = logging.getLogger(__name__)

EXPLAINER_MODELS = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m", "gemma3-270m")


def resolve_gguf(name: str) -> Path:
    """A GGUF path for ``local:<name>``: an embedded model name, or a path to a ``.gguf`` file."""
    if name.endswith(".gguf") or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(
                f"local model file {path} does not exist; give an existing .gguf path or one of "
                f"{', '.join(EXPLAINER_MODELS)}"
            )
        return path
    from autointerp import embedded

    if name not in EXPLAINER_MODELS:
        raise UserError(f"unknown local model {name!r}; use one of {', '.join(EXPLAINER_MODELS)} or a .gguf path")
    return embedded.gguf_path(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_threads() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class LocalServer:
    """One in-process llama.cpp server on loopback. Use :meth:`acquire` / :meth:`release` to share it."""

    _registry: dict[tuple[str, int, int], LocalServer] = {}  # noqa: RUF012  (process-wide on purpose)
    _lock = threading.Lock()

    def __init__(self, gguf: Path, *, context_size: int, threads: int) -> None:
        try:
            import xllamacpp
        except ImportError as e:
            raise UserError("local: models need xllamacpp; run: pip install 'autointerp[local]'") from e
        p = xllamacpp.CommonParams()
        p.model.path = str(gguf)
        self.port = free_port()
        p.hostnames = ["127.0.0.1"]
        p.port = self.port
        p.n_ctx = context_size
        p.n_parallel = 1
        # HTTP threads: llama.cpp's default (n_parallel + 2) lets idle keep-alive connections of a pooled client
        # block new ones; requests still queue for the one compute slot.
        p.n_threads_http = 64
        p.cache_prompt = True
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.verbosity = -1
        p.warmup = False
        logger.info("starting llama.cpp on 127.0.0.1:%d with %s (%d threads)", self.port, gguf.name, threads)
        self._server: Any = xllamacpp.Server(p)
        self.gguf = gguf
        self.threads = threads
        self.refs = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @classmethod
    def acquire(cls, gguf: Path, *, context_size: int, threads: int) -> LocalServer:
        key = (str(gguf), context_size, threads)
        with cls._lock:
            srv = cls._registry.get(key)
            if srv is None:
                srv = cls(gguf, context_size=context_size, threads=threads)
                cls._registry[key] = srv
            srv.refs += 1
            return srv

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            if self.refs <= 0:
                for k, v in list(self._registry.items()):
                    if v is self:
                        del self._registry[k]
                self.stop()

    def stop(self) -> None:
        """Stop serving (llama.cpp shuts down when its Server object is freed)."""
        if self._server is not None:
            logger.info("stopping llama.cpp on 127.0.0.1:%d", self.port)
            self._server = None


class LocalBackend(OpenAIBackend):
    """An :class:`OpenAIBackend` whose server is an in-process llama.cpp, started (or shared) when built."""

    def __init__(self, spec: str, name: str, config: ClientConfig) -> None:
        self.gguf = resolve_gguf(name)
        self.threads = config.threads or default_threads()
        self.server = LocalServer.acquire(self.gguf, context_size=config.context_size, threads=self.threads)
        super().__init__(
            spec,
            name,
            api_key="local",
            base_url=self.server.base_url,
            timeout_s=backend_timeout(config),
            logprob_strategy="prefix-list",
            tokenizer_endpoint=True,
        )
        self._closed = False

    async def aclose(self) -> None:
        await super().aclose()
        if not self._closed:
            self._closed = True
            self.server.release()
