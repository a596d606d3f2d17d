"""Sample quality: FID, Inception Score and KID with the FID Inception-v3, comparable with the paper.

- :mod:`~sde_jax.metrics.inception`: the network (Flax).
- :mod:`~sde_jax.metrics.features`: TF1 bilinear resizing, the network's input, and
  :class:`FeatureExtractor` (jitted batches, optionally split over a device mesh).
- :mod:`~sde_jax.metrics.weights`: download, checksum, conversion and caching of its weights.
- :mod:`~sde_jax.metrics.scores`: FID, KID, IS, and feature-statistics files with the metadata that
  makes statistics from a different layer, resizing, image size or weights an error.
"""

from sde_jax.metrics.features import FeatureExtractor, preprocess, resize_bilinear_tf1
from sde_jax.metrics.inception import FEATURE_LAYERS, InceptionV3
from sde_jax.metrics.weights import InceptionWeights, WeightsUnavailableError, load_inception

__all__ = [
    "FEATURE_LAYERS",
    "FeatureExtractor",
    "InceptionV3",
    "InceptionWeights",
    "WeightsUnavailableError",
    "load_inception",
    "preprocess",
    "resize_bilinear_tf1",
]
