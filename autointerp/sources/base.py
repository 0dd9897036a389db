"""The feature-source contract.

A source reads activations at one hook point of a subject model, ``x: [N, d_in]``, and returns feature
activations, either dense ``[N, F]`` or sparse top-k ``(values [N, k], indices [N, k])`` so a TopK SAE is
never densified. ``features`` (optional) restricts a dense output to those feature indices, so a
131k-latent SAE computes only the encoder columns that were asked for where the architecture allows it.
``decoder_rows`` gives each feature's output direction in the hook's space (what steering adds and what
the vocabulary projection reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from autointerp.hooks import HookPoint


@dataclass
class DenseActs:
    values: torch.Tensor
    """[N, F'] activations for features ``feature_ids`` (all features when that is None)."""
    feature_ids: torch.Tensor | None = None
    """[F'] int64 indices of the columns of ``values``; None means column j is feature j."""


@dataclass
class TopKActs:
    values: torch.Tensor
    """[N, k] activations of the k selected features per token (zeros allowed)."""
    indices: torch.Tensor
    """[N, k] int64 feature indices."""
    n_features: int


FeatureActs = DenseActs | TopKActs


@runtime_checkable
class FeatureSource(Protocol):
    address: str
    """Registry address or ``<model>/<hook>``; the ``source`` part of every FeatureId it produces."""
    hook: HookPoint
    """Where in the subject model the source reads its input."""
    d_in: int
    n_features: int
    model_name: str | None
    """The subject model the source was made for (e.g. ``gemma-2-9b``), when known."""

    def encode(self, x: torch.Tensor, features: Sequence[int] | None = None) -> FeatureActs: ...

    @property
    def has_decoder(self) -> bool:
        """True when :meth:`decoder_rows` can give output directions (steering, vocabulary projection)."""
        ...

    def decoder_rows(self, features: Sequence[int]) -> torch.Tensor:
        """Output direction of each feature in the hook's space, ``[len(features), d_in]``: an SAE's decoder
        rows; a neuron's unit vector. UserError (one line) when the source has no decoder."""
        ...

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FeatureSource: ...
