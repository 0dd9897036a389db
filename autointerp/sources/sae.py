"""One SAE class for every supported file format: a linear encoder plus an activation rule.

Every format (Gemma Scope, SAELens, EleutherAI sparsify, OpenAI sparse_autoencoder, the embedded SAE)
is loaded into :class:`LinearSae`, which computes::

    x' = normalise(x) - pre_bias            (each step optional, per format)
    pre = x' @ W_enc + b_enc                 ([N, F], or only the requested columns)
    f = activation(pre)                      relu | jumprelu | gated | topk | relu_topk | groupmax

Weights are tensors behind loader callables and are read on first use only (memory-mapped where the
file allows it), so resolving a 2.5 GB Gemma Scope SAE costs nothing until ``encode`` is called, and a
``features`` subset reads only those encoder columns. The decoder is never read for encoding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources.base import DenseActs, FeatureActs, TopKActs

log = logging.getLogger(__name__)

Activation = Literal["relu", "jumprelu", "gated", "topk", "relu_topk", "groupmax"]
InputNorm = Literal["none", "layer_norm", "constant_norm_rescale", "scale"]
TensorLoader = Callable[[], torch.Tensor]

DENSE_ACTIVATIONS: frozenset[str] = frozenset({"relu", "jumprelu", "gated"})
_CHUNK_ELEMENTS = 1 << 25  # bound [N, F] pre-activation buffers to ~128 MB of fp32 per chunk


@dataclass
class SaeWeights:
    """Lazily loaded tensors of one SAE, by name (``W_enc``, ``b_enc``, ``threshold``, ``W_dec``, ...).

    ``loaders[name]()`` returns a CPU tensor (possibly memory-mapped); ``shapes[name]`` is known without
    reading data; ``origin`` names the file, for error messages."""

    loaders: dict[str, TensorLoader]
    shapes: dict[str, tuple[int, ...]]
    origin: str

    def has(self, name: str) -> bool:
        return name in self.loaders

    def load(self, name: str) -> torch.Tensor:
        if name not in self.loaders:
            raise UserError(f"{self.origin} has no tensor {name!r}: the file is not a complete SAE; re-download it")
        try:
            return self.loaders[name]()
        except UserError:
            raise
        except Exception as e:  # a truncated or corrupt file surfaces here on first read
            raise UserError(
                f"cannot read tensor {name!r} from {self.origin} ({type(e).__name__}: {e}); the file is "
                "truncated or corrupt: delete it and download it again"
            ) from e


def check_finite(t: torch.Tensor, name: str, origin: str) -> None:
    """UserError if ``t`` holds NaN or Inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise UserError(
            f"{origin}: tensor {name!r} holds {bad} NaN/Inf values; the SAE file is corrupt or was saved from "
            "a diverged training run: use another file"
        )


@dataclass
class LinearSae:
    """An SAE encoder; implements :class:`autointerp.sources.base.FeatureSource`."""

    address: str
    hook: HookPoint
    d_in: int
    n_features: int
    model_name: str | None
    weights: SaeWeights
    activation: Activation
    format: str
    """File format it was read from: gemma_scope, saelens, sparsify, openai."""
    encoder_layout: Literal["in_out", "out_in"] = "in_out"
    """``in_out``: W_enc is stored [d_in, F] (Gemma Scope, SAELens); ``out_in``: [F, d_in] (nn.Linear)."""
    encoder_name: str = "W_enc"
    bias_name: str | None = "b_enc"
    pre_bias_name: str | None = None
    """Tensor subtracted from the (normalised) input before encoding, e.g. ``b_dec``; None for none."""
    input_norm: InputNorm = "none"
    input_scale: float | None = None
    """Multiplier of the input when ``input_norm == "scale"``."""
    k: int | None = None
    """Active latents per token for topk / relu_topk / groupmax."""
    ln_eps: float = 1e-5
    info: dict[str, Any] = field(default_factory=dict)
    """Format-specific facts shown by ``autointerp sources`` (architecture, file, cfg fields)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _subset_key: tuple[int, ...] | None = field(default=None, repr=False)
    _subset: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.activation in ("topk", "relu_topk", "groupmax"):
            if self.k is None or not (0 < self.k <= self.n_features):
                raise UserError(
                    f"{self.weights.origin}: k={self.k} must be between 1 and the number of latents "
                    f"({self.n_features}); fix k in the SAE config"
                )
            if self.activation == "groupmax" and self.n_features % self.k:
                raise UserError(f"{self.weights.origin}: groupmax needs num_latents divisible by k={self.k}")
        if self.input_norm == "scale" and (self.input_scale is None or not math.isfinite(self.input_scale)):
            raise UserError(f"{self.weights.origin}: input normalisation 'scale' needs a finite scaling factor")

    # ---- FeatureSource ------------------------------------------------------------------------------
    @property
    def is_sparse(self) -> bool:
        """True when ``encode`` returns :class:`TopKActs` (TopK-style SAEs)."""
        return self.activation not in DENSE_ACTIVATIONS

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LinearSae:
        """Compute on ``device`` in ``dtype`` (weights are moved on next use). Returns self."""
        device = torch.device(device)
        if device != self.device or (dtype is not None and dtype != self.dtype):
            self.device = device
            if dtype is not None:
                self.dtype = dtype
            self._cache.clear()
            self._subset.clear()
            self._subset_key = None
        return self

    def encode(self, x: torch.Tensor, features: Sequence[int] | None = None) -> FeatureActs:
        """Feature activations for ``x: [..., d_in]`` (flattened to [N, d_in]).

        Dense architectures return :class:`DenseActs` with only the ``features`` columns when given
        (only those encoder columns are read and multiplied); TopK-style ones compute every
        pre-activation and return :class:`TopKActs` (``features`` is then ignored)."""
        if x.shape[-1] != self.d_in:
            raise UserError(
                f"activations have width {x.shape[-1]} but SAE {self.address} expects d_in {self.d_in}: "
                "read them at the SAE's hook point of the model it was trained on"
            )
        x = x.reshape(-1, self.d_in).to(device=self.device, dtype=self.dtype)
        x = self._preprocess(x)
        if not self.is_sparse:
            return self._encode_dense(x, features)
        return self._encode_topk(x)

    # ---- helpers ------------------------------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor:
        """A weight on the compute device/dtype (loaded, checked for NaN/Inf, and cached on first use)."""
        t = self._cache.get(name)
        if t is None:
            raw = self.weights.load(name)
            expected = self.weights.shapes.get(name)
            if expected is not None and tuple(raw.shape) != tuple(expected):
                raise UserError(
                    f"{self.weights.origin}: tensor {name!r} has shape {tuple(raw.shape)}, expected "
                    f"{tuple(expected)}; the file is inconsistent: re-download it"
                )
            t = raw.to(device=self.device, dtype=self.dtype)
            check_finite(t, name, self.weights.origin)
            self._cache[name] = t
        return t

    @property
    def has_decoder(self) -> bool:
        return self.weights.has("W_dec") or self.weights.has("decoder.weight")

    def decoder(self) -> torch.Tensor:
        """Decoder directions ``[n_features, d_in]`` (read on demand; not needed for encoding)."""
        if not self.has_decoder:
            raise UserError(
                f"SAE {self.address} ({self.weights.origin}) has no decoder weights (W_dec): steering and the "
                "vocabulary projection need them; use an SAE file that includes W_dec"
            )
        name = "W_dec" if self.weights.has("W_dec") else "decoder.weight"
        w = self.tensor(name)
        return w.T if tuple(w.shape) == (self.d_in, self.n_features) and self.d_in != self.n_features else w

    def decoder_rows(self, features: Sequence[int]) -> torch.Tensor:
        """Decoder rows ``[len(features), d_in]`` of ``features``."""
        bad = [f for f in features if not 0 <= f < self.n_features]
        if bad:
            raise UserError(f"feature index out of range for {self.address} ({self.n_features} features): {bad[:5]}")
        return self.decoder()[torch.as_tensor(list(features), dtype=torch.long, device=self.device)]

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            x = x / (x.std(dim=-1, keepdim=True) + self.ln_eps)
        elif self.input_norm == "constant_norm_rescale":
            x = x * ((self.d_in**0.5) / x.norm(dim=-1, keepdim=True))
        elif self.input_norm == "scale":
            assert self.input_scale is not None
            x = x * self.input_scale
        if self.pre_bias_name is not None:
            x = x - self.tensor(self.pre_bias_name)
        return x

    def _full_encoder(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W [d_in, F], b [F] or None) for all features."""
        w = self.tensor(self.encoder_name)
        if self.encoder_layout == "out_in":
            w = w.T
        b = self.tensor(self.bias_name) if self.bias_name is not None else None
        return w, b

    def _columns(self, names: Sequence[str], features: Sequence[int]) -> dict[str, torch.Tensor]:
        """Only the requested feature columns of each named per-feature tensor (cached for repeated calls)."""
        key = tuple(int(f) for f in features)
        if self._subset_key != key:
            if key and (min(key) < 0 or max(key) >= self.n_features):
                raise UserError(
                    f"feature index out of range for {self.address} ({self.n_features} features): "
                    f"{[f for f in key if not 0 <= f < self.n_features][:5]}"
                )
            self._subset = {}
            self._subset_key = key
        out: dict[str, torch.Tensor] = {}
        idx = torch.tensor(key, dtype=torch.long)
        for name in names:
            t = self._subset.get(name)
            if t is None:
                if name in self._cache:  # already materialised in full
                    full = self._cache[name]
                    t = full.index_select(self._feature_dim(name), idx.to(full.device))
                else:
                    raw = self.weights.load(name)
                    t = raw.index_select(self._feature_dim(name), idx).to(device=self.device, dtype=self.dtype)
                    check_finite(t, name, self.weights.origin)
                if name == self.encoder_name and self.encoder_layout == "out_in":
                    t = t.T
                self._subset[name] = t
            out[name] = t
        return out

    def _feature_dim(self, name: str) -> int:
        if name == self.encoder_name:
            return 0 if self.encoder_layout == "out_in" else 1
        return 0

    def _encode_dense(self, x: torch.Tensor, features: Sequence[int] | None) -> DenseActs:
        names = [self.encoder_name]
        names += [n for n in (self.bias_name,) if n is not None]
        if self.activation == "jumprelu":
            names.append("threshold")
        elif self.activation == "gated":
            names += ["b_gate", "r_mag", "b_mag"]
        if features is None:
            t = {n: self.tensor(n) for n in names}
            if self.encoder_layout == "out_in":
                t[self.encoder_name] = t[self.encoder_name].T
            feature_ids = None
        else:
            t = self._columns(names, features)
            feature_ids = torch.tensor(list(features), dtype=torch.long)
        w = t[self.encoder_name]
        n_cols = w.shape[1]
        chunk = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
        outs = []
        for start in range(0, x.shape[0], chunk):
            xc = x[start : start + chunk]
            if self.activation == "gated":
                gate = xc @ w + t["b_gate"]
                mag = xc @ (w * t["r_mag"].exp()) + t["b_mag"]
                f = (gate > 0).to(mag.dtype) * torch.relu(mag)
            else:
                pre = xc @ w
                if self.bias_name is not None:
                    pre = pre + t[self.bias_name]
                f = torch.relu(pre)
                if self.activation == "jumprelu":
                    f = f * (pre > t["threshold"]).to(f.dtype)
            outs.append(f)
        values = torch.cat(outs) if outs else x.new_zeros((0, n_cols))
        return DenseActs(values=values, feature_ids=feature_ids)

    def _encode_topk(self, x: torch.Tensor) -> TopKActs:
        w, b = self._full_encoder()
        assert self.k is not None
        k = self.k
        chunk = max(1, _CHUNK_ELEMENTS // self.n_features)
        vals, idxs = [], []
        for start in range(0, x.shape[0], chunk):
            pre = x[start : start + chunk] @ w
            if b is not None:
                pre = pre + b
            if self.activation == "topk":  # SAELens / OpenAI: top-k of pre-activations, then ReLU
                v, i = torch.topk(pre, k, dim=-1)
                v = torch.relu(v)
            elif self.activation == "relu_topk":  # sparsify: ReLU, then top-k
                v, i = torch.topk(torch.relu(pre), k, dim=-1)
            else:  # groupmax (sparsify): the max of each of k equal groups
                v, i = torch.relu(pre).unflatten(-1, (k, -1)).max(dim=-1)
                i = i + torch.arange(0, self.n_features, self.n_features // k, device=i.device)
            vals.append(v)
            idxs.append(i)
        if not vals:
            return TopKActs(x.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long), self.n_features)
        return TopKActs(values=torch.cat(vals), indices=torch.cat(idxs).long(), n_features=self.n_features)


def densify(acts: FeatureActs) -> torch.Tensor:
    """A dense ``[N, F]`` tensor from either output kind (for tests and small sources)."""
    if isinstance(acts, DenseActs):
        return acts.values
    out = acts.values.new_zeros((acts.values.shape[0], acts.n_features))
    out.scatter_(1, acts.indices, acts.values)
    return out


def random_sae(
    hook: HookPoint,
    d_in: int,
    n_features: int,
    *,
    activation: Activation = "relu",
    k: int | None = None,
    seed: int = 0,
    model_name: str | None = None,
    decoder: bool = True,
) -> LinearSae:
    """A random-weight SAE for tests and benchmarks (never for results): ``W_enc ~ N(0, 1/d_in)`` [d_in, F],
    ``b_enc = 0``, decoder the encoder's transpose. ``activation`` relu (dense) or topk (with ``k``);
    ``decoder=False`` leaves ``W_dec`` and ``b_dec`` out (an encoder-only file)."""
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(d_in, n_features, generator=g) / d_in**0.5
    tensors = {"W_enc": w_enc, "b_enc": torch.zeros(n_features)}
    if decoder:
        tensors |= {"W_dec": w_enc.T.contiguous(), "b_dec": torch.zeros(d_in)}
    origin = f"random-{activation}-{n_features}"
    return LinearSae(
        address=f"{origin}@{hook}",
        hook=hook,
        d_in=d_in,
        n_features=n_features,
        model_name=model_name,
        weights=SaeWeights({n: _constant(t) for n, t in tensors.items()},
                           {n: tuple(t.shape) for n, t in tensors.items()}, origin),
        activation=activation,
        format="random",
        k=k,
    )


def _constant(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        return t

    return load
