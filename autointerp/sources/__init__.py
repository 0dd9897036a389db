"""Feature sources: turn hook activations into feature activations (neurons, SAEs)."""

from autointerp.sources.base import DenseActs, FeatureActs, FeatureSource, TopKActs

__all__ = ["DenseActs", "FeatureActs", "FeatureSource", "TopKActs"]
