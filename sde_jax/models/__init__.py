"""Score networks: NCSN++ / DDPM++ (:class:`NCSNpp`), the DDPM baseline (:class:`DDPM`), the
paper's full-size configurations (:mod:`sde_jax.models.presets`) and the score-function wrapper
(:func:`make_score_fn`).

Build a network from plain keyword fields with ``get_model("ncsnpp", nf=128, ...)``. The fields
in :data:`COMPUTE_FIELDS` (``conv_algorithm``, ``winograd_min_channels``, ``materialize_blocks``)
choose how a network computes on a given backend, not which network it is.
"""

from sde_jax.models.ddpm import DDPM
from sde_jax.models.layers import COMPUTE_FIELDS, CONV_ALGORITHMS
from sde_jax.models.ncsnpp import NCSNpp
from sde_jax.models.registry import MODELS, get_model
from sde_jax.models.score_fn import make_score_fn, network_labels

__all__ = [
    "COMPUTE_FIELDS",
    "CONV_ALGORITHMS",
    "DDPM",
    "MODELS",
    "NCSNpp",
    "get_model",
    "make_score_fn",
    "network_labels",
]
