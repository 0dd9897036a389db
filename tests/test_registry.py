"""The SAE address registry: parsing, defaults, local folders, the hub cache, offline errors, and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources import registry
from autointerp.sources.registry import SaeSpec, resolve_address, resolve_source


def test_default_addresses_resolve_to_canonical_gemma_scope() -> None:
    s = resolve_address("gemma2-9b/L20")
    assert s == resolve_address("gemma2-9b/L20/16k") == resolve_address("gemma2-9b/L20/res/16k/l0_68")
    assert s.address == "gemma2-9b/L20"
    assert (s.repo_id, s.format, s.hook, s.d_in, s.width, s.l0) == (
        "google/gemma-scope-9b-pt-res",
        "gemma_scope",
        HookPoint(20, "resid_post"),
        3584,
        16384,
        68.0,
    )
    assert s.files == ("layer_20/width_16k/average_l0_68/params.npz",)
    assert s.neuronpedia == "gemma-2-9b/20-gemmascope-res-16k"
    assert s.revision == "main" and not s.revision_pinned
    two = resolve_address("gemma2-2b/L20")
    assert (two.d_in, two.files) == (2304, ("layer_20/width_16k/average_l0_71/params.npz",))


def test_variants_sites_and_models() -> None:
    wide = resolve_address("gemma2-9b/L20/131k")
    assert (wide.width, wide.l0, wide.canonical) == (131072, 114.0, True)
    low = resolve_address("gemma2-9b/L20/16k/l0_138")
    assert (low.address, low.canonical, low.l0) == ("gemma2-9b/L20/l0_138", False, 138.0)
    assert low.files == ("layer_20/width_16k/average_l0_138/params.npz",)
    mlp = resolve_address("gemma2-9b/L20/mlp")
    assert (mlp.hook, mlp.repo_id) == (HookPoint(20, "mlp_out"), "google/gemma-scope-9b-pt-mlp")
    att = resolve_address("gemma2-9b/L20/att/131k")
    assert (att.hook, att.d_in, att.width) == (HookPoint(20, "attn_z"), 4096, 131072)
    it = resolve_address("gemma2-9b-it/L20")
    assert (it.model, it.model_name, it.repo_id, it.l0) == (
        "google/gemma-2-9b-it",
        "gemma-2-9b-it",
        "google/gemma-scope-9b-it-res",
        91.0,
    )
    g = resolve_address("gpt2-small/L8")
    assert (g.format, g.hook, g.width, g.repo_id) == (
        "saelens",
        HookPoint(8, "resid_pre"),
        24576,
        "jbloom/GPT2-Small-SAEs-Reformatted",
    )
    assert g.files == ("blocks.8.hook_resid_pre/cfg.json", "blocks.8.hook_resid_pre/sae_weights.safetensors")
    oai = resolve_address("gpt2-small/L8/res-post/128k")
    assert (oai.hook, oai.width, oai.repo_id) == (
        HookPoint(8, "resid_post"),
        131072,
        "jbloom/GPT2-Small-OAI-v5-128k-resid-post-SAEs",
    )


def test_neuron_addresses() -> None:
    n = resolve_address("gemma3-270m/L6/mlp_neurons")
    assert (n.kind, n.model, n.hook, n.address) == ("neurons", "gemma3-270m", HookPoint(6, "mlp_neurons"), n.address)
    hub = resolve_address("openai-community/gpt2/L3/mlp_neurons")
    assert (hub.model, hub.hook) == ("openai-community/gpt2", HookPoint(3, "mlp_neurons"))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("gemma2-9c/L20", "did you mean gemma2-9b/L20"),
        ("gemma2-9b/L99", "layers: 0-41"),
        ("gemma2-9b/L20/mlpp", "did you mean gemma2-9b/L20/mlp"),
        ("gemma2-9b/L20/16k/l0_114", "L0s: 11, 20, 36, 58, 68, 138, 310, 408"),
        ("gemma2-9b/L20/2k", "widths: 16k"),
        ("", "empty address"),
    ],
)
def test_unknown_addresses_suggest(address: str, expected: str) -> None:
    with pytest.raises(UserError) as e:
        resolve_address(address)
    assert expected in str(e.value) and "\n" not in str(e.value)


# ---- a tiny SAE injected into the registry, to exercise the file paths end to end -------------------
D, N = 8, 16


@pytest.fixture
def tiny_site(monkeypatch: pytest.MonkeyPatch) -> registry._Site:
    site = registry._Site(
        family="tiny",
        site="res",
        model="tiny-model",
        subject="tiny-model",
        fmt="gemma_scope",
        hook_kind="resid_post",
        d_in=D,
        default_width="16",
        revision="main",
        revision_pinned=False,
        repo_ids={"": "fake/tiny-scope"},
        path_template="layer_{layer}/width_{width}/average_l0_{l0}",
        local_dir=None,
        rows=((2, "16", 5.0, "tiny/2-res", True, None), (2, "16", 9.0, None, False, None)),
    )
    real = registry._sites()
    monkeypatch.setattr(registry, "_sites", lambda: (*real, site))
    monkeypatch.setitem(registry.WIDTHS, "16", N)
    monkeypatch.delenv(registry.SAE_DIR_ENV, raising=False)
    return site


def _write_npz(path: Path, d: int = D, n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    a = {
        "W_enc": rng.normal(size=(d, n)).astype(np.float32),
        "W_dec": rng.normal(size=(n, d)).astype(np.float32),
        "b_enc": rng.normal(size=n).astype(np.float32),
        "b_dec": np.zeros(d, np.float32),
        "threshold": np.abs(rng.normal(size=n)).astype(np.float32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **a)
    return a


def test_resolve_source_from_local_dir_and_env(
    tiny_site: registry._Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _write_npz(tmp_path / "sae" / "layer_2/width_16/average_l0_5/params.npz")
    src = resolve_source("tiny/L2", local_dir=tmp_path / "sae")
    assert (src.address, src.hook, src.d_in, src.n_features, src.model_name) == (
        "tiny/L2",
        HookPoint(2, "resid_post"),
        D,
        N,
        "tiny-model",
    )
    x = torch.randn(4, D)
    pre = x.numpy() @ a["W_enc"] + a["b_enc"]
    np.testing.assert_allclose(src.encode(x).values.numpy(), np.maximum(pre, 0) * (pre > a["threshold"]), atol=1e-5)
    # $AUTOINTERP_SAE_DIR, with the repo id as a sub-folder
    _write_npz(tmp_path / "env" / "fake/tiny-scope" / "layer_2/width_16/average_l0_9/params.npz")
    monkeypatch.setenv(registry.SAE_DIR_ENV, str(tmp_path / "env"))
    assert resolve_source("tiny/L2/l0_9").address == "tiny/L2/l0_9"


def test_wrong_file_at_the_right_place(tiny_site: registry._Site, tmp_path: Path) -> None:
    _write_npz(tmp_path / "layer_2/width_16/average_l0_5/params.npz", d=D + 1)
    with pytest.raises(UserError, match="is not this SAE"):
        resolve_source("tiny/L2", local_dir=tmp_path)


def _fake_hub_cache(root: Path, repo: str, commit: str = "a" * 40) -> Path:
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    return snap


def test_resolve_source_through_the_hub_cache(
    tiny_site: registry._Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = _fake_hub_cache(tmp_path / "hub", "fake/tiny-scope")
    _write_npz(snap / "layer_2/width_16/average_l0_5/params.npz")
    src = resolve_source("tiny/L2")
    assert src.n_features == N
    root = registry.fetch_files(resolve_address("tiny/L2"))
    assert root == snap


def test_offline_missing_file_names_repo_revision_and_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(registry.SAE_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as e:
        resolve_source("gemma2-9b/L20", local_dir=tmp_path / "saes", revision="v1")
    msg = str(e.value)
    assert "google/gemma-scope-9b-pt-res" in msg and "revision v1" in msg
    assert f"put it at {tmp_path / 'saes'}/layer_20/width_16k/average_l0_68/params.npz" in msg
    assert "--sae-dir" in msg and "\n" not in msg


def test_spec_is_plain_data() -> None:
    s = resolve_address("gemma2-9b/L20")
    assert isinstance(s, SaeSpec) and s.layer == 20
    assert len(registry.known_addresses()) > 2000
    assert {r["address"] for r in registry.site_summaries()} >= {"gemma2-9b/L<n>", "gpt2-small/L<n>/res-post"}


# ---- CLI --------------------------------------------------------------------------------------------
def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from autointerp.cli import main

    try:
        main(args)
        rc = 0
    except SystemExit as e:
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_sources_list_show_and_unknown(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, _ = _cli(["sources"], capsys)
    assert rc == 0 and "gemma2-9b/L<n>" in out and "gpt2-small/L<n>/res-post" in out
    rc, out, _ = _cli(["sources", "gemma2-9b/L20"], capsys)
    assert (
        rc == 0 and "layer_20/width_16k/average_l0_68/params.npz" in out and "gemma-2-9b/20-gemmascope-res-16k" in out
    )
    rc, out, _ = _cli(["sources", "gemma2-9b/L20", "--all"], capsys)
    assert rc == 0 and "gemma2-9b/L20/l0_408" in out
    rc, out, err = _cli(["sources", "gemma2-9c/L20"], capsys)
    assert rc == 2 and "did you mean gemma2-9b/L20" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_neuron_source_is_sized_by_the_subject(tiny_llama: Any) -> None:
    src = resolve_source("tiny-llama/L1/mlp_neurons", subject=tiny_llama)
    assert (src.address, src.d_in, src.n_features) == ("tiny-llama/L1/mlp_neurons", 48, 48)
    with pytest.raises(UserError, match="needs the subject"):
        resolve_source("tiny-llama/L1/mlp_neurons")


def test_resolve_source_checks_the_subject_width(tiny_site: registry._Site, tmp_path: Path) -> None:
    _write_npz(tmp_path / "layer_2/width_16/average_l0_5/params.npz")
    assert resolve_source("tiny/L2", local_dir=tmp_path, hook_dim=D).d_in == D
    with pytest.raises(UserError) as e:
        resolve_source("tiny/L2", local_dir=tmp_path, hook_dim=640)
    assert str(e.value) == (
        f"SAE d_in {D} does not match L2/resid_post of tiny-model (640): pick an SAE for this model or another hook"
    )


def test_embedded_sae_is_shipped_and_resolves() -> None:
    spec = resolve_address("embedded/gemma3-270m/L6")
    assert spec == resolve_address("gemma3-270m/L6")
    assert (spec.address, spec.model, spec.format, spec.repo_id, spec.width) == (
        "gemma3-270m/L6",
        "gemma3-270m",
        "gemma_scope",
        None,
        2048,
    )
    src = resolve_source("gemma3-270m/L6", hook_dim=640)
    assert (src.hook, src.d_in, src.n_features) == (HookPoint(6, "resid_post"), 640, 2048)
    out = src.encode(torch.randn(3, 640) * 50, features=[0, 5])
    assert out.values.shape == (3, 2)


@pytest.mark.slow
def test_embedded_sae_on_the_real_subject() -> None:
    """On real gemma3-270m activations the shipped SAE is sparse and reconstructs most of the variance."""
    from autointerp.corpus import load_corpus
    from autointerp.sources.sae import LinearSae
    from autointerp.subject import load_subject
    from autointerp.train_sae import evaluate

    subject = load_subject("gemma3-270m", threads=2)
    src = resolve_source("gemma3-270m/L6", subject=subject)
    assert isinstance(src, LinearSae)
    windows = load_corpus("wiki", subject.tokenizer, window=64, seed=123)
    batch = next(windows.batches(8))
    acts = subject.run(batch.input_ids, [src.hook])[src.hook][batch.valid_mask()]
    m = evaluate(src, acts)
    assert m["fve"] > 0.5 and 5 < m["l0"] < 100, m


def test_cli_fetch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(registry.SAE_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    rc, out, _ = _cli(["sources", "gemma3-270m/L6", "--fetch"], capsys)
    assert rc == 0 and "2048 features, jumprelu" in out
    rc, out, err = _cli(["sources", "gpt2-small/L8", "--fetch", "--sae-dir", str(tmp_path / "saes")], capsys)
    assert rc == 2 and "jbloom/GPT2-Small-SAEs-Reformatted (revision main)" in err
    assert "blocks.8.hook_resid_pre/sae_weights.safetensors beside it" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
