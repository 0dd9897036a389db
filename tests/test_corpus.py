"""Corpus loading and windowing rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autointerp.corpus import load_corpus
from autointerp.errors import UserError


def _all(w: Any) -> list[tuple[int, np.ndarray, int]]:
    return list(w)


def test_txt_windows_rules(tmp_path: Path, tiny_tokenizer: Any) -> None:
    doc_a = " ".join(["city"] * 20)  # 20 tokens: one full window of 7 + 7 + tail 6
    doc_b = " ".join(["river"] * 3)  # 3 tokens: below min_tail -> dropped
    doc_c = "paris london\nberlin rome"  # two lines, one paragraph -> one document of 4 tokens
    path = tmp_path / "c.txt"
    path.write_text(f"{doc_a}\n\n\n{doc_b}\n\n{doc_c}\n", encoding="utf-8")
    w = load_corpus(str(path), tiny_tokenizer, window=8, min_tail=4, shuffle_buffer=1)
    rows = _all(w)
    bos, pad = tiny_tokenizer.bos_token_id, tiny_tokenizer.pad_token_id
    assert [n for _, _, n in rows] == [8, 8, 7, 5]
    assert [i for i, _, _ in rows] == [0, 1, 2, 3]
    for _, ids, n in rows:
        assert ids[0] == bos and (ids[1:n] != bos).all() and (ids[n:] == pad).all()
    city = tiny_tokenizer.convert_tokens_to_ids("city")
    assert {int(x) for r in rows[:3] for x in r[1][1 : r[2]]} == {city}  # no window mixes documents
    # batches: stable indices, masks exclude BOS and padding
    batches = list(w.batches(3))
    assert [b.index.tolist() for b in batches] == [[0, 1, 2], [3]]
    assert batches[0].n_tokens == 7 + 7 + 6
    assert batches[1].valid_mask().tolist() == [[False, True, True, True, True, False, False, False]]
    assert [b.index.tolist() for b in w.batches(3, start=2)] == [[2, 3]]


def test_max_tokens_and_seeded_order(tmp_path: Path, tiny_corpus_file: Path, tiny_tokenizer: Any) -> None:
    w1 = load_corpus(str(tiny_corpus_file), tiny_tokenizer, window=16, seed=1, shuffle_buffer=8)
    w2 = load_corpus(str(tiny_corpus_file), tiny_tokenizer, window=16, seed=1, shuffle_buffer=8)
    w3 = load_corpus(str(tiny_corpus_file), tiny_tokenizer, window=16, seed=2, shuffle_buffer=8)
    a, b, c = _all(w1), _all(w2), _all(w3)
    assert all((x[1] == y[1]).all() for x, y in zip(a, b, strict=True))
    assert any((x[1] != y[1]).any() for x, y in zip(a, c, strict=False))
    lim = load_corpus(str(tiny_corpus_file), tiny_tokenizer, window=16, max_tokens=100, seed=1, shuffle_buffer=8)
    total = sum(n - 1 for _, _, n in lim)
    assert 100 - 15 < total <= 100


def test_jsonl_and_parquet(tmp_path: Path, tiny_tokenizer: Any) -> None:
    texts = ["the city of paris", "the king of france was born in rome"]
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"body": t}) for t in texts) + "\n")
    w = load_corpus(str(jl), tiny_tokenizer, window=16, text_field="body", min_tail=1, shuffle_buffer=1)
    got = [tiny_tokenizer.decode(ids[1:n]) for _, ids, n in w]
    assert got == texts
    import pandas as pd

    pq = tmp_path / "c.parquet"
    pd.DataFrame({"text": texts}).to_parquet(pq)
    w = load_corpus(str(pq), tiny_tokenizer, window=16, min_tail=1, shuffle_buffer=1)
    assert [tiny_tokenizer.decode(ids[1:n]) for _, ids, n in w] == texts
    with pytest.raises(UserError, match="'text' field"):
        load_corpus(str(jl), tiny_tokenizer, window=16, min_tail=1)


def test_corpus_errors(tmp_path: Path, tiny_tokenizer: Any) -> None:
    with pytest.raises(UserError, match="not 'wiki'"):
        load_corpus(str(tmp_path / "missing.txt"), tiny_tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n \n")
    with pytest.raises(UserError, match="empty"):
        load_corpus(str(empty), tiny_tokenizer)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("the city caf\xe9 of paris\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(bad), tiny_tokenizer)
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(UserError, match="pip install datasets"):
            load_corpus("hf:someone/corpus:train", tiny_tokenizer)
    if importlib.util.find_spec("gensim") is None:
        with pytest.raises(UserError, match="gensim"):
            load_corpus("lee", tiny_tokenizer)
    other = tmp_path / "x.csv"
    other.write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported"):
        load_corpus(str(other), tiny_tokenizer)


def test_cli_exit_code_for_corpus_error(tmp_path: Path) -> None:
    from autointerp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["cache", "--model", str(tmp_path / "nomodel"), "--hook", "L0/mlp_neurons", "--corpus",
              str(tmp_path / "missing.txt")])
    assert e.value.code == 2


def test_embedded_wiki(tiny_tokenizer: Any) -> None:
    w = load_corpus("wiki", tiny_tokenizer, window=32, max_tokens=500)
    rows = _all(w)
    assert rows and sum(n - 1 for _, _, n in rows) <= 500
