r"""EDM samplers (Karras et al. 2022): Heun's method on the probability-flow ODE in :math:`(y, s)`,
deterministic (Algorithm 1) or with churn (Algorithm 2).

The options they share with the other few-step samplers (``num_steps``, ``rho``, ``schedule``,
``eps``, ``s_max``, ``levels``, ``query_levels``, ``z``) and their return value are
described in :mod:`sde_jax.sampling.levels`.
"""

from __future__ import annotations

import functools
import math

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


def edm_heun_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    rho: float | None = None,
    schedule: str | None = None,
    eps: float | None = None,
    s_max: float | None = None,
    levels: Array | None = None,
    query_levels: Array | None = None,
    z: Array | None = None,
) -> tuple[Array, Array]:
    r"""Deterministic sampling with Heun's method (Karras et al. 2022, Algorithm 1).

    Step :math:`i` moves from :math:`s_i` to :math:`s_{i+1}` with the slope
    :math:`d_i = (y - D(y; s_i))/s_i`, then corrects with the average of :math:`d_i` and the slope
    at the new point, except for the last step (to :math:`s = 0`), which is an Euler step. NFE:
    :math:`2n - 1`, or :math:`2n - 2` with ``s_max`` (its jump is one evaluation).
    """
    shape, schedule, args = _check(
        sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels
    )
    zero = jnp.zeros((), jnp.float32)
    return _edm_sample(
        key, sde, args, check_z(z, shape), zero, zero, zero, zero,
        score_fn=score_fn, shape=shape, churn=False, schedule=schedule,
    )  # fmt: skip


def edm_stochastic_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    rho: float | None = None,
    schedule: str | None = None,
    s_churn: float = 10.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    eps: float | None = None,
    s_max: float | None = None,
    levels: Array | None = None,
    query_levels: Array | None = None,
    z: Array | None = None,
) -> tuple[Array, Array]:
    r"""Stochastic sampling of Karras et al. 2022 (Algorithm 2): Heun steps with churn.

    Before step :math:`i` the noise level is raised to :math:`\hat s_i = (1 + \gamma_i)s_i` by
    adding :math:`\sqrt{\hat s_i^2 - s_i^2}\,S_\text{noise}\,z`, with
    :math:`\gamma_i = \min(S_\text{churn}/n, \sqrt2 - 1)` where
    :math:`S_{t\min} \le s_i \le S_{t\max}` and 0 elsewhere; then a Heun step goes from
    :math:`\hat s_i` to :math:`s_{i+1}`. :math:`\hat s_i` is capped at :math:`s(T)` so that the
    score is never asked for beyond the time range it was trained on (this only affects the first
    step). NFE as :func:`edm_heun_sample`.

    Args:
        s_churn: :math:`S_\text{churn} \ge 0`, the total amount of churn (0 is
            :func:`edm_heun_sample`).
        s_tmin: :math:`S_{t\min}`, the lowest noise level (in :math:`s`) that gets churn.
        s_tmax: :math:`S_{t\max}`, the highest.
        s_noise: :math:`S_\text{noise}`, the scale of the added noise (slightly above 1 in EDM to
            offset a denoiser's bias; 1 for an exact score).
    """
    shape, schedule, args = _check(
        sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels
    )
    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not v >= 0:
            raise ValueError(f"`{name}` must be >= 0; got {v!r}.")
    if not s_tmax >= s_tmin:
        raise ValueError(f"`s_tmax` must be >= `s_tmin` ({s_tmin}); got {s_tmax!r}.")
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return _edm_sample(
        key, sde, args, check_z(z, shape), f32(s_churn), f32(s_tmin), f32(s_tmax), f32(s_noise),
        score_fn=score_fn, shape=shape, churn=True, schedule=schedule,
    )  # fmt: skip


def _check(sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels):
    return check_levels(
        sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels,
        default_steps=18, default_schedule="edm",
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "churn", "schedule"))
def _edm_sample(
    key, sde, args, z0, s_churn, s_tmin, s_tmax, s_noise, *, score_fn, shape, churn, schedule
):  # fmt: skip
    k_prior, k_loop = jax.random.split(key)
    grid = Grid(sde, schedule, args)
    n = grid.n
    y = scaled_prior_sample(sde, k_prior, shape, z0)
    denoise = functools.partial(denoiser, sde, score_fn)
    gamma_max = jnp.minimum(s_churn / jnp.asarray(n, jnp.float32), math.sqrt(2.0) - 1.0)

    def raise_noise(i, y, s):
        if not churn:
            return y, s
        gamma = jnp.where((s >= s_tmin) & (s <= s_tmax), gamma_max, 0.0)
        # The cap s_hat <= s(T); s_0 can round a little above s(T), hence the maximum with 0.
        gamma = jnp.minimum(gamma, jnp.maximum(grid.s_top / s - 1.0, 0.0))
        z = jax.random.normal(jax.random.fold_in(k_loop, i), y.shape, y.dtype)
        # sqrt(s_hat^2 - s^2) written without the cancellation, which at s ~ 100 and gamma = 0
        # would leave rounding noise of order sqrt(float eps) * s.
        return y + s * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z, s * (1.0 + gamma)

    def heun_step(i, y):
        y, s = raise_noise(i, y, grid.level(i))
        s_next = grid.level(i + 1)
        d = (y - denoise(y, grid.query(i, s))) / s
        y_euler = y + (s_next - s) * d
        d_next = (y_euler - denoise(y_euler, grid.query(i + 1, s_next))) / s_next
        return y + (s_next - s) * 0.5 * (d + d_next)

    # With s_max, one evaluation (not Heun's two) jumps to it; no churn at s_0 = s(T), the cap.
    y, first = jump_to_s_max(sde, score_fn, grid, y)
    y = grid.loop(first, n - 1, heun_step, y)
    # The last step, to s = 0, is Euler's: y + (0 - s) (y - D) / s = D.
    y, s = raise_noise(n - 1, y, grid.s_min)
    return denoise(y, grid.query(n - 1, s)), grid.count(2 * n - 1 - first)
