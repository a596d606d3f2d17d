r"""DDIM (Song, Meng & Ermon 2021, "Denoising diffusion implicit models", eq. 12) in :math:`(y, s)`.

The options it shares with the other few-step samplers (``num_steps``, ``rho``, ``schedule``,
``eps``, ``s_max``, ``levels``, ``query_levels``, ``z``) and its return value are
described in :mod:`sde_jax.sampling.levels`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sde_jax.sampling.levels import (
    Grid,
    check_levels,
    check_z,
    denoiser,
    jump_to_s_max,
    scaled_prior_sample,
)
from sde_jax.sde import SDE, ScoreFn

Array = jax.Array


def ddim_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    eta: float = 0.0,
    rho: float | None = None,
    schedule: str | None = None,
    eps: float | None = None,
    s_max: float | None = None,
    levels: Array | None = None,
    query_levels: Array | None = None,
    z: Array | None = None,
) -> tuple[Array, Array]:
    r"""DDIM with stochasticity :math:`\eta`; NFE :math:`= n`.

    From :math:`s` to :math:`s' < s`, with :math:`D = D(y; s)` and :math:`\hat n = (y - D)/s` the
    predicted noise,

    .. math:: y' = D + \sqrt{s'^2 - c^2}\,\hat n + c\,z, \qquad
              c = \eta\,s'\sqrt{1 - s'^2/s^2},

    which in :math:`x = \alpha y` is the paper's update with its :math:`\sigma_t(\eta)` (:math:`c`
    is the posterior standard deviation of :math:`q(y_{s'} \mid y_s, x_0)` times :math:`\eta`).
    :math:`\eta = 0` is the Euler step of the probability-flow ODE, :math:`\eta = 1` the ancestral
    (DDPM-like) step. The last step, to :math:`s' = 0`, returns :math:`D`.

    Args:
        eta: :math:`\eta \in [0, 1]`; ``key`` also draws the step noise when it is positive.
    """
    shape, schedule, args = check_levels(
        sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels,
        default_steps=50, default_schedule="edm",
    )  # fmt: skip
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must lie in [0, 1]; got {eta!r}.")
    return _ddim_sample(
        key,
        sde,
        args,
        check_z(z, shape),
        jnp.asarray(eta, jnp.float32),
        score_fn=score_fn,
        shape=shape,
        schedule=schedule,
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "schedule"))
def _ddim_sample(key, sde, args, z0, eta, *, score_fn, shape, schedule):
    k_prior, k_loop = jax.random.split(key)
    grid = Grid(sde, schedule, args)
    y = scaled_prior_sample(sde, k_prior, shape, z0)

    def step(i, y):
        s, s_next = grid.level(i), grid.level(i + 1)
        d = denoiser(sde, score_fn, y, grid.query(i, s))
        kept = 1.0 - (s_next / s) ** 2
        c = eta * s_next * jnp.sqrt(kept)
        z = jax.random.normal(jax.random.fold_in(k_loop, i), y.shape, y.dtype)
        # sqrt(s'^2 - c^2), written so that eta = 0 gives s' exactly.
        return d + s_next * jnp.sqrt(1.0 - eta**2 * kept) * (y - d) / s + c * z

    y, first = jump_to_s_max(sde, score_fn, grid, y)
    y = grid.loop(first, grid.n - 1, step, y)
    return denoiser(sde, score_fn, y, grid.query(grid.n - 1, grid.s_min)), grid.count(grid.n)
