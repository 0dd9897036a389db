"""Data that cannot leak, and the one sampling call: the source follows the subject's dtype, a changed corpus
is refused on resume, duplicated text never crosses splits, non-finite activations stop the pass."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from autointerp.corpus import load_corpus
from autointerp.errors import RunDirError, UserError
from autointerp.hooks import HookPoint
from autointerp.record_store import load_feature_records, load_records_meta, normalise_text
from autointerp.records import SPLITS
from autointerp.sampling import SamplingConfig, SamplingSetup, _check_finite, prepare_sampling, run_sampling
from autointerp.sources.base import DenseActs
from autointerp.sources.neurons import NeuronSource
from autointerp.sources.sae import random_sae

HOOK = HookPoint(1, "mlp_neurons")
CFG = SamplingConfig(tokens=1500, window=16, batch_size=8, n_top=10, n_train=4, n_valid=2, n_test_top=3,
                     n_quantile_bins=3, per_quantile_bin=2, n_random=6, checkpoint_every=3)


def _windows(subject: Any, corpus: Path, cfg: SamplingConfig = CFG) -> Any:
    return load_corpus(str(corpus), subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=cfg.seed)


def test_sampling_moves_the_source_to_the_subjects_dtype(tmp_path: Path, tiny_corpus_file: Path) -> None:
    from conftest import make_tiny_subject

    subject = make_tiny_subject("llama")
    subject.model.to(torch.bfloat16)
    subject.dtype = torch.bfloat16
    hook = HookPoint(1, "resid_post")
    sae = random_sae(hook, subject.d_model, 64)
    assert sae.dtype == torch.float32
    res = run_sampling(subject, sae, _windows(subject, tiny_corpus_file), CFG, tmp_path / "r")
    assert sae.dtype == torch.bfloat16 and sae.device == subject.device
    assert sae.tensor("W_enc").dtype == torch.bfloat16
    assert res.n_windows > 0 and load_feature_records(tmp_path / "r", [0])[0].train


def test_prepare_sampling_moves_the_source_before_the_pass(tiny_model_dir: Path, tiny_corpus_file: Path) -> None:
    setup = SamplingSetup(model=str(tiny_model_dir), hook="L1/mlp_neurons", corpus=str(tiny_corpus_file),
                          dtype="bfloat16", threads=1)
    job = prepare_sampling(setup, CFG)
    assert job.subject.dtype == torch.bfloat16
    assert job.source.address == f"{tiny_model_dir}/L1/mlp_neurons"
    assert job.describe()["dtype"] == "bfloat16"


def test_resume_on_a_changed_corpus_is_refused(tiny_llama: Any, tiny_corpus_file: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(tiny_corpus_file.read_text())
    src = NeuronSource(tiny_llama.name, HOOK, tiny_llama.hook_dim(HOOK))
    calls = {"n": 0}

    def crash(done: int, total: int) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sampling(tiny_llama, src, _windows(tiny_llama, corpus), CFG, tmp_path / "r", progress=crash)
    assert (tmp_path / "r" / "records" / ".checkpoint.pt").exists()
    words = corpus.read_text().split()
    corpus.write_text(" ".join(reversed(words[:30])) + "\n\n" + corpus.read_text())  # a new first document
    with pytest.raises(RunDirError, match="changed since the checkpoint") as e:
        run_sampling(tiny_llama, src, _windows(tiny_llama, corpus), CFG, tmp_path / "r")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r" / "records" / "meta.json").exists()


def test_finished_records_and_manifest_carry_the_content_fingerprint(tiny_llama: Any, tiny_corpus_file: Path,
                                                                    tmp_path: Path) -> None:
    src = NeuronSource(tiny_llama.name, HOOK, tiny_llama.hook_dim(HOOK))
    a = run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "a")
    meta = load_records_meta(tmp_path / "a")
    assert meta["content_fingerprint"] == a.content_fingerprint and len(a.content_fingerprint or "") == 64
    other = tmp_path / "other.txt"
    other.write_text(tiny_corpus_file.read_text().replace(" the ", " a "))
    b = run_sampling(tiny_llama, src, _windows(tiny_llama, other), CFG, tmp_path / "b")
    assert b.content_fingerprint != a.content_fingerprint


def test_duplicated_document_never_lands_in_two_splits(tiny_llama: Any, tmp_path: Path) -> None:
    from conftest import WORDS

    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(30)]
    dup = " ".join(rng.choice(WORDS) for _ in range(150))
    docs[3] = dup
    docs[17] = dup
    docs[25] = "  ".join(dup.split())  # same text up to whitespace
    corpus = tmp_path / "dup.txt"
    corpus.write_text("\n\n".join(docs))
    cfg = SamplingConfig(**{**CFG.__dict__, "tokens": 4000})
    src = NeuronSource(tiny_llama.name, HOOK, tiny_llama.hook_dim(HOOK))
    run_sampling(tiny_llama, src, _windows(tiny_llama, corpus, cfg), cfg, tmp_path / "r")
    recs = load_feature_records(tmp_path / "r")
    dup_windows = 0
    for rec in recs:
        texts: dict[str, set[str]] = {
            s: {normalise_text("".join(r.tokens)) for r in getattr(rec, s)} for s in SPLITS
        }
        for s in SPLITS:
            assert len(texts[s]) == len(getattr(rec, s)), (rec.id, s)  # no text twice within a split
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1 :]:
                assert not texts[a] & texts[b], (rec.id, a, b)
        top = [normalise_text("".join(r.tokens)) for r in rec.train + rec.valid + rec.test_top]
        dup_windows += sum(t in "".join(dup.split()) for t in top)
    assert dup_windows > 0, "the duplicated document should reach the top windows of some feature"


class _Overflowing:
    """A source whose activations overflow (as float16 does past 65504)."""

    def __init__(self, base: NeuronSource) -> None:
        self.base = base
        self.address, self.hook, self.d_in = "overflow-test", base.hook, base.d_in
        self.n_features, self.model_name = base.n_features, None

    def encode(self, x: torch.Tensor, features: Sequence[int] | None = None) -> DenseActs:
        return DenseActs(values=(x * 1e8).to(torch.float16))

    def to(self, device: Any, dtype: Any = None) -> _Overflowing:
        return self


def test_non_finite_activations_stop_with_one_line_naming_hook_and_fix(tiny_llama: Any, tiny_corpus_file: Path,
                                                                        tmp_path: Path) -> None:
    src = _Overflowing(NeuronSource(tiny_llama.name, HOOK, tiny_llama.hook_dim(HOOK)))
    with pytest.raises(UserError) as e:
        run_sampling(tiny_llama, src, _windows(tiny_llama, tiny_corpus_file), CFG, tmp_path / "r")  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and "L1/mlp_neurons" in msg and "bfloat16" in msg and "float32" in msg
    assert not (tmp_path / "r" / "records" / "meta.json").exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_finite_check_catches_any_non_finite_element_and_passes_sums_that_only_overflow(bad: float,
                                                                                       dtype: torch.dtype) -> None:
    src = NeuronSource("m", HOOK, 8)
    x = torch.zeros(64, 8, dtype=dtype)
    _check_finite(x, src, "feature activations", dtype)  # all finite: no error
    x[37, 5] = bad
    with pytest.raises(UserError, match="non-finite feature activations"):
        _check_finite(x, src, "feature activations", dtype)
    if dtype in (torch.float16, torch.float64):
        return
    # finite values whose float32 sum overflows (only representable in float32 / bfloat16) are not an error
    big = torch.full((64, 8), 3e38, dtype=dtype)
    assert not math.isfinite(float(big.sum(dtype=torch.float32)))
    _check_finite(big, src, "feature activations", dtype)
    both = big.clone()
    both[0, 0], both[1, 1] = math.inf, -math.inf  # +inf and -inf: a NaN sum, still caught
    with pytest.raises(UserError):
        _check_finite(both, src, "feature activations", dtype)
