"""Sampling throughput of a Gemma-2-2B-shaped subject on one GPU: issue #11's "latents per hour" input.

No model can be downloaded on the GPU machine, so the subject is **random-weight** Gemma 2 2B (transformers'
``Gemma2Config`` with the released model's sizes: 26 layers, d_model 2304, d_mlp 9216, 8 heads of 256, 4 KV
heads, vocabulary 256,000), built on the device in ``--dtype``. The tokenizer is the tiny word-level one of
``autointerp/tiny_models.py`` (token ids differ from Gemma's; the compute per token does not). SAEs are random
Gemma-Scope-shaped JumpReLU files (``params.npz``; thresholds at each latent's 98th percentile on a calibration
batch, so ~2% of latents fire, as in ``bench_sampling.py``) with ``--latents`` latents, loaded through
autointerp's own loader.

Arms, each over the same ``--tokens`` corpus tokens in batches of ``--batch`` windows of ``--window`` tokens
(one warm-up batch of each arm first):

- ``bare``: ``Subject.forward_bare`` stopped after the hooked layer (the lower bound);
- ``sample L20``: ``run_sampling`` with one SAE at ``L{layer}/resid_post``, records written;
- ``sample 3 hooks``: one pass feeding SAEs at ``--multi`` layers (each its own records).

    python3 benchmarks/bench_gpu_scale.py [--tokens 1000000] [--latents 16384] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import random_jumprelu

from autointerp.corpus import load_corpus
from autointerp.hooks import HookPoint
from autointerp.sampling import SamplingConfig, run_sampling
from autointerp.subject import parse_dtype, subject_from_model
from autointerp.tiny_models import WORDS, make_tiny_tokenizer


def gemma2_2b(device: str, dtype: torch.dtype, tiny: bool = False) -> Any:
    """Random-weight Gemma 2 2B (``tiny``: the same architecture at toy sizes, for a CPU smoke run)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    sizes = dict(vocab_size=256_000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256)
    if tiny:
        sizes = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=26,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    cfg = Gemma2Config(
        **sizes, max_position_embeddings=8192,
        sliding_window=4096, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, bos_token_id=1, pad_token_id=0, eos_token_id=2,
    )
    return build_random(Gemma2ForCausalLM, cfg, device, dtype)


def build_random(model_class: Any, cfg: Any, device: str, dtype: torch.dtype) -> Any:
    """``model_class(cfg)`` with seeded random weights, built directly on ``device`` in ``dtype``."""
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so wall clocks time the work itself."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--latents", type=int, default=16_384)
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--multi", default="6,12,20", help="layers of the one-pass multi-hook arm ('' to skip)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes of the same architecture (CPU smoke run)")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees no GPU here")
        return 0
    name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, dtype {args.dtype}")
    dtype = parse_dtype(args.dtype)
    t0 = time.perf_counter()
    tok = make_tiny_tokenizer()
    subject = subject_from_model("gemma2-2b-random", gemma2_2b(args.device, dtype, args.tiny), tok)
    print(f"random Gemma 2 2B built in {time.perf_counter() - t0:.1f} s")

    with tempfile.TemporaryDirectory(prefix="autointerp-gpu-scale-") as tmp:
        root = Path(tmp)
        rng = random.Random(0)
        words_needed = int(args.tokens * 1.1)
        docs, n = [], 0
        while n < words_needed:
            k = rng.randint(50, 400)
            docs.append(" ".join(rng.choice(WORDS) for _ in range(k)))
            n += k
        corpus = root / "corpus.txt"
        corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        windows = load_corpus(str(corpus), tok, args.window, max_tokens=args.tokens, seed=0)
        batches = list(windows.batches(args.batch))
        n_tokens = sum(b.n_tokens for b in batches)
        print(f"corpus: {n_tokens:,} tokens in {len(batches)} batches of {args.batch}x{args.window} "
              f"(tokenised in {time.perf_counter() - t0:.1f} s)")

        def sae(layer: int) -> Any:
            hook = HookPoint(layer, "resid_post")
            folder = root / f"sae-L{layer}"
            folder.mkdir()
            calib = batches[0].input_ids[:16].to(args.device)
            return random_jumprelu(subject, hook, args.latents, calib, folder)

        main_sae = sae(args.layer)
        hook = main_sae.hook

        def bare() -> float:
            subject.forward_bare(batches[0].input_ids.to(args.device), [hook])  # warm-up
            sync(args.device)
            t = time.perf_counter()
            for b in batches:
                subject.forward_bare(b.input_ids.to(args.device), [hook])
            sync(args.device)
            return time.perf_counter() - t

        def sample(sources: list[Any], tag: str) -> tuple[float, float]:
            cfg = SamplingConfig(tokens=args.tokens, window=args.window, batch_size=args.batch)
            run_sampling(subject, sources, windows,
                         SamplingConfig(tokens=1, window=args.window, batch_size=args.batch), root / f"warm-{tag}")
            sync(args.device)
            t = time.perf_counter()
            res = run_sampling(subject, sources, windows, cfg, root / f"run-{tag}")
            sync(args.device)
            wall = time.perf_counter() - t
            return wall, float(res.tokens_per_s or 0.0)

        rows: list[tuple[str, float, float]] = []
        b1 = bare()
        rows.append((f"bare forward to L{args.layer}", b1, n_tokens / b1))
        wall, pass_tps = sample([main_sae], "one")
        rows.append((f"sample L{args.layer} ({args.latents:,} latents), records written", wall, n_tokens / wall))
        print(f"  (sampling pass alone: {pass_tps:,.0f} tok/s)")
        if args.multi:
            layers = [int(x) for x in args.multi.split(",")]
            srcs = [main_sae if la == args.layer else sae(la) for la in layers]
            wall3, _ = sample(srcs, "multi")
            rows.append((f"sample L{'+L'.join(map(str, layers))} in one pass ({len(layers)} x {args.latents:,})",
                         wall3, n_tokens / wall3))
        b2 = bare()
        rows.append((f"bare forward to L{args.layer} (again)", b2, n_tokens / b2))

        print(f"{'arm':60s} {'seconds':>8s} {'tok/s':>10s}")
        for label, s, tps in rows:
            print(f"{label:60s} {s:8.1f} {tps:10,.0f}")
        bare_tps = n_tokens / min(b1, b2)
        print(f"sampling / bare (records written): {rows[1][2] / bare_tps:.3f}")
        if torch.device(args.device).type == "cuda":
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
