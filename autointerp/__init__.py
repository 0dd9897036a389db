"""autointerp: explain what the features inside a language model mean, and score the explanations.

The data path, top to bottom (one module per stage):

    corpus.py     corpus -> fixed-length token windows
    subject.py    subject model + hook points (stops after the deepest hooked layer)
    sources/      feature sources: MLP neurons, Gemma Scope, SAELens, sparsify, OpenAI TopK
    sampling.py   one streaming pass -> FeatureRecords (top-k, quantiles, random, stats)
    llm/          async LLM clients (OpenAI, Anthropic, vLLM, local llama.cpp, transformers)
    explain.py    explainers -> Explanation
    simulate.py   simulators -> Simulation (per-token expected activation)
    score.py      scorers -> Score (pure functions over arrays + LLM-judged classifiers)
    pipeline.py   async orchestration, run directory, manifest, resume
"""

__version__ = "0.1.0"
