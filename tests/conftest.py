"""Shared fixtures: tiny random subject models (Llama-style and GPT-2) with a tiny word-level tokenizer.

Other test modules may use ``tiny_tokenizer``, ``tiny_llama``, ``tiny_gpt2`` (Subject objects) and the
``make_tiny_subject(arch)`` helper. Everything runs offline on CPU in well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models are dominated by per-op overhead: one thread is faster, and far faster on a busy machine.
torch.set_num_threads(1)

# The tiny models live in the package so benchmarks/gpu_check.py can build them too.
from autointerp.tiny_models import WORDS, make_tiny_model, make_tiny_tokenizer  # noqa: E402

__all__ = ["WORDS", "make_tiny_model", "make_tiny_tokenizer"]


def make_tiny_subject(arch: str = "llama", seed: int = 0) -> Any:
    from autointerp.subject import subject_from_model

    tok = make_tiny_tokenizer()
    return subject_from_model(f"tiny-{arch}", make_tiny_model(arch, len(tok), seed), tok)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    """A Subject wrapping a 2-layer random LlamaForCausalLM (d_model 32, d_mlp 48)."""
    return make_tiny_subject("llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> Any:
    """A Subject wrapping a 2-layer random GPT2LMHeadModel (d_model 32, d_mlp 128)."""
    return make_tiny_subject("gpt2")


@pytest.fixture(scope="session")
def tiny_gemma3() -> Any:
    """A Subject wrapping a 2-layer random Gemma3ForCausalLM (d_model 32, d_mlp 48)."""
    return make_tiny_subject("gemma3")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Llama (hidden 32, MLP 48, 2 layers) with the tiny tokenizer: a --model folder."""
    tok = make_tiny_tokenizer()
    path = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_model("llama", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_corpus_file(tmp_path: Path) -> Path:
    """A small .txt corpus: blank-line-separated documents made of the tiny tokenizer's words."""
    import random

    rng = random.Random(0)
    docs = []
    for _ in range(40):
        n = rng.randint(5, 90)
        docs.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Runs never land in the user's home; the real model cache stays shared (slow tests reuse it)."""
    monkeypatch.setenv("AUTOINTERP_RUNS", str(tmp_path_factory.mktemp("runs")))
    yield
    torch.set_num_threads(1)  # a test that loaded a real model with --threads 2 does not slow the next ones
