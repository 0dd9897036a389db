"""Gemma Scope 2 (Google DeepMind's SAEs for Gemma 3): addresses in the registry, the release's file layout
(``<site>[_all]/layer_L_width_W_l0_NAME/params.safetensors`` with lower-case tensor names), and encoding equal
to SAELens's own ``gemma_3`` loader on files laid out exactly as the release lays them out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources.formats import detect_format, gemma_scope_2_hook, load_sae
from autointerp.sources.registry import SAE_DIR_ENV, resolve_address, resolve_source, site_summaries
from autointerp.sources.sae import densify

REPO = "google/gemma-scope-2-270m-pt"


def _write_release_file(root: Path, folder: str, d_in: int, n: int, d_out: int | None = None, seed: int = 0) -> Path:
    """One SAE as the release stores it: ``<root>/<folder>/params.safetensors``, lower-case names."""
    g = torch.Generator().manual_seed(seed)
    d_out = d_out or d_in
    tensors = {
        "w_enc": torch.randn(d_in, n, generator=g) * 0.2,
        "w_dec": torch.randn(n, d_out, generator=g) * 0.2,
        "b_enc": torch.randn(n, generator=g) * 0.1,
        "b_dec": torch.randn(d_out, generator=g),
        "threshold": torch.rand(n, generator=g) * 0.5,
    }
    path = root / folder / "params.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _jumprelu(x: torch.Tensor, path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    t = load_file(str(path))
    pre = x @ t["w_enc"] + t["b_enc"]
    return torch.relu(pre) * (pre > t["threshold"])


def test_addresses_name_the_release_folders_and_the_canonical_l0() -> None:
    spec = resolve_address("gemma3-270m/L12/gs2")
    assert spec.repo_id == REPO and spec.format == "gemma_scope_2"
    assert spec.files == ("resid_post/layer_12_width_16k_l0_medium/params.safetensors",)
    assert (spec.hook, spec.d_in, spec.width, spec.canonical) == (HookPoint(12, "resid_post"), 640, 16384, True)
    assert spec.model == "gemma3-270m"  # the embedded subject
    assert spec.neuronpedia == "gemma-3-270m/12-gemmascope-2-res-16k"
    # every layer in the -all release; L0 by the release's name, or by number where it picks one SAE
    all6 = resolve_address("gemma3-270m/L6/gs2-all/262k/l0_small")
    assert all6.files == ("resid_post_all/layer_6_width_262k_l0_small/params.safetensors",)
    assert resolve_address("gemma3-270m/L12/gs2/l0_150").address == "gemma3-270m/L12/gs2/l0_big"
    # attention SAEs read o_proj's input; transcoders read the MLP's input
    assert resolve_address("gemma3-270m/L12/gs2-att").hook == HookPoint(12, "attn_z")
    assert resolve_address("gemma3-270m/L12/gs2-att").d_in == 1024
    tc = resolve_address("gemma3-270m/L3/gs2-tc-all/l0_big_affine")
    assert tc.hook == HookPoint(3, "mlp_in")
    assert tc.files[0].startswith("transcoder_all/layer_3_width_16k_l0_big_affine/")
    assert resolve_address("gemma3-1b/L13/gs2").model == "google/gemma-3-1b-pt"


def test_ambiguous_or_missing_l0_is_a_user_error_listing_the_names() -> None:
    with pytest.raises(UserError, match=r"l0_big \(\d+\), l0_big_affine"):
        resolve_address("gemma3-270m/L3/gs2-tc-all/l0_90")
    with pytest.raises(UserError, match="layers: 5,9,12,15"):
        resolve_address("gemma3-270m/L3/gs2")
    with pytest.raises(UserError, match="no L0 named 'huge'"):
        resolve_address("gemma3-270m/L12/gs2/l0_huge")


def test_sources_tells_the_embedded_sae_from_the_release() -> None:
    embedded = resolve_address("gemma3-270m/L6")
    assert embedded.local_root is not None and embedded.repo_id is None
    assert "trained by this project" in str(embedded.release)
    assert resolve_address("gemma3-270m/L6/gs2-all").release == "gemma-scope-2-270m-pt-res-all"
    rows = {(r["address"], r["site"]): r for r in site_summaries()}
    assert rows[("gemma3-270m/L<n>", "res")]["local"] is True
    assert rows[("gemma3-270m/L<n>/gs2", "gs2")]["local"] is False
    assert rows[("gemma3-270m/L<n>/gs2", "gs2")]["repo"] == REPO


def test_release_layout_loads_and_encodes_as_jumprelu(tmp_path: Path) -> None:
    folder = "resid_post_all/layer_6_width_16k_l0_big"
    path = _write_release_file(tmp_path, folder, d_in=24, n=40)
    assert detect_format(path.parent) == "gemma_scope_2" and detect_format(path) == "gemma_scope_2"
    sae = load_sae(path.parent)
    assert (sae.hook, sae.d_in, sae.n_features) == (HookPoint(6, "resid_post"), 24, 40)
    x = torch.randn(9, 24)
    ref = _jumprelu(x, path)
    assert (ref > 0).any() and (ref == 0).any()
    assert torch.allclose(densify(sae.encode(x)), ref, atol=1e-5)
    sub = sae.encode(x, features=[3, 17, 5])
    assert torch.allclose(densify(sub), ref[:, [3, 17, 5]], atol=1e-5)
    assert sae.decoder().shape == (40, 24)


def test_hook_comes_from_the_release_folder_names() -> None:
    assert gemma_scope_2_hook("resid_post/layer_12_width_16k_l0_medium") == HookPoint(12, "resid_post")
    assert gemma_scope_2_hook("x/mlp_out_all/layer_0_width_262k_l0_small") == HookPoint(0, "mlp_out")
    assert gemma_scope_2_hook("attn_out/layer_5_width_65k_l0_big") == HookPoint(5, "attn_z")
    assert gemma_scope_2_hook("transcoder_all/layer_2_width_16k_l0_big_affine") == HookPoint(2, "mlp_in")
    assert gemma_scope_2_hook("my_sae") is None


def test_unlabelled_folder_or_other_architecture_is_a_user_error(tmp_path: Path) -> None:
    path = _write_release_file(tmp_path, "my_sae", d_in=8, n=16)
    with pytest.raises(UserError, match="--hook"):
        load_sae(path.parent)
    assert load_sae(path.parent, hook="L2/resid_post").hook == HookPoint(2, "resid_post")
    (path.parent / "config.json").write_text(json.dumps({"architecture": "topk"}))
    with pytest.raises(UserError, match="jump_relu"):
        load_sae(path.parent, hook="L2/resid_post")


def test_registry_address_loads_from_a_folder_laid_out_like_the_hub_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = resolve_address("gemma3-270m/L12/gs2")
    root = tmp_path / "sae"
    _write_release_file(root / REPO, spec.files[0].rsplit("/", 1)[0], d_in=640, n=16384)
    monkeypatch.setenv(SAE_DIR_ENV, str(root))
    sae = resolve_source("gemma3-270m/L12/gs2", hook_dim=640)
    assert (sae.hook, sae.n_features, sae.format) == (HookPoint(12, "resid_post"), 16384, "gemma_scope_2")
    with pytest.raises(UserError, match="does not match"):
        resolve_source("gemma3-270m/L12/gs2", hook_dim=1152)


@pytest.mark.formats
@pytest.mark.parametrize(
    ("release", "sae_id", "folder"),
    [
        ("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium", "resid_post/layer_12_width_16k_l0_medium"),
        ("gemma-scope-2-270m-pt-att-all", "layer_3_width_16k_l0_big", "attn_out_all/layer_3_width_16k_l0_big"),
    ],
)
def test_encoding_equals_saelens_gemma_3_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str, sae_id: str, folder: str
) -> None:
    """SAELens's own from_pretrained (its gemma_3 conversion) reads the same files, laid out as on the hub,
    and encodes the same activations; its hook name is our hook point."""
    pytest.importorskip("sae_lens")
    from huggingface_hub.utils import EntryNotFoundError
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as psl

    spec = resolve_address(f"gemma3-270m/L{folder.split('layer_')[1].split('_')[0]}/"
                           f"{'gs2' if release.endswith('-res') else 'gs2-att-all'}")
    assert spec.files == (f"{folder}/params.safetensors",)
    repo_root = tmp_path / REPO
    path = _write_release_file(repo_root, folder, d_in=int(spec.d_in or 0), n=16384, seed=3)

    def fake_download(repo_id: str, filename: str, subfolder: str | None = None, **_: Any) -> str:
        assert repo_id == REPO
        local = repo_root / (f"{subfolder}/{filename}" if subfolder else filename)
        if not local.is_file():  # the release keeps no config.json: SAELens infers the config
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(local)

    def fake_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        from safetensors import safe_open

        with safe_open(str(repo_root / filename), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    monkeypatch.setattr(psl, "hf_hub_download", fake_download)
    monkeypatch.setattr(psl, "get_safetensors_tensor_shapes", fake_shapes)
    loaded = SAE.from_pretrained(release, sae_id, device="cpu")
    theirs = loaded[0] if isinstance(loaded, tuple) else loaded
    ours = load_sae(path.parent, hook=spec.hook)
    assert theirs.cfg.metadata.hook_name == spec.hook.tl_name
    x = torch.randn(5, int(spec.d_in or 0))
    with torch.no_grad():
        expected = theirs.encode(x)
    got = densify(ours.encode(x))
    assert (expected > 0).any()
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_mlp_in_hook_reads_the_input_of_the_mlp(tiny_gemma3: Any, tiny_llama: Any) -> None:
    ids = torch.randint(0, 100, (2, 7))
    for subject in (tiny_gemma3, tiny_llama):
        layer = subject.layers[1]
        seen: dict[str, torch.Tensor] = {}

        def grab(_m: Any, args: tuple[Any, ...], seen: dict[str, torch.Tensor] = seen) -> None:
            seen["x"] = args[0].detach()

        handle = layer.mlp.register_forward_pre_hook(grab)
        try:
            subject.model(ids)
        finally:
            handle.remove()
        got = subject.run(ids, [HookPoint(1, "mlp_in")])[HookPoint(1, "mlp_in")]
        assert torch.allclose(got, seen["x"], atol=1e-6)
        assert subject.hook_dim(HookPoint(1, "mlp_in")) == subject.d_model


@pytest.mark.slow
def test_sampling_a_gemma_scope_2_sae_on_the_embedded_subject(tmp_path: Path) -> None:
    """`autointerp sample --sae gemma3-270m/L12/gs2 --sae-dir D` runs on the embedded Gemma-3-270M with the SAE's
    file where the hub repo keeps it (random weights here: no hub access on the test machine)."""
    from autointerp.cli import main
    from autointerp.record_store import load_feature_records

    spec = resolve_address("gemma3-270m/L12/gs2")
    sae_dir = tmp_path / "sae"
    _write_release_file(sae_dir, spec.files[0].rsplit("/", 1)[0], d_in=640, n=16384, seed=1)
    run = tmp_path / "run"
    try:
        main(["sample", "--sae", "gemma3-270m/L12/gs2", "--sae-dir", str(sae_dir), "--tokens", "256",
              "--window", "32", "--features", "0-7", "--run-dir", str(run), "--threads", "2"])
    except SystemExit as e:
        assert not e.code
    recs = load_feature_records(run)
    assert [r.id.index for r in recs] == list(range(8))
    assert all(r.id.source == "gemma3-270m/L12/gs2" for r in recs)
    assert sum(r.stats.frequency > 0 for r in recs) > 0
