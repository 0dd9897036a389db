"""Sampling overhead: bare forward pass (stopped after the hooked layer) vs the full sampling step.

For each model, the same batches are timed in three arms, interleaved batch by batch (arm order rotates):

- ``bare``: ``Subject.forward_bare`` stopped at the same hook (no capture, no feature work);
- ``neurons``: ``Sampler.step`` with the neuron source at ``L{layer}/mlp_neurons`` (all d_mlp neurons);
- ``sae``: ``Sampler.step`` with a random-weight Gemma-Scope-shaped JumpReLU SAE (``params.npz``, 4096 latents,
  thresholds set so ~2% of latents fire) at ``L{layer}/resid_post``, loaded through autointerp's own loader.

Reports tokens/s per arm and the ratio sampling/bare (goal >= 0.9), from wall time and from process CPU
time (the latter is steadier on a shared machine).

``--e2e TOKENS`` instead compares the whole ``autointerp sample`` command with a bare forward on the same
windows, each in a fresh process (see ``bench_e2e``; issue #11's benchmark is ``--e2e 20000``).

    .venv/bin/python benchmarks/bench_sampling.py [--models gemma3-270m smollm2-135m] [--batches 6]
    flock /tmp/autointerp-heavy.lock .venv/bin/python benchmarks/bench_sampling.py --e2e 20000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autointerp.corpus import load_corpus
from autointerp.hooks import HookPoint
from autointerp.sampling import Sampler, SamplingConfig
from autointerp.sources.neurons import NeuronSource
from autointerp.subject import Subject, load_subject

LAYERS = {"gemma3-270m": 6, "smollm2-135m": 15}


def random_jumprelu(subject: Subject, hook: HookPoint, n_latents: int, calib: torch.Tensor, folder: Path) -> object:
    """A random Gemma-Scope-shaped params.npz, thresholds at each latent's 98th percentile on ``calib``."""
    from autointerp.sources.formats import load_sae

    d = subject.hook_dim(hook)
    g = torch.Generator().manual_seed(0)
    w_enc = torch.randn(d, n_latents, generator=g) / d**0.5
    b_enc = torch.zeros(n_latents)
    x = subject.run(calib, [hook])[hook].reshape(-1, d).float().cpu()
    pre = x @ w_enc + b_enc
    threshold = torch.quantile(pre[: min(len(pre), 2048)], 0.98, dim=0).clamp(min=1e-3)
    np.savez(
        folder / "params.npz",
        W_enc=w_enc.numpy(), W_dec=w_enc.T.contiguous().numpy(), b_enc=b_enc.numpy(),
        b_dec=np.zeros(d, np.float32), threshold=threshold.numpy(),
    )
    return load_sae(folder / "params.npz", format="gemma_scope", hook=hook,
                    address=f"random-jumprelu-{n_latents}@{hook}", model_name=subject.name).to(subject.device)


def bench_model(name: str, batches: int, batch_size: int, window: int, n_latents: int, threads: int) -> dict:
    subject = load_subject(name, threads=threads)
    layer = LAYERS.get(name, subject.n_layers // 3)
    h_neur = HookPoint(layer, "mlp_neurons")
    h_res = HookPoint(layer, "resid_post")
    windows = load_corpus("wiki", subject.tokenizer, window, max_tokens=(batches + 1) * batch_size * window)
    all_batches = list(windows.batches(batch_size))[: batches + 1]
    warm, timed = all_batches[0], all_batches[1:]
    with tempfile.TemporaryDirectory() as tmp:
        sae = random_jumprelu(subject, h_res, n_latents, warm.input_ids, Path(tmp))
        cfg = SamplingConfig(window=window, batch_size=batch_size)
        samplers = {
            "neurons": Sampler(subject, NeuronSource(name, h_neur, subject.hook_dim(h_neur)), cfg),
            "sae": Sampler(subject, sae, cfg),  # type: ignore[arg-type]
        }
        arms = {
            "bare_neurons": lambda b: subject.forward_bare(b.input_ids, [h_neur]),
            "neurons": lambda b: samplers["neurons"].step(b),
            "bare_sae": lambda b: subject.forward_bare(b.input_ids, [h_res]),
            "sae": lambda b: samplers["sae"].step(b),
        }
        for fn in arms.values():  # warm-up
            fn(warm)
        secs = dict.fromkeys(arms, 0.0)
        cpu = dict.fromkeys(arms, 0.0)
        names = list(arms)
        for i, b in enumerate(timed):
            for j in range(len(names)):
                arm = names[(i + j) % len(names)]
                t0, c0 = time.perf_counter(), time.process_time()
                arms[arm](b)
                secs[arm] += time.perf_counter() - t0
                cpu[arm] += time.process_time() - c0
    n_tok = sum(b.input_ids.numel() for b in timed)  # model tokens incl. BOS and padding: same for all arms
    tps = {k: n_tok / v for k, v in secs.items()}
    cpu_tps = {k: n_tok / v for k, v in cpu.items()}
    return {
        "cpu_ratio_neurons": cpu_tps["neurons"] / cpu_tps["bare_neurons"],
        "cpu_ratio_sae": cpu_tps["sae"] / cpu_tps["bare_sae"],
        "model": name,
        "layer": layer,
        "tokens": n_tok,
        "tps": tps,
        "ratio_neurons": tps["neurons"] / tps["bare_neurons"],
        "ratio_sae": tps["sae"] / tps["bare_sae"],
        "n_neurons": subject.hook_dim(h_neur),
    }


E2E_ARGS = ["--model", "gemma3-270m", "--hook", "L6/mlp_neurons", "--batch-size", "32", "--window", "64"]


def _bare_child(tokens: int, threads: int) -> None:
    """The bare arm of ``--e2e``: the same set-up as ``autointerp sample`` (model, corpus windows), then the
    forward stopped after layer 6 over every batch (tokenisation included, nothing else). Prints JSON."""
    import json

    t_start = time.perf_counter()
    subject = load_subject("gemma3-270m", threads=threads)
    hook = HookPoint(6, "mlp_neurons")
    windows = load_corpus("wiki", subject.tokenizer, 64, max_tokens=tokens, seed=0)
    t0 = time.perf_counter()
    n_tokens = n_model = 0
    for b in windows.batches(32):
        subject.forward_bare(b.input_ids, [hook])
        n_tokens += b.n_tokens
        n_model += b.input_ids.numel()
    t1 = time.perf_counter()
    print(json.dumps({"pass_s": t1 - t0, "setup_s": t0 - t_start, "tokens": n_tokens, "model_tokens": n_model}))


def bench_e2e(tokens: int, threads: int, rounds: int) -> None:
    """``autointerp sample`` (all 2,048 L6 MLP neurons of gemma3-270m, wiki, batches of 32x64) against a bare
    forward stopped after layer 6 on the same windows, each a fresh process, alternated ``rounds`` times.

    Both count document tokens (BOS and padding excluded). ``work`` ratio: bare pass seconds / the sample
    stage's seconds in the manifest (from before the progress bar starts to after the records are written:
    the pass with tokenisation, capture, state update and progress bar, then writing the records); ``pass``
    ratio: the same without writing (the manifest's tok/s); ``process`` ratio: whole processes (start-up,
    imports, model load included) wall to wall."""
    import json

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1",
           "COLUMNS": "120"}  # the progress bar renders as in a terminal
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--bare-child", str(tokens), "--threads", str(threads)],
                                 check=True, env=env, capture_output=True, text=True).stdout
            bare_wall = time.perf_counter() - t0
            bare = json.loads(out.strip().splitlines()[-1])
            run = f"{tmp}/run{i}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "autointerp", "sample", *E2E_ARGS, "--tokens", str(tokens),
                            "--threads", str(threads), "--run-dir", run], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sample_wall = time.perf_counter() - t0
            stage = json.loads(Path(f"{run}/manifest.json").read_text())["stages"]["sample"]
            assert stage["tokens"] == bare["tokens"], (stage["tokens"], bare["tokens"])
            bare_tps = bare["tokens"] / bare["pass_s"]
            work_tps = stage["tokens"] / stage["seconds"]
            row = {"bare_tps": bare_tps, "sample_work_tps": work_tps, "sample_pass_tps": stage["tokens_per_s"],
                   "work": work_tps / bare_tps, "pass": stage["tokens_per_s"] / bare_tps,
                   "process": bare_wall / sample_wall}
            rows.append(row)
            print(f"round {i + 1}: {bare['tokens']:,} document tokens ({bare['model_tokens']:,} model tokens); bare "
                  f"pass {bare['pass_s']:.1f} s = {bare_tps:,.0f} tok/s (process {bare_wall:.1f} s); sample stage "
                  f"{stage['seconds']:.1f} s = {work_tps:,.0f} tok/s, pass alone {stage['tokens_per_s']:,.0f} tok/s "
                  f"(process {sample_wall:.1f} s); ratios work {row['work']:.3f}, pass {row['pass']:.3f}, "
                  f"process {row['process']:.3f}; load {os.getloadavg()[0]:.1f}", flush=True)
    for k in ("work", "pass", "process"):
        vals = [r[k] for r in rows]
        print(f"{k} ratio (goal >= 0.9 for work): mean {np.mean(vals):.3f}, per round {[round(v, 3) for v in vals]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--e2e", type=int, default=0, metavar="TOKENS",
                    help="only the end-to-end comparison: `autointerp sample` vs the bare forward on TOKENS tokens")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two arms of --e2e")
    ap.add_argument("--bare-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.bare_child:
        _bare_child(args.bare_child, args.threads)
        return
    print(f"load before: {os.getloadavg()}")
    if args.e2e:
        bench_e2e(args.e2e, args.threads, args.rounds)
        print(f"load after: {os.getloadavg()}")
        return
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, batches of "
          f"{args.batch_size}x{args.window}, {args.batches} timed batches per arm, interleaved")
    for name in args.models:
        r = bench_model(name, args.batches, args.batch_size, args.window, args.latents, args.threads)
        t = r["tps"]
        print(f"{name} (layer {r['layer']}, {r['tokens']} tokens per arm):")
        print(f"  neurons ({r['n_neurons']}): bare {t['bare_neurons']:.0f} tok/s, sampling {t['neurons']:.0f} tok/s, "
              f"ratio {r['ratio_neurons']:.3f} (CPU-time ratio {r['cpu_ratio_neurons']:.3f})")
        print(f"  JumpReLU SAE ({args.latents}): bare {t['bare_sae']:.0f} tok/s, sampling {t['sae']:.0f} tok/s, "
              f"ratio {r['ratio_sae']:.3f} (CPU-time ratio {r['cpu_ratio_sae']:.3f})")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
