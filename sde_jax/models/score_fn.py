r"""From a network to the score :math:`\nabla_x \log p_t(x)` of the paper's models.

The network is conditioned on a label formed from :math:`t`, and its output is turned into a score,
with the paper's conventions:

- VE, continuous: label :math:`\sigma(t)`; score = output (the network divides by :math:`\sigma`
  itself, ``scale_by_sigma``).
- VE, discrete (SMLD): label :math:`\operatorname{round}((T - t)(N - 1))`; score = output.
- VP and sub-VP, continuous: label :math:`999\,t`; score = :math:`-\text{output} / s(t)`.
- VP, discrete (DDPM): label :math:`t\,(N - 1)`; score = :math:`-\text{output} /
  \sqrt{1 - \bar\alpha_i}` with :math:`i = \lfloor t\,(N - 1) \rfloor`.

The discrete VE label counts noise levels from the largest (label 0 is :math:`\sigma_{\max}`), and
sub-VP models always use the continuous convention. :math:`s(t)` is the marginal standard deviation
of the SDE.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.sde import VESDE, VPSDE, SubVPSDE, batch_broadcast, check_time

Array = jax.Array
# score_fn(variables, x, t, *, train=False, key=None, class_labels=None) -> score.
NetworkScoreFn = Callable[..., Array]


def network_labels(sde, x: Array, t: Array, *, continuous: bool = True) -> tuple[Array, Array]:
    """The network's conditioning label and the factor turning its output into the score.

    Args:
        sde: a :class:`~sde_jax.sde.VESDE`, :class:`~sde_jax.sde.VPSDE` or
            :class:`~sde_jax.sde.SubVPSDE`.
        x: ``[B, *event]`` (only its shape and dtype are used).
        t: times ``[B]``.
        continuous: the model was trained with continuous time.

    Returns:
        ``(labels, factor)``, both ``[B]``: ``score = factor * network(x, labels)``.
    """
    check_time(x, t)
    ones = jnp.ones_like(t)
    if isinstance(sde, VPSDE | SubVPSDE):
        if continuous or isinstance(sde, SubVPSDE):
            std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            return 999.0 * t, -1.0 / std
        labels = t * (sde.N - 1)
        # Truncation picks the noise level as the paper's samplers do, but a time on the grid
        # t = i / (N - 1) (as the discrete DDPM loss draws) can land a rounding error below i;
        # a 4-ulp relative guard keeps it at i without moving any off-grid sampler time.
        index = (labels * (1.0 + 4 * jnp.finfo(labels.dtype).eps)).astype(jnp.int32)
        std = sde.sqrt_1m_alphas_cumprod[jnp.minimum(index, sde.N - 1)]
        return labels, -1.0 / std
    if isinstance(sde, VESDE):
        if continuous:
            return sde.marginal_prob(jnp.zeros_like(x), t)[1], ones
        return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32), ones
    raise ValueError(f"`sde` must be a VESDE, VPSDE or SubVPSDE; got {type(sde).__name__}")


def make_score_fn(sde, model: nn.Module, *, continuous: bool = True) -> NetworkScoreFn:
    """Wraps ``model`` into the score function of ``sde`` (see the module docstring).

    Args:
        sde: a :class:`~sde_jax.sde.VESDE`, :class:`~sde_jax.sde.VPSDE` or
            :class:`~sde_jax.sde.SubVPSDE`.
        model: a network called as ``model.apply(variables, x, labels, class_labels, train=...)``,
            e.g. :class:`~sde_jax.models.NCSNpp` or :class:`~sde_jax.models.DDPM`.
        continuous: the model was trained with continuous time (otherwise the discrete SMLD / DDPM
            label conventions apply).

    Returns:
        A pure ``score_fn(variables, x, t, *, train=False, key=None, class_labels=None)`` returning
        the score ``[B, *event]`` for ``x`` ``[B, *event]`` and ``t`` ``[B]``; ``key`` drives
        dropout when ``train`` is true. ``functools.partial(score_fn, variables)`` is the
        ``score_fn(x, t)`` the samplers take.
    """
    if not isinstance(sde, VESDE | VPSDE | SubVPSDE):
        raise ValueError(f"`sde` must be a VESDE, VPSDE or SubVPSDE; got {type(sde).__name__}")

    def score_fn(
        variables,
        x: Array,
        t: Array,
        *,
        train: bool = False,
        key: Array | None = None,
        class_labels: Array | None = None,
    ) -> Array:
        labels, factor = network_labels(sde, x, t, continuous=continuous)
        rngs = {"dropout": key} if key is not None else None
        out = model.apply(variables, x, labels, class_labels, train=train, rngs=rngs)
        return batch_broadcast(factor.astype(out.dtype), out) * out

    return score_fn
