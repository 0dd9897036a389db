"""The transformers backend's logprob simulation on one GPU, against the bare forward pass (issues #11, #12).

No LLM can be downloaded on the GPU machine, so the simulator is a **random-weight** model with
Qwen2.5-1.5B's sizes (transformers' ``Qwen2Config``: 28 layers, d_model 1536, d_mlp 8960, 12 heads, 2 KV
heads, vocabulary 151,936) in bfloat16, with the tiny word-level tokenizer of ``autointerp/tiny_models.py``.
What is timed is autointerp's own path, not the model's answers:

- ``backend``: ``--requests`` all-at-once simulation requests (``TopLogprobsRequest``: a ~``--words``-token
  prompt, ``--slots`` positions, top-``--top-k`` at each) sent at once through ``TransformersBackend``
  (its micro-batcher groups them into forward passes of ``--max-batch``);
- ``bare``: ``model(input_ids, logits_to_keep=slots)`` on the same token ids in batches of ``--max-batch``.

Prompt tokens per second of each, and their ratio, for each ``--max-batch``.

    python3 benchmarks/bench_gpu_llm.py [--requests 512] [--max-batch 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu_scale import build_random, sync

from autointerp.llm.base import TopLogprobsRequest
from autointerp.llm.transformers_backend import TransformersBackend
from autointerp.tiny_models import WORDS, make_tiny_tokenizer


def qwen_1p5b(device: str, dtype: torch.dtype, tiny: bool) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2)
    if tiny:
        sizes = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1)
    cfg = Qwen2Config(**sizes, max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1,
                      pad_token_id=0, eos_token_id=2)
    return build_random(Qwen2ForCausalLM, cfg, device, dtype)


def requests(n: int, words: int, slots: int, top_k: int, seed: int = 0) -> list[TopLogprobsRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        head = " ".join(rng.choice(WORDS) for _ in range(words - 2 * slots))
        text, pos = head, []
        for _ in range(slots):
            text += f" {rng.choice(WORDS)} 0"
            pos.append(len(text) - 2)  # right after the word, before its value slot
        out.append(TopLogprobsRequest(prompt=text, positions=tuple(pos), top_k=top_k))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--words", type=int, default=500, help="prompt length in tokens (one word = one token)")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=15)
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run)")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees no GPU here")
        return 0
    name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, dtype {args.dtype}")
    tok = make_tiny_tokenizer()
    model = qwen_1p5b(args.device, getattr(torch, args.dtype), args.tiny)
    reqs = requests(args.requests, args.words, args.slots, args.top_k)
    ids = [tok(r.prompt)["input_ids"] for r in reqs]
    n_tokens = sum(len(i) for i in ids)
    print(f"{len(reqs)} requests, {n_tokens:,} prompt tokens ({n_tokens / len(reqs):.0f} each), "
          f"{args.slots} slots, top-{args.top_k}")
    print(f"{'max batch':>9s} {'backend tok/s':>14s} {'bare tok/s':>11s} {'ratio':>6s} {'forward passes':>15s}")
    for mb in args.max_batch:
        backend = TransformersBackend("bench", model, tok, device=args.device, max_batch=mb)

        async def run_all(b: TransformersBackend = backend) -> list[Any]:
            return await asyncio.gather(*(b.top_logprobs(r) for r in reqs))

        asyncio.run(run_all())  # warm-up (kernels, allocator)
        backend.forward_passes = 0
        sync(args.device)
        t = time.perf_counter()
        answers = asyncio.run(run_all())
        sync(args.device)
        t_backend = time.perf_counter() - t
        assert all(len(a.logprobs) == args.slots for a in answers)
        passes = backend.forward_passes

        def bare(mb: int = mb) -> float:
            sync(args.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for s in range(0, len(ids), mb):
                    chunk = ids[s : s + mb]
                    width = max(len(x) for x in chunk)
                    x = torch.zeros((len(chunk), width), dtype=torch.long)
                    for j, row in enumerate(chunk):
                        x[j, : len(row)] = torch.tensor(row)
                    keep = torch.arange(width - 2 * args.slots, width, 2)
                    model(input_ids=x.to(args.device), logits_to_keep=keep.to(args.device))
            sync(args.device)
            return time.perf_counter() - t0

        bare()  # warm-up
        t_bare = bare()
        print(f"{mb:9d} {n_tokens / t_backend:14,.0f} {n_tokens / t_bare:11,.0f} {t_bare / t_backend:6.2f} "
              f"{passes:15d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
