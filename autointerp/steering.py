"""What a feature writes: its output direction, its vocabulary projection, and steering with it.

* :func:`residual_directions`: a feature's output direction in the residual stream. The source gives it
  in the hook's space (:meth:`FeatureSource.decoder_rows`: an SAE's decoder row, a neuron's unit vector);
  hooks inside a block are mapped on by the weights that follow them: ``mlp_neurons`` through
  ``down_proj`` (GPT-2 ``c_proj``), i.e. a neuron's row of the down-projection, ``attn_z`` through
  ``o_proj``; on Gemma 2/3 the block's post-norm (``post_feedforward_layernorm`` /
  ``post_attention_layernorm``) is then applied to the direction, as it is to the block's output. Residual
  hooks (``resid_pre``, ``resid_post``, ``mlp_out``, ``attn_out``) are already there.
* :func:`vocab_projection` (logit lens): residual direction -> the model's final norm -> unembedding; the
  ``k`` tokens with the highest and the lowest logits. Softcapping of the logits (Gemma) is monotonic and
  left out. Tokens are decoded strings, as the tokenizer writes them.
* :func:`steer`: a context manager that, while active, adds ``alpha x direction`` to the activations at
  the hook on every position (``mode="add"``), or for a neuron sets its activation to ``alpha``
  (``mode="clamp"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources.base import FeatureSource
from autointerp.subject import Subject

VOCAB_METHOD = "logit lens: decoder row -> (down_proj / o_proj for in-block hooks) -> final norm -> unembedding"
STEER_MODES = ("add", "clamp")


def require_decoder(source: FeatureSource, why: str) -> None:
    """One-line UserError when ``source`` cannot give output directions (checked before any work)."""
    if not getattr(source, "has_decoder", False):
        raise UserError(
            f"{why} needs the output direction of each feature, but source {source.address} has no decoder "
            "(W_dec); use an SAE file with decoder weights or drop that option"
        )


def _map_weight(module: nn.Module, v: torch.Tensor) -> torch.Tensor:
    w: Any = module.weight
    if isinstance(module, nn.Linear):  # weight [out, in]
        return v @ w.T
    return v @ w  # GPT-2 Conv1D: weight [in, out]


@torch.inference_mode()
def residual_directions(subject: Subject, hook: HookPoint, rows: torch.Tensor) -> torch.Tensor:
    """Map ``rows [n, d_hook]`` (output directions at ``hook``) into the residual stream ``[n, d_model]``."""
    layer: Any = subject.layers[hook.layer]
    gpt2 = subject.arch == "gpt2"
    v = rows.to(device=subject.device, dtype=subject.dtype)
    if hook.kind == "mlp_neurons":
        v = _map_weight(layer.mlp.c_proj if gpt2 else layer.mlp.down_proj, v)
        if not gpt2 and subject._is_gemma(layer):
            v = layer.post_feedforward_layernorm(v)
    elif hook.kind == "attn_z":
        v = _map_weight(layer.attn.c_proj if gpt2 else layer.self_attn.o_proj, v)
        if not gpt2 and subject._is_gemma(layer):
            v = layer.post_attention_layernorm(v)
    return v


@dataclass
class VocabProjection:
    """The tokens a feature's output direction promotes (top) and suppresses (bottom), with their logits."""

    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]
    method: str = VOCAB_METHOD

    def to_json(self) -> dict[str, Any]:
        return {
            "top": [[t, v] for t, v in self.top],
            "bottom": [[t, v] for t, v in self.bottom],
            "method": self.method,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VocabProjection:
        return cls(
            top=[(str(t), float(v)) for t, v in d.get("top", [])],
            bottom=[(str(t), float(v)) for t, v in d.get("bottom", [])],
            method=str(d.get("method", VOCAB_METHOD)),
        )


def _final_norm(subject: Subject) -> nn.Module:
    base: Any = subject.base
    return base.ln_f if subject.arch == "gpt2" else base.norm


@torch.inference_mode()
def vocab_projection(
    subject: Subject, source: FeatureSource, features: Sequence[int], k: int = 10
) -> list[VocabProjection]:
    """Top and bottom ``k`` tokens of each feature's residual direction read through the unembedding."""
    require_decoder(source, "the vocabulary projection")
    rows = source.decoder_rows(list(features))
    resid = residual_directions(subject, source.hook, rows)
    model: Any = subject.model
    unembed: Any = model.get_output_embeddings()
    norm: Any = _final_norm(subject)
    logits = unembed(norm(resid)).float()  # [n, vocab]
    top_v, top_i = logits.topk(k, dim=-1)
    bot_v, bot_i = logits.topk(k, dim=-1, largest=False)
    tok = subject.tokenizer

    def pairs(ids: torch.Tensor, vals: torch.Tensor) -> list[tuple[str, float]]:
        return [(tok.decode([int(i)]), float(v)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)]

    return [VocabProjection(pairs(top_i[j], top_v[j]), pairs(bot_i[j], bot_v[j])) for j in range(len(features))]


def _add_to_first(x: Any, fn: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
        return (fn(x[0]), *x[1:])
    raise TypeError(f"cannot steer an output of type {type(x).__name__}")


@contextlib.contextmanager
def steer(
    subject: Subject,
    hook: HookPoint,
    direction: torch.Tensor,
    alpha: float,
    mode: str = "add",
    feature: int | None = None,
) -> Iterator[None]:
    """While active, every forward pass of ``subject`` is steered at ``hook``.

    ``add``: activations += alpha x direction (``direction [d_hook]``); ``clamp``: activation of neuron
    ``feature`` := alpha (neurons only)."""
    if mode not in STEER_MODES:
        raise UserError(f"steering mode {mode!r} is unknown; use one of {', '.join(STEER_MODES)}")
    if mode == "clamp" and feature is None:
        raise UserError("clamp steering sets one neuron's activation: give the neuron's index")
    module, where = subject._module_for(hook)
    d = direction.to(device=subject.device, dtype=subject.dtype)

    def change(t: torch.Tensor) -> torch.Tensor:
        if mode == "add":
            return t + alpha * d
        t = t.clone()
        t[..., feature] = alpha
        return t

    handle: torch.utils.hooks.RemovableHandle
    if where == "pre":

        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            if args:
                return (_add_to_first(args[0], change), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else "input"
            return args, {**kwargs, key: _add_to_first(kwargs[key], change)}

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            return _add_to_first(output, change)

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()
