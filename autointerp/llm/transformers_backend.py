"""``transformers:<name-or-path>``: a local Hugging Face causal LM in this process.

``top_logprobs`` is the reason to use it: the prompt is tokenized once with character offsets, ONE forward
pass reads the next-token distribution at every requested position (concurrent requests are padded into
one batch by the shared :class:`~autointerp.llm.batching.MicroBatcher`, up to ``max_batch``), and only the
logits of those positions are computed (``logits_to_keep``).
Position p must be a token boundary of the tokenized prompt: some token ends exactly at p and the next
one starts at or after p; otherwise the request fails naming the position (there is no token "after
``prompt[:p]``" inside a token).

``chat`` / ``complete`` use ``generate`` (slow on CPU, fine for tests). Sampling with a ``seed`` seeds
torch's global generator inside the backend's lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

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
from autointerp.llm.openai_backend import check_positions
from autointerp.records import Usage

logger = logging.getLogger(__name__)


def token_indices(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each character position, the index of the token ending exactly there, at a token boundary.

    ``offsets``: [T, 2] (start, end) per token (special tokens (0, 0)); returns -1 where p is not a
    boundary (no token ends at p, or the next token starts before p)."""
    ends = offsets[:, 1]
    starts = offsets[:, 0]
    # last token whose end <= p (ends are non-decreasing)
    idx = np.searchsorted(ends, positions, side="right") - 1
    ok = (idx >= 0) & (ends[np.clip(idx, 0, None)] == positions)
    nxt = np.clip(idx + 1, 0, len(ends) - 1)
    has_next = idx + 1 < len(ends)
    ok &= ~has_next | (starts[nxt] >= positions)
    return np.where(ok, idx, -1)


class TransformersBackend:
    supports_completion = True
    supports_logprobs = True
    logprob_strategy = "forward-pass"

    def __init__(self, spec: str, model: Any, tokenizer: Any, *, device: str = "cpu", max_batch: int = 8) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self.batcher: MicroBatcher[TopLogprobsRequest, LLMResponse] = MicroBatcher(
            self._forward_batch, max_batch=max_batch, describe=f"{spec} forward pass"
        )
        self.forward_passes = 0
        """Forward passes run for top_logprobs (a batch of requests counts once)."""
        self._decoded: dict[int, str] = {}
        """Token id -> its text decoded alone (a vocabulary's worth at most)."""

    @classmethod
    def load(cls, spec: str, name: str, config: ClientConfig) -> TransformersBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from autointerp import embedded
        from autointerp.llm.local import default_threads

        torch.set_num_threads(config.threads or default_threads())
        if name in embedded.SUBJECT_MODELS:
            path: str = str(embedded.hf_folder(name))
        elif Path(name).expanduser().exists():
            path = str(Path(name).expanduser())
        else:
            path = name  # a hub id already in the local HF cache
        dtype = getattr(torch, config.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise UserError(f"unknown dtype {config.dtype!r}; use float32, bfloat16 or float16")
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as e:
            raise UserError(
                f"cannot load transformers model {name!r} ({e}); give a local folder or an embedded name "
                f"({', '.join(embedded.SUBJECT_MODELS)})"
            ) from e
        model = model.to(config.device).eval()  # type: ignore[arg-type]
        return cls(spec, model, tok, device=config.device)

    async def aclose(self) -> None:
        return None

    # -- top_logprobs: micro-batched forward passes ------------------------------------------------

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        check_positions(request)
        return await self.batcher.submit(request)

    def _forward_batch(self, requests: list[TopLogprobsRequest]) -> list[LLMResponse | LLMError]:
        try:
            return self._forward(requests)
        except LLMError:
            raise
        except Exception as e:  # the whole pass failed: every request in it fails with the reason
            raise LLMError(f"{self.spec}: forward pass failed: {e}") from e

    def _forward(self, requests: list[TopLogprobsRequest]) -> list[LLMResponse | LLMError]:
        import torch

        prepared: list[tuple[int, list[int], np.ndarray]] = []
        out: list[LLMResponse | LLMError | None] = [None] * len(requests)
        encs = self.tokenizer([r.prompt for r in requests], return_offsets_mapping=True)  # one batched call
        for i, req in enumerate(requests):
            offsets = np.asarray(encs["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            idx = token_indices(offsets, np.asarray(req.positions, dtype=np.int64))
            bad = [p for p, j in zip(req.positions, idx.tolist(), strict=True) if j < 0]
            if bad:
                out[i] = LLMError(
                    f"{self.spec}: positions {bad[:5]} are not at token boundaries of the prompt; put each "
                    "position right after a complete token (e.g. after a separator)"
                )
                continue
            prepared.append((i, list(encs["input_ids"][i]), idx))
        if prepared:
            with self._lock, torch.inference_mode():
                self.forward_passes += 1
                t = max(len(ids) for _, ids, _ in prepared)
                pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
                ids_t = torch.full((len(prepared), t), int(pad), dtype=torch.long)
                mask = torch.zeros((len(prepared), t), dtype=torch.long)
                for b, (_, ids, _) in enumerate(prepared):
                    ids_t[b, : len(ids)] = torch.tensor(ids)
                    mask[b, : len(ids)] = 1
                keep = torch.tensor(sorted({int(j) for _, _, idx in prepared for j in idx}), dtype=torch.long)
                ids_t, mask = ids_t.to(self.device), mask.to(self.device)
                try:
                    logits = self.model(
                        input_ids=ids_t, attention_mask=mask, logits_to_keep=keep.to(self.device)
                    ).logits
                    col = {int(j): c for c, j in enumerate(keep.tolist())}
                except TypeError:  # a model without logits_to_keep: full logits
                    logits = self.model(input_ids=ids_t, attention_mask=mask).logits
                    col = {j: j for j in range(t)}
                logp = torch.log_softmax(logits.float(), dim=-1)
                # One top-k over the whole batch and one copy to the host; each request then reads its rows.
                k_max = min(max(requests[i].top_k for i, _, _ in prepared), logp.shape[-1])
                vals_all, ids_all = (x.cpu().numpy() for x in logp.topk(k_max, dim=-1))
            for b, (i, ids, idx) in enumerate(prepared):
                req = requests[i]
                k = min(req.top_k, k_max)
                rows = [col[int(j)] for j in idx]
                vals, tok_ids = vals_all[b, rows, :k], ids_all[b, rows, :k]
                texts = self._texts(tok_ids.ravel().tolist())
                lps: list[TokenLogprobs] = []
                for r in range(len(idx)):
                    top: dict[str, float] = {}
                    for text, v in zip(texts[r * k : (r + 1) * k], vals[r].tolist(), strict=True):
                        top.setdefault(text, float(v))  # distinct ids can decode alike: keep the best
                    lps.append(TokenLogprobs(top=top))
                out[i] = LLMResponse(logprobs=lps, usage=Usage(prompt_tokens=len(ids), requests=1), model=self.spec)
        return [o if o is not None else LLMError("internal: no result") for o in out]

    def _texts(self, token_ids: list[int]) -> list[str]:
        """Each token id decoded on its own (as ``batch_decode`` of single ids), each id decoded once."""
        missing = sorted({t for t in token_ids if t not in self._decoded})
        if missing:
            texts = self.tokenizer.batch_decode([[t] for t in missing])
            self._decoded.update(zip(missing, texts, strict=True))
        return [self._decoded[t] for t in token_ids]

    # -- generation ---------------------------------------------------------------------------------

    def _generate(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: tuple[str, ...],
    ) -> LLMResponse:
        import torch

        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            sample = temperature > 0
            gen = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new = gen[0, len(prompt_ids) :].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(new), requests=1)
        return LLMResponse(text=text, usage=usage, model=self.spec)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        ids = list(self.tokenizer(request.prompt)["input_ids"])
        return await asyncio.to_thread(
            self._generate, ids, request.max_tokens, request.temperature, request.top_p, request.seed, request.stop
        )

    async def chat(self, request: ChatRequest) -> LLMResponse:
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            text = "".join(f"{m.role}: {m.content}\n" for m in request.messages) + "assistant:"
            ids = list(self.tokenizer(text)["input_ids"])
        return await asyncio.to_thread(
            self._generate, ids, request.max_tokens, request.temperature, request.top_p, request.seed, request.stop
        )
