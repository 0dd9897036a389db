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

WORDS = (
    "the a an of to in and is was for on with as by at from that this it he she they we you city river "
    "paris london berlin rome france england germany italy king queen war peace music film book song "
    "one two three four five six seven eight nine ten red green blue black white cat dog bird fish horse "
    "born died played wrote built named called known first second largest small large old new north south "
    ". , ; ( ) 1 2 3 4 5 6 7 8 9 0"
).split()


def make_tiny_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``WORDS`` with <bos>, <pad>, <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True
    )


def make_tiny_model(arch: str, vocab_size: int, seed: int = 0) -> Any:
    """A 2-layer random causal LM: ``llama`` (LlamaForCausalLM), ``gemma3`` or ``gpt2``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model: torch.nn.Module
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
            pad_token_id=0, eos_token_id=2,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        gcfg = Gemma3TextConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
            sliding_window=16, bos_token_id=1, pad_token_id=0, eos_token_id=2,
        )
        model = Gemma3ForCausalLM(gcfg)
    elif arch == "gpt2":
        g2 = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1,
            eos_token_id=2,
        )
        model = GPT2LMHeadModel(g2)
    else:
        raise ValueError(arch)
    model.eval()
    return model


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
