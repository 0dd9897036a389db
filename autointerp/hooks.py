"""Hook point names: one short scheme (``L6/mlp_neurons``) mapped to TransformerLens names.

| short name        | TransformerLens name          | what it reads (HF decoder layer L)                    |
|-------------------|-------------------------------|-------------------------------------------------------|
| ``L{L}/resid_pre``  | ``blocks.L.hook_resid_pre``   | input of decoder layer L                              |
| ``L{L}/resid_post`` | ``blocks.L.hook_resid_post``  | output of decoder layer L                             |
| ``L{L}/mlp_in``     | ``blocks.L.hook_mlp_in``      | input of the MLP block (after Gemma's pre-FF norm)    |
| ``L{L}/mlp_neurons``| ``blocks.L.mlp.hook_post``    | MLP hidden activations (input of down_proj / c_proj)  |
| ``L{L}/mlp_out``    | ``blocks.L.hook_mlp_out``     | output of the MLP block (after Gemma's post-FF norm)  |
| ``L{L}/attn_out``   | ``blocks.L.hook_attn_out``    | output of the attention block (after post-attn norm)  |
| ``L{L}/attn_z``     | ``blocks.L.attn.hook_z``      | concatenated per-head outputs (input of o_proj)       |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autointerp.errors import UserError

KINDS: dict[str, str] = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_post": "blocks.{L}.hook_resid_post",
    "mlp_in": "blocks.{L}.hook_mlp_in",
    "mlp_neurons": "blocks.{L}.mlp.hook_post",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "attn_out": "blocks.{L}.hook_attn_out",
    "attn_z": "blocks.{L}.attn.hook_z",
}
_SHORT = re.compile(r"^L(\d+)/([a-z_]+)$")
_TL = {re.compile("^" + re.escape(v).replace(r"\{L\}", r"(\d+)") + "$"): k for k, v in KINDS.items()}


@dataclass(frozen=True, order=True)
class HookPoint:
    """A place in the subject model to read activations from."""

    layer: int
    kind: str
    """One of ``KINDS``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown hook kind {self.kind!r}; use one of: {', '.join(KINDS)}")
        if self.layer < 0:
            raise UserError(f"hook layer must be >= 0, got {self.layer}")

    def __str__(self) -> str:
        return f"L{self.layer}/{self.kind}"

    @property
    def tl_name(self) -> str:
        """The TransformerLens name, e.g. ``blocks.6.mlp.hook_post``."""
        return KINDS[self.kind].format(L=self.layer)

    @classmethod
    def parse(cls, text: str) -> HookPoint:
        """Parse ``L6/mlp_neurons`` or a TransformerLens name like ``blocks.6.hook_resid_post``."""
        text = text.strip()
        m = _SHORT.match(text)
        if m:
            return cls(int(m.group(1)), m.group(2))
        for pattern, kind in _TL.items():
            m = pattern.match(text)
            if m:
                return cls(int(m.group(1)), kind)
        raise UserError(
            f"unknown hook point {text!r}; write it as L<layer>/<kind> (kinds: {', '.join(KINDS)}), "
            "e.g. L6/mlp_neurons, or as a TransformerLens name like blocks.6.hook_resid_post"
        )
