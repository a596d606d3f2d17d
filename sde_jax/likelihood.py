r"""Exact likelihood of score-based models through the probability-flow ODE.

The probability-flow ODE :math:`\mathrm{d}x/\mathrm{d}t = \tilde f(x, t)` (paper eq. 13) is a
continuous normalizing flow, so by the instantaneous change of variables (paper eq. 39)

.. math:: \log p_\epsilon(x(\epsilon)) = \log p_T(x(T)) + \int_\epsilon^T
          \nabla_x \cdot \tilde f(x(t), t)\,\mathrm{d}t.

The state :math:`(x, \int \nabla\cdot\tilde f)` is integrated from :math:`\epsilon` to :math:`T` in one
diffrax solve on device. The divergence is the exact Jacobian trace (``trace='exact'``, one
Jacobian-vector product per dimension, for small dimensions) or the Skilling–Hutchinson estimate
:math:`v^\top J v` with one probe :math:`v` (Rademacher or Gaussian) drawn once and held fixed for the
whole solve, which keeps the ODE smooth and the estimate of :math:`\log p` unbiased.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sde_jax._checks import check_choice, check_eps
from sde_jax.sampling import SOLVERS, solve_ode
from sde_jax.sde import SDE, ScoreFn, sum_event

Array = jax.Array

TRACE_ESTIMATORS = ("rademacher", "gaussian", "exact")


def _probe(key: Array, kind: str, shape: tuple[int, ...]) -> Array:
    if kind == "gaussian":
        return jax.random.normal(key, shape)
    return jax.random.rademacher(key, shape, jnp.float32)


def _exact_divergence(f, x: Array) -> Array:
    # Score functions treat samples independently, so one JVP along basis vector e_d for the whole
    # batch yields every sample's column d of its own Jacobian.
    d = math.prod(x.shape[1:])
    basis = jnp.reshape(jnp.eye(d, dtype=x.dtype), (d, 1, *x.shape[1:]))

    def diag_entry(e):
        e = jnp.broadcast_to(e, x.shape)
        return sum_event(jax.jvp(f, (x,), (e,))[1] * e)

    return jnp.sum(jax.lax.map(diag_entry, basis), axis=0)


def log_likelihood(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    *,
    trace: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    solver: str = "dopri5",
    max_steps: int = 4096,
) -> tuple[Array, Array, Array]:
    r"""Log-likelihood of ``x`` under the probability-flow ODE of ``score_fn``.

    The whole computation is one jitted diffrax solve and is differentiable (reverse mode, through
    diffrax's checkpointed adjoint) with respect to ``x`` and anything ``score_fn`` closes over.

    Args:
        key: PRNG key for the trace probe (unused for ``trace='exact'``).
        score_fn: ``score_fn(x, t) -> score``.
        sde: the forward SDE.
        x: data ``[B, *event]``, in the model's data scaling.
        trace: ``'rademacher'``, ``'gaussian'`` or ``'exact'``.
        rtol: relative tolerance of the solve.
        atol: absolute tolerance of the solve.
        eps: the start time :math:`\epsilon` (the density is that of :math:`p_\epsilon`).
        solver: a name in :data:`sde_jax.sampling.SOLVERS`.
        max_steps: the solver's step budget.

    Returns:
        ``(logp [B] in nats, z [B, *event] = x(T), nfe)``; ``nfe`` counts evaluations of the ODE's
        vector field (each one evaluation of the score with its divergence).
    """
    check_choice("trace", trace, TRACE_ESTIMATORS)
    check_choice("solver", solver, SOLVERS)
    if x.ndim < 2:
        raise ValueError(f"`x` must be [B, *event]; got shape {tuple(x.shape)}.")
    eps = check_eps(sde, eps)
    return _log_likelihood(
        key,
        sde,
        x,
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(rtol, jnp.float32),
        jnp.asarray(atol, jnp.float32),
        score_fn=score_fn,
        trace=trace,
        solver=solver,
        max_steps=max_steps,
    )


def _log_likelihood_impl(key, sde, x, eps, rtol, atol, *, score_fn, trace, solver, max_steps):
    rsde = sde.reverse(score_fn, probability_flow=True)
    batch = x.shape[0]
    probe = None if trace == "exact" else _probe(key, trace, x.shape)

    def vector_field(t, state, args):
        y, _ = state
        drift = lambda v: rsde.sde(v, jnp.full((batch,), t, v.dtype))[0]
        if trace == "exact":
            return drift(y), _exact_divergence(drift, y)
        f, jvp = jax.jvp(drift, (y,), (probe,))
        return f, sum_event(jvp * probe)

    (z, delta_logp), nfe = solve_ode(
        vector_field,
        (x, jnp.zeros((batch,), x.dtype)),
        eps,
        sde.T,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    return sde.prior_logp(z) + delta_logp, z, nfe.astype(jnp.int32)


_log_likelihood = jax.jit(
    _log_likelihood_impl, static_argnames=("score_fn", "trace", "solver", "max_steps")
)


def bits_per_dim(
    logp: Array,
    event_shape: tuple[int, ...],
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
) -> Array:
    r"""Converts the log-density of dequantized ``num_bins``-level data into bits per dimension.

    A pixel with ``num_bins`` levels mapped linearly onto ``data_range`` (width :math:`w`) occupies a
    bin of width :math:`w / \text{num\_bins}`, so the discrete log-probability of the bin is
    :math:`\log p(x) + D \log(w/\text{num\_bins})` and

    .. math:: \text{bpd} = -\frac{\log p(x)}{D \ln 2} + \log_2 \frac{\text{num\_bins}}{w},

    which adds 7 for 8-bit data centered to :math:`[-1, 1]` and 8 for data in :math:`[0, 1]`.

    Args:
        logp: ``[B]`` log-densities in nats of the uniformly dequantized data.
        event_shape: the shape of one example (``D`` is its size).
        data_range: the interval the pixel values were scaled to.
        num_bins: the number of levels of the discrete data.

    Returns:
        ``[B]`` bits per dimension.
    """
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"`data_range` must be (low, high) with high > low; got {data_range}.")
    dims = math.prod(event_shape)
    offset = math.log2(num_bins / (hi - lo))
    return -logp / (dims * math.log(2.0)) + offset
