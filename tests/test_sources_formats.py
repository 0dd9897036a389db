"""SAE file formats: each loader's encode equals the format's own definition (the peer library's encode where
it is installed), lazy loading, feature subsets, and bad files as one-line UserErrors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources import FeatureSource
from autointerp.sources.base import DenseActs, TopKActs
from autointerp.sources.formats import check_compatible, detect_format, hook_from_module_name, load_sae
from autointerp.sources.lazyfiles import npz_members
from autointerp.sources.sae import densify


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)


def _gemma_arrays(d: int = 24, n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d, n)).astype(np.float32),
        "W_dec": rng.normal(size=(n, d)).astype(np.float32),
        "b_enc": rng.normal(size=n).astype(np.float32),
        "b_dec": rng.normal(size=d).astype(np.float32),
        "threshold": np.abs(rng.normal(size=n)).astype(np.float32),
    }


def _jumprelu_ref(x: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    pre = x @ a["W_enc"] + a["b_enc"]
    return np.maximum(pre, 0) * (pre > a["threshold"])


@pytest.mark.parametrize("compressed", [False, True])
def test_gemma_scope_matches_reference_and_subsets(tmp_path: Path, compressed: bool) -> None:
    a = _gemma_arrays()
    path = tmp_path / "params.npz"
    (np.savez_compressed if compressed else np.savez)(path, **a)  # type: ignore[operator]
    assert all((m.offset is None) == compressed for m in npz_members(path).values())
    assert detect_format(path) == "gemma_scope"
    sae = load_sae(path, hook="L3/resid_post")
    assert isinstance(sae, FeatureSource)
    assert (sae.d_in, sae.n_features, sae.hook) == (24, 40, HookPoint(3, "resid_post"))
    x = np.random.default_rng(1).normal(size=(7, 24)).astype(np.float32)
    ref = _jumprelu_ref(x, a)
    assert (ref > 0).any() and (ref == 0).any()
    out = sae.encode(torch.from_numpy(x))
    assert isinstance(out, DenseActs) and out.feature_ids is None
    np.testing.assert_allclose(out.values.numpy(), ref, rtol=1e-5, atol=1e-5)
    feats = [39, 0, 5, 5]
    sub = sae.encode(torch.from_numpy(x), features=feats)
    assert isinstance(sub, DenseActs) and sub.feature_ids is not None
    assert sub.feature_ids.tolist() == feats
    np.testing.assert_allclose(sub.values.numpy(), ref[:, feats], rtol=1e-5, atol=1e-5)
    # [B, T, d] inputs are flattened; float64 compute works
    out64 = sae.to("cpu", torch.float64).encode(torch.from_numpy(x).reshape(7, 1, 24))
    assert out64.values.dtype == torch.float64
    np.testing.assert_allclose(out64.values.numpy(), ref, rtol=1e-5, atol=1e-5)
    if compressed:  # compressed members are extracted once into the cache and mapped from there
        assert list((tmp_path / "cache" / "npz").glob("*/W_enc.npy"))


def test_gemma_scope_is_memory_mapped_and_never_reads_decoder(tmp_path: Path) -> None:
    a = _gemma_arrays()
    np.savez(tmp_path / "params.npz", **a)
    sae = load_sae(tmp_path, hook="L3/resid_post")  # a folder holding params.npz works too
    read: list[str] = []
    for name, loader in list(sae.weights.loaders.items()):

        def spy(name: str = name, loader: Any = loader) -> torch.Tensor:
            read.append(name)
            return loader()  # type: ignore[no-any-return]

        sae.weights.loaders[name] = spy
    sae.encode(torch.randn(3, 24), features=[1, 2])
    assert sorted(set(read)) == ["W_enc", "b_enc", "threshold"]
    members = npz_members(tmp_path / "params.npz")
    assert all(m.offset is not None for m in members.values())  # mapped in place, not extracted
    w = sae.weights.loaders["W_enc"]()
    np.testing.assert_array_equal(w.numpy(), a["W_enc"])
    assert sae.decoder().shape == (40, 24)


def test_gemma_scope_sidecar_gives_hook_and_model(tmp_path: Path) -> None:
    np.savez(tmp_path / "params.npz", **_gemma_arrays())
    (tmp_path / "autointerp_sae.json").write_text(json.dumps({"hook": "L6/mlp_out", "model": "gemma3-270m"}))
    sae = load_sae(tmp_path / "params.npz")
    assert sae.hook == HookPoint(6, "mlp_out") and sae.model_name == "gemma3-270m"


def test_gemma_scope_without_hook_is_a_user_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "params.npz", **_gemma_arrays())
    with pytest.raises(UserError, match="hook"):
        load_sae(tmp_path / "params.npz")


def test_truncated_npz_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    np.savez(path, **_gemma_arrays())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"truncated|corrupt"):
        load_sae(path, format="gemma_scope", hook="L1/resid_post")


def test_nan_weights_are_a_user_error(tmp_path: Path) -> None:
    a = _gemma_arrays()
    a["W_enc"][3, 4] = np.nan
    np.savez(tmp_path / "params.npz", **a)
    sae = load_sae(tmp_path / "params.npz", hook="L1/resid_post")
    with pytest.raises(UserError, match="NaN/Inf"):
        sae.encode(torch.randn(2, 24))


def test_shape_mismatch_and_width_mismatch(tmp_path: Path) -> None:
    a = _gemma_arrays()
    a["b_enc"] = a["b_enc"][:-1]
    np.savez(tmp_path / "params.npz", **a)
    with pytest.raises(UserError, match="inconsistent shapes"):
        load_sae(tmp_path / "params.npz", hook="L1/resid_post")
    np.savez(tmp_path / "params.npz", **_gemma_arrays())
    sae = load_sae(tmp_path / "params.npz", hook="L20/resid_post")
    with pytest.raises(UserError, match="expects d_in 24"):
        sae.encode(torch.randn(2, 25))
    with pytest.raises(UserError) as e:
        check_compatible(sae, 640, "gemma3-270m")
    assert str(e.value) == (
        "SAE d_in 24 does not match L20/resid_post of gemma3-270m (640): pick an SAE for this model or another hook"
    )
    check_compatible(sae, 24, "gemma3-270m")


def test_unknown_format_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"hello")
    with pytest.raises(UserError, match="cannot tell the SAE format"):
        load_sae(tmp_path / "x.bin")
    with pytest.raises(UserError, match="unknown SAE format"):
        load_sae(tmp_path / "x.bin", format="nope")
    with pytest.raises(UserError, match="does not exist"):
        load_sae(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no SAE"):
        load_sae(tmp_path / "empty")


# ---- OpenAI sparse_autoencoder ---------------------------------------------------------------------
def _openai_reference(sd: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """openai/sparse_autoencoder model.py (Autoencoder.from_state_dict + encode), re-implemented."""
    normalize = sd["activation"] == "TopK"
    if normalize:
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
    pre = torch.nn.functional.linear(x - sd["pre_bias"], sd["encoder.weight"], sd["latent_bias"])
    if sd["activation"] == "ReLU":
        return torch.relu(pre)
    topk = torch.topk(pre, k=sd["activation_state_dict"]["k"], dim=-1)
    out = torch.zeros_like(pre)
    out.scatter_(-1, topk.indices, torch.relu(topk.values))
    return out


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_openai_pt_matches_reference(tmp_path: Path, activation: str) -> None:
    d, n = 16, 48
    sd: dict[str, Any] = {
        "pre_bias": torch.randn(d),
        "encoder.weight": torch.randn(n, d),
        "latent_bias": torch.randn(n),
        "decoder.weight": torch.randn(d, n),
        "stats_last_nonzero": torch.zeros(n, dtype=torch.long),
        "activation": activation,
    }
    if activation == "TopK":
        sd["activation_state_dict"] = {"k": 5, "postact_fn": "ReLU"}
    torch.save(sd, tmp_path / "8.pt")
    assert detect_format(tmp_path / "8.pt") == "openai"
    sae = load_sae(tmp_path / "8.pt", hook="L8/resid_post")
    x = torch.randn(30, d) * 3 + 1
    out = sae.encode(x)
    assert isinstance(out, TopKActs if activation == "TopK" else DenseActs)
    torch.testing.assert_close(densify(out), _openai_reference(sd, x), rtol=1e-5, atol=1e-5)
    assert sae.decoder().shape == (n, d)
    with pytest.raises(UserError, match="hook"):
        load_sae(tmp_path / "8.pt")


# ---- peer libraries --------------------------------------------------------------------------------
@pytest.mark.formats
@pytest.mark.parametrize("activation", ["topk", "groupmax"])
def test_sparsify_matches_library(tmp_path: Path, activation: str) -> None:
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    lib = sparsify.SparseCoder(16, sparsify.SparseCoderConfig(expansion_factor=4, k=8, activation=activation))
    with torch.no_grad():
        lib.b_dec.normal_()
        lib.encoder.bias.normal_()
    lib.save_to_disk(tmp_path / "layers.3")
    assert json.loads((tmp_path / "layers.3" / "cfg.json").read_text())["num_latents"] == 0
    sae = load_sae(tmp_path / "layers.3")
    assert sae.format == "sparsify" and sae.n_features == 64 and sae.hook == HookPoint(3, "resid_post")
    x = torch.randn(40, 16)
    ref = lib.encode(x)
    dense_ref = torch.zeros(40, 64).scatter_(1, ref.top_indices, ref.top_acts)
    out = sae.encode(x)
    assert isinstance(out, TopKActs)
    torch.testing.assert_close(densify(out), dense_ref, rtol=1e-5, atol=1e-5)
    # an explicit hook overrides the folder name
    assert load_sae(tmp_path / "layers.3", hook="L3/mlp_out").hook == HookPoint(3, "mlp_out")


def test_sparsify_module_names_map_to_hooks() -> None:
    assert hook_from_module_name("h.0") == HookPoint(0, "resid_post")
    assert hook_from_module_name("layers.6") == HookPoint(6, "resid_post")
    assert hook_from_module_name("model.layers.6.mlp") == HookPoint(6, "mlp_out")
    assert hook_from_module_name("gpt_neox.layers.2.attention") == HookPoint(2, "attn_out")
    assert hook_from_module_name("embed_tokens") is None


def _saelens_sae(cfg_cls_name: str, **cfg: Any) -> Any:
    sae_lens = pytest.importorskip("sae_lens")
    cfg_cls = getattr(sae_lens, cfg_cls_name)
    c = cfg_cls(d_in=16, d_sae=40, **cfg)
    c.metadata.hook_name = "blocks.3.hook_resid_pre"
    c.metadata.model_name = "tiny"
    sae = sae_lens.SAE.from_dict(c.to_dict())
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        if hasattr(sae, "threshold"):
            sae.threshold.abs_()
    return sae


@pytest.mark.formats
@pytest.mark.parametrize(
    ("cfg_cls", "extra"),
    [
        ("StandardSAEConfig", {}),
        ("StandardSAEConfig", {"apply_b_dec_to_input": False}),
        ("StandardSAEConfig", {"normalize_activations": "layer_norm"}),
        ("StandardSAEConfig", {"normalize_activations": "constant_norm_rescale"}),
        ("JumpReLUSAEConfig", {}),
        ("TopKSAEConfig", {"k": 5}),
        ("GatedSAEConfig", {}),
    ],
)
def test_saelens_matches_library(tmp_path: Path, cfg_cls: str, extra: dict[str, Any]) -> None:
    lib = _saelens_sae(cfg_cls, **extra)
    lib.save_model(tmp_path / "sae")
    assert detect_format(tmp_path / "sae") == "saelens"
    sae = load_sae(tmp_path / "sae")
    assert sae.hook == HookPoint(3, "resid_pre") and sae.model_name == "tiny"
    x = torch.randn(30, 16) * 2
    with torch.no_grad():
        ref = lib.encode(x)
    assert (ref > 0).any()
    torch.testing.assert_close(densify(sae.encode(x)), ref, rtol=1e-5, atol=1e-5)
    if not sae.is_sparse:
        torch.testing.assert_close(sae.encode(x, features=[7, 3]).values, ref[:, [7, 3]], rtol=1e-5, atol=1e-5)


@pytest.mark.formats
def test_saelens_unsupported_and_mismatched(tmp_path: Path) -> None:
    lib = _saelens_sae("StandardSAEConfig")
    lib.save_model(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matching_pursuit"}))
    with pytest.raises(UserError, match="not supported"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "covariance_whitening"}))
    with pytest.raises(UserError, match="not supported"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 41}))
    with pytest.raises(UserError, match="do not belong together"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_sae(tmp_path / "sae")


def test_detect_format_by_structure_not_name(tmp_path: Path) -> None:
    # a params.npz-named zip without the Gemma Scope arrays is not taken for Gemma Scope
    with zipfile.ZipFile(tmp_path / "weird.npz", "w") as zf:
        zf.writestr("other.npy", b"")
    with pytest.raises(UserError, match="cannot tell"):
        detect_format(tmp_path / "weird.npz")
    bad = tmp_path / "gs"
    bad.mkdir()
    np.savez(bad / "params.npz", W_enc=np.zeros((2, 3), np.float32))
    with pytest.raises(UserError, match=r"lacks b_enc, threshold"):
        load_sae(bad, hook="L0/resid_post")


def _write_saelens(path: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def test_saelens_old_style_topk_config_and_scaling_factor(tmp_path: Path) -> None:
    d, n = 12, 30
    t = {"W_enc": torch.randn(d, n), "b_enc": torch.randn(n), "W_dec": torch.randn(n, d), "b_dec": torch.randn(d)}
    # an older SAELens config: hook_point, no architecture, TopK via activation_fn_str/kwargs, no d_sae
    old = {
        "d_in": d,
        "hook_point": "blocks.8.hook_resid_post",
        "model_name": "gpt2-small",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "normalize_activations": "layer_norm",
    }
    _write_saelens(tmp_path / "old", old, t)
    sae = load_sae(tmp_path / "old")
    assert (sae.hook, sae.n_features, sae.k, sae.model_name) == (HookPoint(8, "resid_post"), n, 4, "gpt2-small")
    x = torch.randn(9, d) * 5
    xn = x - x.mean(-1, keepdim=True)
    xn = xn / (xn.std(-1, keepdim=True) + 1e-5)
    pre = (xn - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    v, i = pre.topk(4, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
    torch.testing.assert_close(densify(sae.encode(x)), ref, rtol=1e-5, atol=1e-5)
    # expected_average_only_in with a stored scaling factor: x is multiplied by it
    scaled = {
        "d_in": d,
        "d_sae": n,
        "architecture": "standard",
        "normalize_activations": "expected_average_only_in",
        "norm_scaling_factor": 0.25,
        "metadata": {"hook_name": "blocks.2.hook_resid_pre"},
    }
    _write_saelens(tmp_path / "scaled", scaled, t)
    ref2 = torch.relu((x * 0.25 - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(densify(load_sae(tmp_path / "scaled").encode(x)), ref2, rtol=1e-5, atol=1e-5)
    del scaled["norm_scaling_factor"]
    _write_saelens(tmp_path / "unscaled", scaled, t)
    with pytest.raises(UserError, match="without a stored scaling factor"):
        load_sae(tmp_path / "unscaled")
