"""GPU check: sampling and simulation on a device/dtype agree with the CPU in float32.

Needs nothing but the repository: tiny random-weight models built from Gemma 3 and GPT-2 configs
(autointerp/tiny_models.py), a small generated corpus, and random SAEs (a dense ReLU one and a TopK one)
at ``L1/resid_post`` beside the MLP neurons at ``L1/mlp_neurons``. For every (architecture, source, dtype) it
samples on ``--device`` with ``autointerp.sampling.run_sampling`` and compares the records
with the CPU float32 reference:

- top windows: the share of (feature, window) pairs of the top splits that both runs chose;
- activations: the largest |difference| on the windows both chose, relative to the feature's max;
- simulation: the all-at-once logprob simulator (the tiny Gemma 3 model on the device as the simulator LLM,
  through the transformers backend) on 8 records; the largest |difference| of the expected values (0..9);
- steering: the subject steered as the intervention scorers steer it (a neuron clamped, or an SAE latent's
  decoder row added at its hook), next-token log-probabilities on 4 prompts; the largest |difference|.

    .venv/bin/python benchmarks/gpu_check.py                 # cuda; prints "no CUDA device" without one
    .venv/bin/python benchmarks/gpu_check.py --device cpu    # the same comparison on the CPU (bfloat16 vs float32)

Exit status 1 when float32 on the device disagrees with the CPU beyond the tolerances (a bug), 0 otherwise;
bfloat16 differences are reported, not judged (bfloat16 rounds activations to 3 significant digits).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

F32_TOP_AGREEMENT = 0.99
F32_ACT_TOL = 1e-3
F32_SIM_TOL = 1e-2
F32_STEER_TOL = 1e-3


@dataclass
class Row:
    arch: str
    source: str
    dtype: str
    top_agreement: float
    max_rel_act_diff: float
    max_sim_diff: float | None
    max_steer_diff: float | None = None
    """Largest |difference| of the steered next-token log-probabilities (intervention scorers' path)."""

    def ok(self) -> bool:
        if self.dtype != "float32":
            return True
        sim_ok = self.max_sim_diff is None or self.max_sim_diff <= F32_SIM_TOL
        steer_ok = self.max_steer_diff is None or self.max_steer_diff <= F32_STEER_TOL
        return (self.top_agreement >= F32_TOP_AGREEMENT and self.max_rel_act_diff <= F32_ACT_TOL and sim_ok
                and steer_ok)


def _corpus(folder: Path) -> Path:
    from autointerp.tiny_models import WORDS

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90))) for _ in range(60)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def _subject(arch: str, device: str, dtype: str) -> Any:
    from autointerp.subject import parse_dtype, subject_from_model
    from autointerp.tiny_models import make_tiny_model, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    model = make_tiny_model(arch, len(tok), seed=0).to(device=device, dtype=parse_dtype(dtype))
    return subject_from_model(f"tiny-{arch}", model, tok)


def _source(kind: str, subject: Any) -> Any:
    from autointerp.hooks import HookPoint
    from autointerp.sources.neurons import neuron_source
    from autointerp.sources.sae import random_sae

    if kind == "neurons":
        hook = HookPoint(1, "mlp_neurons")
        return neuron_source(subject.name, hook, subject.hook_dim(hook))
    hook = HookPoint(1, "resid_post")
    if kind == "sae-relu":
        return random_sae(hook, subject.d_model, 256, seed=1)
    return random_sae(hook, subject.d_model, 256, activation="topk", k=8, seed=1)


def _sample(arch: str, kind: str, device: str, dtype: str, corpus: Path, out: Path) -> list[Any]:
    from autointerp.corpus import load_corpus
    from autointerp.record_store import load_feature_records
    from autointerp.sampling import SamplingConfig, run_sampling

    cfg = SamplingConfig(tokens=3000, window=16, batch_size=8, n_top=12, n_train=6, n_valid=2, n_test_top=4,
                         n_quantile_bins=2, per_quantile_bin=2, n_random=4, features=tuple(range(32)))
    subject = _subject(arch, device, dtype)
    source = _source(kind, subject)
    windows = load_corpus(str(corpus), subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=0)
    run_sampling(subject, source, windows, cfg, out)
    return load_feature_records(out)


def _compare_records(ref: list[Any], got: list[Any]) -> tuple[float, float]:
    both = total = 0
    worst = 0.0
    for a, b in zip(ref, got, strict=True):
        wa = {r.window: r for r in a.train + a.valid + a.test_top}
        wb = {r.window: r for r in b.train + b.valid + b.test_top}
        total += max(len(wa), len(wb))
        common = set(wa) & set(wb)
        both += len(common)
        scale = max(a.stats.max, 1e-6)
        for w in common:
            worst = max(worst, float(np.abs(wa[w].activations - wb[w].activations).max()) / scale)
    return (both / total if total else 1.0), worst


def _simulate(records: list[Any], device: str, dtype: str) -> list[np.ndarray | None]:
    """Expected values (0..9) at every token of each record's first train example, read like the all-at-once
    simulator does (top-k next-token distributions at slot positions, renormalised over the digits) from the
    tiny Gemma 3 model on ``device`` through the transformers backend. The slots sit right after each word,
    since the tiny word-level tokenizer has token boundaries only at spaces."""
    from autointerp.llm.base import TopLogprobsRequest
    from autointerp.llm.transformers_backend import TransformersBackend
    from autointerp.simulate import MAX_VALUE, digit_distribution
    from autointerp.subject import parse_dtype
    from autointerp.tiny_models import make_tiny_model, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    model = make_tiny_model("gemma3", len(tok), seed=3).to(device=device, dtype=parse_dtype(dtype)).eval()
    backend = TransformersBackend("tiny-gemma3", model, tok, device=device)

    async def one(words: list[str]) -> np.ndarray | None:
        text, slots = "city names :", []
        for w in words:
            text += f" {w} 0"
            slots.append(len(text) - 2)  # right after the word, before its value slot
        resp = await backend.top_logprobs(TopLogprobsRequest(prompt=text, positions=slots, top_k=len(tok)))
        dist = np.stack([digit_distribution(t.top)[0] for t in resp.logprobs])
        mass = dist.sum(axis=1, keepdims=True)
        if (mass <= 0).any():
            return None
        return (dist / mass) @ np.arange(MAX_VALUE + 1, dtype=np.float64)

    async def run() -> list[np.ndarray | None]:
        return [await one([t for t in rec.train[0].tokens if t.strip()]) for rec in records]

    return asyncio.run(run())


def _steered_logprobs(arch: str, kind: str, device: str, dtype: str) -> torch.Tensor:
    """Next-token log-probabilities of the tiny subject on 4 fixed prompts while steered as the intervention
    scorers steer (neurons: clamp neuron 3 to 4.0; SAEs: add 4 x latent 3's decoder row at the hook)."""
    from autointerp.steering import steer

    subject = _subject(arch, device, dtype)
    source = _source(kind, subject).to(subject.device, subject.dtype)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, len(subject.tokenizer), (4, 12), generator=g).to(subject.device)
    if kind == "neurons":
        ctx = steer(subject, source.hook, torch.zeros(subject.hook_dim(source.hook)), 4.0, mode="clamp", feature=3)
    else:
        ctx = steer(subject, source.hook, source.decoder_rows([3])[0], 4.0)
    with ctx, torch.inference_mode():
        logits = subject.model(input_ids=ids, use_cache=False).logits.float()
    return torch.log_softmax(logits, dim=-1).cpu()


def _sim_diff(ref: list[np.ndarray | None], got: list[np.ndarray | None]) -> float | None:
    diffs = [float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True) if a is not None and b is not None]
    return max(diffs) if diffs else None


ARCHS = ("gemma3", "gpt2")
SOURCES = ("neurons", "sae-relu", "sae-topk")


def check(device: str, dtypes: list[str], archs: tuple[str, ...] = ARCHS, sources: tuple[str, ...] = SOURCES,
          threads: int = 2) -> list[Row]:
    """Compare ``device`` in each dtype against the CPU in float32; one Row per (arch, source, dtype)."""
    torch.set_num_threads(threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="autointerp-gpu-check-") as tmp:
        root = Path(tmp)
        corpus = _corpus(root)
        for arch in archs:
            for kind in sources:
                ref = _sample(arch, kind, "cpu", "float32", corpus, root / f"{arch}-{kind}-ref")
                live = [r for r in ref if r.train][:8]
                sim_ref = _simulate(live, "cpu", "float32") if kind == "neurons" else None
                steer_ref = _steered_logprobs(arch, kind, "cpu", "float32")
                for dtype in dtypes:
                    got = _sample(arch, kind, device, dtype, corpus, root / f"{arch}-{kind}-{device}-{dtype}")
                    agree, worst = _compare_records(ref, got)
                    sim = None
                    if sim_ref is not None:
                        sim = _sim_diff(sim_ref, _simulate(live, device, dtype))
                    steered = float((_steered_logprobs(arch, kind, device, dtype) - steer_ref).abs().max())
                    rows.append(Row(arch, kind, dtype, agree, worst, sim, steered))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="torch device to check against the CPU (default cuda)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees no GPU here; run on a GPU machine, "
              "or pass --device cpu to run the same comparison on the CPU")
        return 0
    name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}; reference: CPU float32")
    rows = check(args.device, args.dtypes)
    print(f"{'model':8s} {'source':9s} {'dtype':9s} {'top agree':>9s} {'max rel dact':>12s} {'max dEV sim':>11s} "
          f"{'max dlogp steer':>15s}  ok")
    for r in rows:
        sim = "-" if r.max_sim_diff is None else f"{r.max_sim_diff:.4f}"
        st = "-" if r.max_steer_diff is None else f"{r.max_steer_diff:.2e}"
        print(f"{r.arch:8s} {r.source:9s} {r.dtype:9s} {r.top_agreement:9.3f} {r.max_rel_act_diff:12.2e} "
              f"{sim:>11s} {st:>15s}  {'yes' if r.ok() else 'NO'}")
    return 0 if all(r.ok() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
