"""Tiny random-weight causal LMs and a word-level tokenizer, built from configs with no download.

For tests and for ``benchmarks/gpu_check.py`` (never for results): ``make_tiny_tokenizer()`` (a word-level
``PreTrainedTokenizerFast`` over ``WORDS`` with <bos>, <pad>, <unk>) and ``make_tiny_model(arch, vocab)``
(2 layers; ``llama``, ``gemma3`` or ``gpt2``).
"""

from __future__ import annotations

from typing import Any

import torch

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
