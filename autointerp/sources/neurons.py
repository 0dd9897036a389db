"""Neurons as a feature source: the identity over a hook's activations.

For ``mlp_neurons`` a feature is one MLP neuron; for any other hook a "neuron" is one dimension of the
activation (e.g. a residual-stream dimension). Address ``<model>/<hook>``, e.g. ``gemma3-270m/L6/mlp_neurons``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autointerp.errors import UserError
from autointerp.hooks import HookPoint
from autointerp.sources.base import DenseActs, FeatureSource


class NeuronSource:
    """Identity feature source over the activations at ``hook`` (width ``d_in``)."""

    def __init__(self, model_name: str, hook: HookPoint, d_in: int) -> None:
        self.model_name: str | None = model_name
        self.hook = hook
        self.d_in = d_in
        self.n_features = d_in
        self.address = f"{model_name}/{hook}"

    def __repr__(self) -> str:
        return f"NeuronSource({self.address!r}, d_in={self.d_in})"

    def encode(self, x: torch.Tensor, features: Sequence[int] | None = None) -> DenseActs:
        """``x [N, d_in]`` -> DenseActs; with ``features``, only those columns (feature_ids set)."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{self.address}: expected activations of width {self.d_in}, got {x.shape[-1]}")
        if features is None:
            return DenseActs(values=x)
        ids = torch.as_tensor(list(features), dtype=torch.int64, device=x.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.d_in):
            raise UserError(f"{self.address} has features 0..{self.d_in - 1}; the requested features are out of range")
        return DenseActs(values=x.index_select(-1, ids), feature_ids=ids)

    @property
    def has_decoder(self) -> bool:
        return True

    def decoder_rows(self, features: Sequence[int]) -> torch.Tensor:
        """A neuron writes through its own unit vector at the hook (e.g. the input of down_proj), so its
        output direction is that basis vector; the subject maps it on (its row of down_proj)."""
        ids = torch.as_tensor(list(features), dtype=torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.d_in):
            raise UserError(f"{self.address} has features 0..{self.d_in - 1}; the requested features are out of range")
        return torch.nn.functional.one_hot(ids, self.d_in).to(torch.float32)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> NeuronSource:
        return self


def neuron_source(subject_name: str, hook: HookPoint, d_in: int) -> FeatureSource:
    """A NeuronSource typed as a FeatureSource."""
    return NeuronSource(subject_name, hook, d_in)
