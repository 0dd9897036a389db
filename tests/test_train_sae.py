"""SAE training: TopK training recovers a synthetic dictionary, the JumpReLU conversion keeps the firing rates,
the saved file loads through the Gemma Scope loader, and the end-to-end command runs on a tiny subject."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autointerp.errors import UserError
from autointerp.sources.formats import load_sae
from autointerp.sources.sae import densify
from autointerp.train_sae import (
    TrainSaeConfig,
    evaluate,
    refit_decoder,
    save_gemma_scope,
    to_jumprelu,
    train_and_save,
    train_topk,
)


def _synthetic(n: int = 12_000, d: int = 32, n_true: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_true, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    codes = (torch.rand(n, n_true, generator=g) < 0.04).float() * torch.rand(n, n_true, generator=g) * 4
    return codes @ dictionary * 20 + 3  # large scale and offset, like a residual stream


def test_topk_training_and_jumprelu_conversion(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    x = _synthetic()
    train, calib, held = x[:9000], x[9000:10500], x[10500:]
    sae, info = train_topk(train, n_features=128, k=6, epochs=3, batch_size=256, lr=3e-3, seed=0, dead_after=5000)
    assert info["steps"] == 3 * (9000 // 256)
    assert info["history"][-1]["fvu"] < info["history"][0]["fvu"]
    f = sae.encode(held)
    assert int((f > 0).sum(-1).max()) <= 6
    arrays = to_jumprelu(sae, calib)
    assert arrays["W_enc"].dtype == np.float16 and arrays["threshold"].dtype == np.float32
    # thresholds are set so each latent fires about as often as under TopK on the calibration tokens
    pre = calib @ torch.from_numpy(arrays["W_enc"].astype(np.float32)) + torch.from_numpy(arrays["b_enc"])
    jump_freq = (pre > torch.from_numpy(arrays["threshold"])).float().mean(0)
    topk_freq = (sae.encode(calib) > 0).float().mean(0)
    assert float((jump_freq - topk_freq).abs().max()) < 0.02
    before = refit_decoder(arrays, train[:4000])
    path = save_gemma_scope(before, tmp_path / "sae", {"hook": "L1/resid_post", "model": "synthetic"})
    src = load_sae(path)
    assert (src.format, src.hook.layer, src.model_name, src.n_features) == ("gemma_scope", 1, "synthetic", 128)
    m = evaluate(src, held)
    assert m["fve"] > 0.6, m
    assert 2 < m["l0"] < 12 and 0 <= m["dead_fraction"] < 0.5
    # the loaded encoder equals the JumpReLU formula on the saved arrays
    pre_h = held @ torch.from_numpy(before["W_enc"].astype(np.float32)) + torch.from_numpy(before["b_enc"])
    ref = torch.relu(pre_h) * (pre_h > torch.from_numpy(before["threshold"]))
    torch.testing.assert_close(densify(src.encode(held)), ref, rtol=1e-4, atol=1e-4)


def test_train_topk_rejects_bad_settings() -> None:
    with pytest.raises(UserError, match="at least batch_size"):
        train_topk(torch.randn(10, 4), n_features=8, k=2, epochs=1, batch_size=64, lr=1e-3, seed=0)
    with pytest.raises(UserError, match="k=9"):
        train_topk(torch.randn(100, 4), n_features=8, k=9, epochs=1, batch_size=64, lr=1e-3, seed=0)
    with pytest.raises(UserError, match="all zero"):
        train_topk(torch.zeros(100, 4), n_features=8, k=2, epochs=1, batch_size=64, lr=1e-3, seed=0)


def test_train_and_save_end_to_end_on_tiny_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Any, tiny_corpus_file: Path
) -> None:
    import autointerp.subject

    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autointerp.subject, "load_subject", lambda *a, **k: tiny_llama)
    cfg = TrainSaeConfig(
        model="tiny-llama",
        hook="L1/resid_post",
        n_features=64,
        k=4,
        tokens=1200,
        window=16,
        corpus=str(tiny_corpus_file),
        epochs=2,
        batch_size=128,
        lr=3e-3,
        refit_tokens=800,
        out=str(tmp_path / "out"),
    )
    report = train_and_save(cfg)
    assert report["train_tokens"] == 600 and report["steps"] == 2 * (600 // 128)
    meta = json.loads((tmp_path / "out" / "autointerp_sae.json").read_text())
    assert meta["hook"] == "L1/resid_post" and meta["config"]["n_features"] == 64
    assert meta["jumprelu_heldout"]["l0"] == pytest.approx(report["l0"])
    src = load_sae(tmp_path / "out")
    assert src.d_in == 32 and src.n_features == 64
    assert list((tmp_path / "cache" / "sae-acts").glob("*.pt"))  # activations cached for reruns
    train_and_save(cfg)  # second run reuses them
    with pytest.raises(UserError, match="fewer than --tokens"):
        train_and_save(TrainSaeConfig(**{**cfg.__dict__, "tokens": 10**6}))
