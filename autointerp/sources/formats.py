"""Load SAEs from the file formats in use, detected by structure (file names, keys, cfg fields).

Formats (each loaded into :class:`autointerp.sources.sae.LinearSae`):

- ``gemma_scope``: ``params.npz`` with W_enc [d, F], W_dec, b_enc, b_dec, threshold. JumpReLU
  ``relu(pre) * (pre > threshold)``, ``pre = x W_enc + b_enc``; no b_dec subtraction, no normalisation.
- ``gemma_scope_2`` (Gemma Scope 2, as SAELens's ``gemma_3`` loader reads it): a folder with
  ``params.safetensors`` holding lower-case ``w_enc`` [d, F], ``w_dec`` [F, d_out], ``b_enc``, ``b_dec``,
  ``threshold`` (and ``affine_skip_connection`` for affine transcoders), with an optional ``config.json``
  whose ``architecture`` must be ``jump_relu``. The same JumpReLU as Gemma Scope: no b_dec subtraction
  (SAELens sets apply_b_dec_to_input False), no normalisation. The hook comes from the folder name as the
  release lays it out (``resid_post[_all]/layer_L_...`` -> L/resid_post, ``mlp_out`` -> mlp_out,
  ``attn_out`` -> attn_z, ``transcoder[_all]`` -> mlp_in), or from the registry.
- ``saelens``: folder with ``cfg.json`` + ``sae_weights.safetensors``. Architectures standard (ReLU),
  jumprelu, topk, gated. Honours apply_b_dec_to_input and normalize_activations in {none, layer_norm,
  constant_norm_rescale, expected_average_only_in with a norm_scaling_factor in cfg.json}.
- ``sparsify`` (EleutherAI, as sparsify 1.3.3 encodes): folder with ``cfg.json`` + ``sae.safetensors``;
  ``x - b_dec`` (not for transcoders), ``relu(x W^T + b)``, then top-k (or groupmax).
- ``openai`` (openai/sparse_autoencoder): ``.pt`` state dict with pre_bias, encoder.weight, latent_bias,
  decoder.weight, activation, activation_state_dict. TopK: their LayerNorm (mean 0, divide by std + 1e-5),
  ``- pre_bias``, linear + latent_bias, top-k, ReLU. ReLU: ``- pre_bias``, linear, ReLU.

Anything else (another architecture, covariance whitening, decoder-norm-rescaled TopK) is refused with a
UserError rather than encoded wrongly.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources.base import FeatureSource
from autointerp.sources.lazyfiles import npz_loader, npz_members, safetensors_index, safetensors_loader
from autointerp.sources.sae import Activation, InputNorm, LinearSae, SaeWeights

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("gemma_scope", "gemma_scope_2", "saelens", "sparsify", "openai")
SIDECAR = "autointerp_sae.json"
"""Optional JSON beside a Gemma Scope ``params.npz`` (hook, model, address); the embedded SAE has one."""

_SAELENS_ARCHS = ("standard", "jumprelu", "topk", "gated")


def detect_format(path: Path) -> str:
    """The format of the SAE at ``path`` (file or folder), from its file names and contents."""
    if not path.exists():
        raise UserError(
            f"SAE path {path} does not exist: check the path, or use a registry address (autointerp sources)"
        )
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if "params.npz" in names:
            return "gemma_scope"
        if "params.safetensors" in names:
            return "gemma_scope_2"
        if "cfg.json" in names and "sae_weights.safetensors" in names:
            return "saelens"
        if "cfg.json" in names and "sae.safetensors" in names:
            return "sparsify"
        pts = [n for n in names if n.endswith(".pt")]
        if len(pts) == 1:
            return "openai"
        raise UserError(
            f"{path} holds no SAE this tool can read (expected params.npz, params.safetensors, "
            "cfg.json + sae_weights.safetensors, "
            "cfg.json + sae.safetensors, or one OpenAI .pt state dict): point at the SAE's own folder"
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":  # a zip: .npz or a torch zip checkpoint
        members = _zip_names(path)
        if {"W_enc.npy", "b_enc.npy"} <= members:
            return "gemma_scope"
        if any(m.endswith("/data.pkl") for m in members):
            return "openai"
    if path.suffix == ".pt":
        return "openai"
    if path.suffix == ".safetensors" and {"w_enc", "threshold"} <= set(safetensors_index(path)):
        return "gemma_scope_2"
    raise UserError(
        f"cannot tell the SAE format of {path}: pass format= one of {', '.join(FORMATS)} (--sae-format), "
        "or point at a params.npz, a SAELens / sparsify folder or an OpenAI .pt file"
    )


def _zip_names(path: Path) -> set[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is a damaged archive ({e}); it is truncated or corrupt: download it again") from e


def load_sae(
    path: str | Path,
    format: str | None = None,
    hook: str | HookPoint | None = None,
    *,
    address: str | None = None,
    model_name: str | None = None,
) -> LinearSae:
    """Load an SAE from a local file or folder. ``format`` is detected when None; ``hook`` overrides the hook
    point stored in the file (needed for Gemma Scope and OpenAI files, which store none). ``address``
    becomes the FeatureId source (default: the path)."""
    path = Path(path).expanduser()
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown SAE format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise UserError(f"SAE path {path} does not exist: check the path")
    hook_point = HookPoint.parse(hook) if isinstance(hook, str) else hook
    addr = address or path.as_posix()
    if fmt == "gemma_scope":
        sae = _load_gemma_scope(path, hook_point, addr, model_name)
    elif fmt == "gemma_scope_2":
        sae = _load_gemma_scope_2(path, hook_point, addr, model_name)
    elif fmt == "saelens":
        sae = _load_saelens(path, hook_point, addr, model_name)
    elif fmt == "sparsify":
        sae = _load_sparsify(path, hook_point, addr, model_name)
    else:
        sae = _load_openai(path, hook_point, addr, model_name)
    log.debug("loaded %s SAE %s: d_in %d, %d features, %s", fmt, addr, sae.d_in, sae.n_features, sae.activation)
    return sae


def check_compatible(source: FeatureSource, hook_dim: int, model: str | None = None) -> None:
    """UserError when the source's input width differs from the subject's width at the source's hook."""
    if source.d_in != hook_dim:
        of = f" of {model}" if model else ""
        kind = "SAE" if isinstance(source, LinearSae) else "source"
        raise UserError(
            f"{kind} d_in {source.d_in} does not match {source.hook}{of} ({hook_dim}): "
            "pick an SAE for this model or another hook"
        )


# ---- Gemma Scope ------------------------------------------------------------------------------------
def _load_gemma_scope(path: Path, hook: HookPoint | None, address: str, model_name: str | None) -> LinearSae:
    npz = path / "params.npz" if path.is_dir() else path
    if not npz.is_file():
        raise UserError(f"{npz} not found: a Gemma Scope SAE is a params.npz file; download it or fix the path")
    members = npz_members(npz)
    missing = [n for n in ("W_enc", "b_enc", "threshold") if n not in members]
    if missing:
        raise UserError(f"{npz} lacks {', '.join(missing)}: it is not a Gemma Scope params.npz (pass the right format)")
    d_in, n = members["W_enc"].shape if len(members["W_enc"].shape) == 2 else (-1, -1)
    if d_in < 0 or members["b_enc"].shape != (n,) or members["threshold"].shape != (n,):
        raise UserError(
            f"{npz}: inconsistent shapes W_enc {members['W_enc'].shape}, b_enc {members['b_enc'].shape}, "
            f"threshold {members['threshold'].shape}; the file is damaged: download it again"
        )
    if "W_dec" in members and members["W_dec"].shape != (n, d_in):
        raise UserError(f"{npz}: W_dec has shape {members['W_dec'].shape}, expected {(n, d_in)}: download it again")
    sidecar = npz.parent / SIDECAR
    meta: dict[str, Any] = {}
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
    if hook is None and meta.get("hook"):
        hook = HookPoint.parse(str(meta["hook"]))
    if hook is None:
        raise UserError(
            f"{npz} does not say where it reads the model: pass its hook point, e.g. hook='L20/resid_post' "
            "(--hook), or use a registry address"
        )
    weights = SaeWeights(
        loaders={name: npz_loader(npz, m) for name, m in members.items()},
        shapes={name: m.shape for name, m in members.items()},
        origin=str(npz),
    )
    return LinearSae(
        address=address,
        hook=hook,
        d_in=d_in,
        n_features=n,
        model_name=model_name or meta.get("model"),
        weights=weights,
        activation="jumprelu",
        format="gemma_scope",
        info={"architecture": "jumprelu", "file": str(npz), **{k: v for k, v in meta.items() if k != "hook"}},
    )


# ---- Gemma Scope 2 ----------------------------------------------------------------------------------
_GS2_SITE = re.compile(r"(?:^|/)(resid_post|mlp_out|attn_out|transcoder)(?:_all)?/layer_(\d+)_width_")
_GS2_HOOK_KIND = {"resid_post": "resid_post", "mlp_out": "mlp_out", "attn_out": "attn_z", "transcoder": "mlp_in"}
_GS2_NAMES = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}


def gemma_scope_2_hook(folder: str) -> HookPoint | None:
    """The hook point of a Gemma Scope 2 folder as the release names it (SAELens's ``gemma_3`` rules):
    ``resid_post_all/layer_6_width_16k_l0_big`` -> ``L6/resid_post``; ``attn_out`` -> ``attn_z`` (the
    SAE reads the input of o_proj); ``transcoder`` -> ``mlp_in``; None when the name has no such part."""
    m = _GS2_SITE.search(folder)
    return HookPoint(int(m.group(2)), _GS2_HOOK_KIND[m.group(1)]) if m else None


def _load_gemma_scope_2(path: Path, hook: HookPoint | None, address: str, model_name: str | None) -> LinearSae:
    params = path / "params.safetensors" if path.is_dir() else path
    if not params.is_file():
        raise UserError(
            f"{params} not found: a Gemma Scope 2 SAE is a folder with params.safetensors; download it or fix the path"
        )
    folder = params.parent
    config_path = folder / "config.json"
    if config_path.is_file():
        cfg = _read_json_object(config_path)
        if cfg.get("architecture", "jump_relu") != "jump_relu":
            raise UserError(
                f"{config_path}: architecture {cfg.get('architecture')!r} is not a Gemma Scope 2 JumpReLU SAE "
                "(expected jump_relu); pass the right folder"
            )
    shapes = safetensors_index(params)
    if "w_enc" not in shapes or len(shapes["w_enc"]) != 2:
        raise UserError(f"{params} lacks w_enc: it is not a Gemma Scope 2 params.safetensors (pass the right format)")
    d_in, n = shapes["w_enc"]
    expected: dict[str, tuple[int, ...]] = {"b_enc": (n,), "threshold": (n,)}
    if "w_dec" in shapes:
        expected["w_dec"] = (n, shapes["w_dec"][-1])
    _check_shapes(str(params), shapes, expected)
    if hook is None:
        hook = gemma_scope_2_hook(folder.as_posix())
    if hook is None:
        raise UserError(
            f"cannot tell where {folder} reads the model (its folder name is not laid out like the Gemma Scope 2 "
            "release): pass hook='L12/resid_post' (--hook), or use a registry address"
        )
    loaders = {_GS2_NAMES.get(k, k): safetensors_loader(params, k) for k in shapes}
    return LinearSae(
        address=address,
        hook=hook,
        d_in=d_in,
        n_features=n,
        model_name=model_name,
        weights=SaeWeights(loaders, {_GS2_NAMES.get(k, k): v for k, v in shapes.items()}, str(params)),
        activation="jumprelu",
        format="gemma_scope_2",
        info={
            "architecture": "jumprelu_transcoder" if hook.kind == "mlp_in" else "jumprelu",
            "file": str(params),
            "affine_skip": "affine_skip_connection" in shapes,
        },
    )


# ---- SAELens ----------------------------------------------------------------------------------------
def _read_json_object(cfg_path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {cfg_path} ({e}): the SAE folder is incomplete; download it again") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path} is not a JSON object: the SAE folder is damaged; download it again")
    return cfg


def _read_cfg(path: Path) -> dict[str, Any]:
    return _read_json_object(path / "cfg.json")


def _check_shapes(origin: str, shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        if name not in shapes:
            raise UserError(
                f"{origin} lacks tensor {name!r}: it is not a complete SAE of this format; download it again"
            )
        if shapes[name] != shape:
            raise UserError(
                f"{origin}: tensor {name!r} has shape {shapes[name]}, expected {shape} from its config; "
                "the weights and cfg.json do not belong together"
            )


def _open_folder(
    path: Path, kind: str, weights_name: str
) -> tuple[dict[str, Any], Path, dict[str, tuple[int, ...]]]:
    """(cfg.json, weights file, tensor shapes) of a ``kind`` SAE folder; UserError when a part is missing."""
    if not path.is_dir():
        raise UserError(f"{path}: a {kind} SAE is a folder with cfg.json and {weights_name}")
    cfg = _read_cfg(path)
    weights_path = path / weights_name
    if not weights_path.is_file():
        raise UserError(f"{weights_path} not found: the {kind} folder is incomplete; download it again")
    return cfg, weights_path, safetensors_index(weights_path)


def _load_saelens(path: Path, hook: HookPoint | None, address: str, model_name: str | None) -> LinearSae:
    cfg, weights_path, shapes = _open_folder(path, "SAELens", "sae_weights.safetensors")
    meta = cfg.get("metadata") or {}
    arch = str(cfg.get("architecture") or "standard")
    act_str = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if arch == "standard" and act_str == "topk":  # SAELens < 6 stored TopK SAEs as standard + activation_fn
        arch = "topk"
    if arch not in _SAELENS_ARCHS:
        raise UserError(
            f"{path}: SAELens architecture {arch!r} is not supported (supported: {', '.join(_SAELENS_ARCHS)}); "
            "convert it with SAELens to one of those or use another SAE"
        )
    if arch == "standard" and act_str not in (None, "relu"):
        raise UserError(f"{path}: activation {act_str!r} is not supported for standard SAEs (only relu)")
    try:
        d_in = int(cfg["d_in"])
        # old SAELens configs may size the SAE by expansion_factor only: read the width off W_enc then
        d_sae = int(cfg.get("d_sae") or shapes["W_enc"][1])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}/cfg.json lacks d_in/d_sae: it is not a SAELens config; download it again") from e
    expected = {"W_enc": (d_in, d_sae), "b_dec": (d_in,)}
    if arch == "gated":
        expected |= {"b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,)}
    else:
        expected["b_enc"] = (d_sae,)
    if arch == "jumprelu" and "threshold" not in shapes and "log_threshold" in shapes:
        expected["log_threshold"] = (d_sae,)
    elif arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    _check_shapes(str(weights_path), shapes, expected)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        raise UserError(f"{path}: TopK with rescale_acts_by_decoder_norm is not supported; fold the decoder norm first")
    norm = str(cfg.get("normalize_activations") or "none")
    input_norm: InputNorm
    scale: float | None = None
    if norm in ("none", "layer_norm", "constant_norm_rescale"):
        input_norm = norm  # type: ignore[assignment]
    elif norm == "expected_average_only_in" and cfg.get("norm_scaling_factor") is not None:
        input_norm, scale = "scale", float(cfg["norm_scaling_factor"])
    else:
        raise UserError(
            f"{path}: normalize_activations={norm!r} is not supported without a stored scaling factor "
            "(supported: none, layer_norm, constant_norm_rescale, expected_average_only_in with "
            "norm_scaling_factor in cfg.json); fold the normalisation into the weights with SAELens first"
        )
    k: int | None = None
    if arch == "topk":
        k_raw = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k_raw is None:
            raise UserError(f'{path}/cfg.json: a topk SAE without k; add "k" to cfg.json')
        k = int(k_raw)
    hook_name = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if hook is None:
        if not hook_name:
            raise UserError(f"{path}/cfg.json names no hook point: pass hook='L8/resid_pre' (--hook)")
        hook = HookPoint.parse(str(hook_name))
    loaders = {name: safetensors_loader(weights_path, name) for name in shapes}
    if "log_threshold" in shapes and "threshold" not in shapes:
        lt = loaders["log_threshold"]
        loaders["threshold"] = lambda: lt().exp()
        shapes = {**shapes, "threshold": shapes["log_threshold"]}
    activation: Activation = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk", "gated": "gated"}[arch]  # type: ignore[assignment]
    return LinearSae(
        address=address,
        hook=hook,
        d_in=d_in,
        n_features=d_sae,
        model_name=model_name or meta.get("model_name") or cfg.get("model_name"),
        weights=SaeWeights(loaders, shapes, str(weights_path)),
        activation=activation,
        format="saelens",
        bias_name=None if arch == "gated" else "b_enc",
        pre_bias_name="b_dec" if cfg.get("apply_b_dec_to_input", True) else None,
        input_norm=input_norm,
        input_scale=scale,
        k=k,
        info={
            "architecture": arch,
            "file": str(weights_path),
            "hook_name": hook_name,
            "normalize_activations": norm,
            "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        },
    )


# ---- EleutherAI sparsify ----------------------------------------------------------------------------
_MODULE_PREFIX = re.compile(r"^(?:base_model\.model\.|model\.|transformer\.|gpt_neox\.)+")
_MODULE = re.compile(r"^(?:layers|h|blocks)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$")


def hook_from_module_name(name: str) -> HookPoint | None:
    """Map a module name as sparsify names its folders to a hook point: ``layers.6`` / ``h.6`` ->
    ``L6/resid_post``; ``layers.6.mlp`` -> ``L6/mlp_out``; ``layers.6.self_attn`` -> ``L6/attn_out``."""
    m = _MODULE.match(_MODULE_PREFIX.sub("", name))
    if not m:
        return None
    kind = {None: "resid_post", "mlp": "mlp_out"}.get(m.group(2), "attn_out")
    return HookPoint(int(m.group(1)), kind)


def _load_sparsify(path: Path, hook: HookPoint | None, address: str, model_name: str | None) -> LinearSae:
    cfg, weights_path, shapes = _open_folder(path, "sparsify", "sae.safetensors")
    if "encoder.weight" not in shapes or len(shapes["encoder.weight"]) != 2:
        raise UserError(f"{weights_path} lacks encoder.weight: it is not a sparsify SAE; pass the right format")
    n, d_in = shapes["encoder.weight"]
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise UserError(f"{path}: cfg.json d_in {cfg['d_in']} but encoder.weight has {d_in} inputs; files do not match")
    declared = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor") or 0)
    if declared and declared != n:
        raise UserError(
            f"{path}: cfg.json sizes the SAE at {declared} latents but encoder.weight has {n}; files do not match"
        )
    _check_shapes(str(weights_path), shapes, {"encoder.bias": (n,), "b_dec": (d_in,)})
    act = str(cfg.get("activation", "topk"))
    if act not in ("topk", "groupmax"):
        raise UserError(f"{path}: sparsify activation {act!r} is not supported (topk, groupmax)")
    if "k" not in cfg:
        raise UserError(f"{path}/cfg.json has no k: it is not a sparsify config")
    transcode = bool(cfg.get("transcode", False))
    if hook is None:
        hook = hook_from_module_name(path.name)
        if hook is None:
            raise UserError(
                f"cannot tell the hook point of sparsify SAE folder {path.name!r}: pass hook='L6/resid_post' (--hook)"
            )
    return LinearSae(
        address=address,
        hook=hook,
        d_in=d_in,
        n_features=n,
        model_name=model_name,
        weights=SaeWeights({k: safetensors_loader(weights_path, k) for k in shapes}, shapes, str(weights_path)),
        activation="relu_topk" if act == "topk" else "groupmax",
        format="sparsify",
        encoder_layout="out_in",
        encoder_name="encoder.weight",
        bias_name="encoder.bias",
        pre_bias_name=None if transcode else "b_dec",
        k=int(cfg["k"]),
        info={"architecture": act, "file": str(weights_path), "module": path.name, "transcode": transcode},
    )


# ---- OpenAI sparse_autoencoder ----------------------------------------------------------------------
def _load_openai(path: Path, hook: HookPoint | None, address: str, model_name: str | None) -> LinearSae:
    if path.is_dir():
        pts = sorted(path.glob("*.pt"))
        if len(pts) != 1:
            raise UserError(f"{path}: expected exactly one OpenAI .pt file in the folder, found {len(pts)}")
        path = pts[0]
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) checkpoint cannot be memory-mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot read {path} as a torch state dict ({type(e).__name__}); it is truncated or corrupt"
        ) from e
    if not isinstance(sd, dict) or not {"pre_bias", "encoder.weight", "latent_bias"} <= set(sd):
        raise UserError(
            f"{path} is not an OpenAI sparse_autoencoder state dict (needs pre_bias, encoder.weight, latent_bias)"
        )
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    n, d_in = tensors["encoder.weight"].shape
    _check_shapes(
        str(path), {k: tuple(v.shape) for k, v in tensors.items()}, {"pre_bias": (d_in,), "latent_bias": (n,)}
    )
    act_name = sd.get("activation", "ReLU")
    k: int | None = None
    if act_name == "TopK":
        state = sd.get("activation_state_dict") or {}
        if state.get("postact_fn", "ReLU") != "ReLU" or "k" not in state:
            raise UserError(f"{path}: TopK activation needs k and a ReLU post-activation in activation_state_dict")
        k = int(state["k"])
        activation: Activation = "topk"
        norm: InputNorm = "layer_norm"  # their from_state_dict enables LN exactly when the activation is TopK
    elif act_name == "ReLU":
        activation, norm = "relu", "none"
    else:
        raise UserError(f"{path}: activation {act_name!r} is not supported (TopK, ReLU)")
    if hook is None:
        raise UserError(f"{path} does not say where it reads the model: pass hook='L8/resid_post' (--hook)")
    return LinearSae(
        address=address,
        hook=hook,
        d_in=int(d_in),
        n_features=int(n),
        model_name=model_name,
        weights=SaeWeights(
            {name: _const(t) for name, t in tensors.items()},
            {name: tuple(t.shape) for name, t in tensors.items()},
            str(path),
        ),
        activation=activation,
        format="openai",
        encoder_layout="out_in",
        encoder_name="encoder.weight",
        bias_name="latent_bias",
        pre_bias_name="pre_bias",
        input_norm=norm,
        k=k,
        info={"architecture": str(act_name), "file": str(path)},
    )


def _const(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: t
