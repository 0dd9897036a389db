"""LLM requests and prompt tokens per feature for each scorer, beside delphi's published setup.

    .venv/bin/python benchmarks/bench_requests.py [--run RUN_DIR] [--tokenizer gemma3-270m]

Runs every scorer (and the explainer) on feature records with a counting stand-in LLM that answers
validly and counts prompt tokens with a real tokenizer (the embedded gemma3-270m's, as a proxy of an API
model's). Requests are exact by construction; tokens depend on the tokenizer. Records: the first feature
records of RUN_DIR (64-token windows from a real sampling run), else synthetic 64-token windows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


class CountingLLM:
    supports_completion = True
    supports_logprobs = True

    def __init__(self, tokenizer: object) -> None:
        self.spec = "counting:stand-in"
        self.tok = tokenizer

    def _n(self, text: str) -> int:
        return len(self.tok(text)["input_ids"])  # type: ignore[operator]

    async def chat(self, request):  # type: ignore[no-untyped-def]
        from autointerp.llm.base import LLMResponse
        from autointerp.records import Usage

        text = "\n".join(m.content for m in request.messages)
        n_ex = max(1, request.messages[-1].content.count("Example "))
        answer = "Explanation: a label" if "summarize" in request.messages[0].content.lower() else str([1] * n_ex)
        if "comma-separated list" in request.messages[0].content:
            answer = "1, 2"
        return LLMResponse(text=answer, usage=Usage(prompt_tokens=self._n(text), completion_tokens=8, requests=1))

    async def complete(self, request):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def top_logprobs(self, request):  # type: ignore[no-untyped-def]
        from autointerp.llm.base import LLMResponse, TokenLogprobs
        from autointerp.records import Usage

        out = [TokenLogprobs({"0": -0.1, "5": -2.5}) for _ in request.positions]
        return LLMResponse(logprobs=out, usage=Usage(prompt_tokens=self._n(request.prompt), requests=1))

    async def aclose(self) -> None:
        return None


def synthetic(n_features: int = 3):  # type: ignore[no-untyped-def]
    from autointerp.records import ActivationRecord, FeatureId, FeatureRecord, FeatureStats

    rng = np.random.default_rng(0)
    words = [" the", " city", " of", " river", " born", " in", " music", ",", ".", " and", " was", " a"]

    def rec(active: bool) -> ActivationRecord:
        toks = [str(w) for w in rng.choice(words, 64)]
        acts = np.where(rng.random(64) < 0.05, 3.0, 0.0) if active else np.zeros(64)
        if active:
            acts[5] = 4.0
        return ActivationRecord(toks, list(range(64)), acts.astype(np.float32))

    return [
        FeatureRecord(
            FeatureId("synthetic/L0", i),
            FeatureStats(1000, 0.05, 4.0, 0.1),
            train=[rec(True) for _ in range(20)],
            test_top=[rec(True) for _ in range(10)],
            test_quantiles=[rec(True) for _ in range(40)],
            test_random=[rec(False) for _ in range(50)],
            valid=[rec(True) for _ in range(5)],
        )
        for i in range(n_features)
    ]


async def main() -> None:
    from transformers import AutoTokenizer

    from autointerp import embedded
    from autointerp.pipeline import Clients, ExplainConfig, run_explain
    from autointerp.rundir import load_run, read_feature_records

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None, help="a run dir with records.jsonl (else synthetic)")
    ap.add_argument("--tokenizer", default="gemma3-270m")
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a new temporary folder)")
    args = ap.parse_args()
    if args.out is None:
        import tempfile

        args.out = Path(tempfile.mkdtemp(prefix="bench_requests-"))
    tok = AutoTokenizer.from_pretrained(str(embedded.hf_folder(args.tokenizer)))
    if args.run:
        records = read_feature_records(args.run)[:3]
    else:
        records = synthetic()
    import shutil

    shutil.rmtree(args.out, ignore_errors=True)
    llm = CountingLLM(tok)
    rows = []
    # delphi-compatible settings: 50 + 50 examples, 5 per prompt; simulation over 10 top + 10 random (+5 valid).
    for label, cfg in [
        ("ours, defaults (5 records/split)", ExplainConfig(scorers="simulation,detection,fuzzing,saebench_detection")),
        (
            "ours, delphi-sized (all records)",
            ExplainConfig(scorers="simulation,detection,fuzzing", max_records_per_split=0, score_quantiles=False),
        ),
    ]:
        out = args.out / label.split(",")[1].strip().split(" ")[0]
        await run_explain(cfg, out, records, Clients(llm, llm, llm))
        run = load_run(out)
        per: dict[str, list[tuple[int, int]]] = {}
        for (eid, _, _), score in run.score_rows.items():
            if run.explanations[eid].baseline:
                continue
            d = score.details
            if "requests" in d:
                per.setdefault(score.name, []).append((d["requests"], d["prompt_tokens"]))
        sims: dict[str, list[int]] = {}
        for eid, _, _ in run.simulations:
            if not run.explanations[eid].baseline:
                sims.setdefault(run.explanations[eid].feature, []).append(1)
        n_sim = np.mean([len(v) for v in sims.values()])
        usage = run.usage
        n_scored = len(run.explanations)  # selected + baselines
        rows.append((label, "simulation (all-at-once logprob)", n_sim, usage["simulator"]["prompt_tokens"] / n_scored))
        for name, v in per.items():
            rows.append((label, name, np.mean([a for a, _ in v]), np.mean([b for _, b in v])))
    print(f"{'setup':36s} {'scorer':34s} {'requests/feature':>17s} {'prompt tok/feature':>19s}")
    for label, name, req, ptok in rows:
        print(f"{label:36s} {name:34s} {req:17.1f} {'-' if ptok is None else f'{ptok:19.0f}':>19s}")
    print("delphi (published defaults): detection ~20 requests, fuzzing ~20 requests (50+50 examples, 5 per")
    print("prompt), simulation ~100 requests per latent.")


if __name__ == "__main__":
    asyncio.run(main())
