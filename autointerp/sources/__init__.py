"""Feature sources: turn hook activations into feature activations (neurons, SAEs).

- :func:`resolve_source` / :func:`resolve_address`: short addresses (``gemma2-9b/L20``,
  ``gemma3-270m/L6/mlp_neurons``) -> a loaded source / a :class:`SaeSpec` (see ``registry``).
- :func:`load_sae`: an SAE file or folder in Gemma Scope, SAELens, sparsify or OpenAI format (see ``formats``).
- :func:`check_compatible`: the source's d_in against the subject's width at its hook.
"""

from autointerp.sources.base import DenseActs, FeatureActs, FeatureSource, TopKActs
from autointerp.sources.formats import check_compatible, load_sae
from autointerp.sources.registry import SaeSpec, resolve_address, resolve_source
from autointerp.sources.sae import LinearSae, densify

__all__ = [
    "DenseActs",
    "FeatureActs",
    "FeatureSource",
    "LinearSae",
    "SaeSpec",
    "TopKActs",
    "check_compatible",
    "densify",
    "load_sae",
    "resolve_address",
    "resolve_source",
]
