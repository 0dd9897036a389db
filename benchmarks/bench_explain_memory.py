"""Peak RSS of an explain run over every latent of a 16,384-latent random SAE: streamed by feature range vs
held in one range (every record and result of the run in memory at once, as the pipeline did before it
streamed).

1. ``sample`` (a fresh process): a random-weight dense ReLU SAE with ``--latents`` latents at L6/resid_post of
   the embedded gemma3-270m (``sources.sae.random_sae``), every latent sampled over ``--tokens`` wiki tokens
   into a records store (skipped with ``--sample-run DIR``).
2. ``explain`` (a fresh process per arm): ``run_explain`` over ``RecordStream.of_sample_run`` with the
   deterministic fake LLM of the tests (``tests/fake_llm.py``: instant answers, so the run measures the
   pipeline, not an LLM), ``--scorers`` (default none: one explainer request per feature, so 16,384 features
   fit in minutes; ``simulation`` adds the simulations and scores), ``--records`` records per split, the
   shuffled baseline on; once per ``--arms`` range size (1024: streamed; 0: one range of every feature,
   which is what the pipeline held before it streamed).

Peak RSS is the kernel's high-water mark (``VmHWM``) of each process; the RSS before the run (imports) is
reported beside it.

    flock /tmp/autointerp-heavy.lock .venv/bin/python benchmarks/bench_explain_memory.py [--latents 16384]
        [--tokens 4096] [--records 1] [--scorers ""] [--sample-run DIR] [--features N] [--arms 1024,0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_sample(out: str, latents: int, tokens: int) -> None:
    import torch

    from autointerp.corpus import load_corpus
    from autointerp.hooks import HookPoint
    from autointerp.sampling import SamplingConfig, run_sampling
    from autointerp.sources.sae import random_sae
    from autointerp.subject import load_subject

    torch.set_num_threads(2)
    subject = load_subject("gemma3-270m", threads=2)
    sae = random_sae(HookPoint(6, "resid_post"), subject.d_model, latents, seed=0, model_name="gemma3-270m")
    cfg = SamplingConfig(tokens=tokens, checkpoint_every=1000)
    windows = load_corpus("wiki", subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=0)
    t0 = time.perf_counter()
    res = run_sampling(subject, sae, windows, cfg, Path(out))
    print(json.dumps({"peak_rss_mb": _status_mb("VmHWM"), "seconds": time.perf_counter() - t0,
                      "tokens": res.n_tokens, "features": res.n_features, "dead": res.n_dead}))


def child_explain(sample_run: str, out: str, range_size: int, records: int, scorers: str, n_features: int) -> None:
    import asyncio
    import logging

    from fake_llm import FakeLLM

    from autointerp.pipeline import Clients, ExplainConfig, RecordStream, run_explain

    logging.basicConfig(level=logging.WARNING)
    before = _status_mb("VmRSS")
    fake = FakeLLM(spec="local:fake", chat_fn=lambda req: "Explanation: the word the")
    cfg = ExplainConfig(range_size=range_size, max_records_per_split=records, scorers=scorers, llm_cache=False)
    t0 = time.perf_counter()
    stream = RecordStream.of_sample_run(Path(sample_run), list(range(n_features)) if n_features else None)
    summary = asyncio.run(run_explain(cfg, Path(out), stream, Clients(fake, fake, fake)))
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file()) / 2**20
    print(json.dumps({"peak_rss_mb": _status_mb("VmHWM"), "rss_before_mb": before,
                      "seconds": time.perf_counter() - t0, "features": summary.n_features,
                      "explained": summary.n_explained, "run_dir_mb": size}))


def _child(args: list[str]) -> dict[str, float]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"child {args[0]} failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "sample":
            child_sample(rest[0], int(rest[1]), int(rest[2]))
        else:
            child_explain(rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4], int(rest[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=16_384)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--records", type=int, default=1, help="records simulated per split")
    ap.add_argument("--scorers", default="", help="scorers of the explain run (default none)")
    ap.add_argument("--features", type=int, default=0, help="explain only the first N latents (default all)")
    ap.add_argument("--sample-run", type=Path, help="an existing sample run (skips sampling)")
    ap.add_argument("--arms", default="1024,0", help="range sizes to compare; 0: one range of every feature")
    args = ap.parse_args()
    print(f"load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-explain-mem-") as tmp:
        sample_run = args.sample_run
        if sample_run is None:
            sample_run = Path(tmp) / "sample"
            s = _child(["sample", str(sample_run), str(args.latents), str(args.tokens)])
            print(f"sample: {s['features']:.0f} latents over {s['tokens']:.0f} tokens in {s['seconds']:.0f} s "
                  f"({s['dead']:.0f} dead), peak RSS {s['peak_rss_mb']:.0f} MB")
        for arm in (int(a) for a in args.arms.split(",")):
            size = arm or 10**9
            e = _child(["explain", str(sample_run), str(Path(tmp) / f"explain-{arm}"), str(size), str(args.records),
                        args.scorers, str(args.features)])
            what = f"ranges of {arm:,}" if arm else "one range (all in memory)"
            what += f", scorers: {args.scorers or 'none'}"
            print(f"explain, {what}: {e['features']:.0f} features ({e['explained']:.0f} explained) in "
                  f"{e['seconds']:.0f} s; peak RSS {e['peak_rss_mb']:.0f} MB (before the run {e['rss_before_mb']:.0f} "
                  f"MB); run directory {e['run_dir_mb']:.0f} MB")
            print(f"load after the arm: {os.getloadavg()}")


if __name__ == "__main__":
    main()
