"""transformers backend with a tiny random Llama and a word-level tokenizer made on the fly (offline)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autointerp.llm import ClientConfig, CompletionRequest, LLMError, TopLogprobsRequest, make_client
from autointerp.llm.transformers_backend import TransformersBackend, token_indices

WORDS = "the cat sat on a mat dog ran to park and red blue green one two three".split()


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def tiny_model(vocab_size: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    torch.set_num_threads(2)
    tok = tiny_tokenizer()
    return TransformersBackend("transformers:tiny", tiny_model(len(tok)), tok)


def reference(backend: TransformersBackend, prompt: str, token_index: int, k: int) -> dict[str, float]:
    ids = torch.tensor([backend.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(input_ids=ids).logits[0, token_index].float(), -1)
    vals, idx = logp.topk(k)
    return {backend.tokenizer.decode([int(i)]): float(v) for v, i in zip(vals, idx, strict=True)}


def test_token_indices() -> None:
    # "the cat\tsat" -> the(0,3) cat(4,7) sat(8,11)
    offsets = np.array([[0, 3], [4, 7], [8, 11]])
    got = token_indices(offsets, np.array([3, 7, 11, 5, 4, 8]))
    # 4 and 8 are whitespace after a token: no token ends there; 5 is inside "cat"
    assert got.tolist() == [0, 1, 2, -1, -1, -1]


async def test_top_logprobs_match_a_plain_forward_pass(backend: TransformersBackend) -> None:
    prompt = "the cat sat on a mat"
    r = await backend.top_logprobs(TopLogprobsRequest(prompt=prompt, positions=(7, 20), top_k=4))
    assert len(r.logprobs) == 2
    assert r.logprobs[0].top == pytest.approx(reference(backend, prompt, 1, 4), abs=1e-5)
    assert r.logprobs[1].top == pytest.approx(reference(backend, prompt, 5, 4), abs=1e-5)


async def test_concurrent_requests_share_one_forward_pass(backend: TransformersBackend) -> None:
    reqs = [
        TopLogprobsRequest(prompt="the cat sat", positions=(3, 11), top_k=3),
        TopLogprobsRequest(prompt="a dog ran to the park and one two three", positions=(5, 39), top_k=3),
        TopLogprobsRequest(prompt="red blue", positions=(5,), top_k=3),  # 5 is inside "blue"
        TopLogprobsRequest(prompt="red blue green", positions=(3,), top_k=6),  # another k in the same batch
    ]
    before = backend.forward_passes
    out = await asyncio.gather(*(backend.top_logprobs(r) for r in reqs), return_exceptions=True)
    assert backend.forward_passes == before + 1
    assert isinstance(out[2], LLMError) and "token boundaries" in out[2].reason
    singles = [await backend.top_logprobs(r) for r in (reqs[0], reqs[1], reqs[3])]
    for batched, single in zip((out[0], out[1], out[3]), singles, strict=True):
        assert not isinstance(batched, BaseException)
        for a, b in zip(batched.logprobs, single.logprobs, strict=True):
            assert a.top.keys() == b.top.keys()
            assert a.top == pytest.approx(b.top, abs=1e-4)


async def test_generation_and_make_client(backend: TransformersBackend, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    backend.model.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder)
    cfg = ClientConfig(threads=2, cache_path=tmp_path / "c.sqlite", timeout_s=120)
    client = make_client(f"transformers:{folder}", cfg)
    r = await client.complete(CompletionRequest(prompt="the cat", max_tokens=3))
    assert r.usage.completion_tokens == 3 and r.usage.prompt_tokens == 2
    lp = await client.top_logprobs(TopLogprobsRequest(prompt="the cat", positions=(3,), top_k=2))
    assert lp.logprobs[0].top == pytest.approx(reference(backend, "the cat", 0, 2), abs=1e-5)
    assert client.meter.cost_usd() == (0.0, "")
    await client.aclose()


# -- the shared micro-batcher (also used by the vLLM backend) ---------------------------------------------


async def test_micro_batcher_groups_concurrent_calls_up_to_max_batch_and_answers_each_caller() -> None:
    from autointerp.llm.batching import MicroBatcher

    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int | BaseException]:
        seen.append(items)
        return [ValueError(f"odd {i}") if i % 7 == 6 else i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, wait_s=0.01)
    got = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
    assert [len(b) for b in seen] == [8, 8, 4] and sorted(i for b in seen for i in b) == list(range(20))
    for i, g in enumerate(got):  # a per-item error fails that caller only
        assert (isinstance(g, ValueError) and str(g) == f"odd {i}") if i % 7 == 6 else g == i * 10


async def test_micro_batcher_fails_a_whole_batch_on_an_engine_error_and_skips_callers_gone() -> None:
    from autointerp.llm.batching import MicroBatcher

    def boom(items: list[int]) -> list[int | BaseException]:
        raise RuntimeError("engine died")

    batcher: MicroBatcher[int, int] = MicroBatcher(boom, max_batch=4)
    got = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(g, RuntimeError) and "engine died" in str(g) for g in got)

    sizes: list[int] = []

    def ok(items: list[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        return list(items)

    later: MicroBatcher[int, int] = MicroBatcher(ok, max_batch=4, wait_s=0.05)
    gone = asyncio.ensure_future(later.submit(1))
    stays = asyncio.ensure_future(later.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == 2 and sizes == [1]  # the cancelled caller was not sent to the engine
