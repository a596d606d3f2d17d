r"""Noise levels: the :math:`(y, s)` parametrisation the few-step samplers work in.

Every SDE of the paper has Gaussian marginals :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,n` with
:math:`(\alpha, \sigma)` = ``sde.marginal_coefs(t)`` (VE: :math:`\alpha = 1`; VP:
:math:`\sigma^2 = 1 - \alpha^2`; sub-VP: :math:`\sigma = 1 - \alpha^2`). In the scaled variable
:math:`y = x/\alpha` every one of them is a VE process whose noise level is the noise-to-signal
ratio :math:`s(t) = \sigma(t)/\alpha(t)`, which increases strictly in :math:`t`, and the
probability-flow ODE becomes (Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models", eq. 4 with their :math:`s(t) = 1`)

.. math:: \frac{\mathrm{d}y}{\mathrm{d}s} = \frac{y - D(y; s)}{s}, \qquad
          D(y; s) = \mathbb{E}[x_0 \mid x_t = \alpha y] = y + s^2\,\alpha\,\nabla_x\log p_t(\alpha y),

with :math:`t = t(s)` the inverse of :math:`s(t)` (:func:`time_of`). The few-step samplers
(:mod:`~sde_jax.sampling.edm`, :mod:`~sde_jax.sampling.multistep`, :mod:`~sde_jax.sampling.ddim`)
step :math:`y` through a decreasing sequence of levels :math:`s_0 > s_1 > \dots > s_n = 0` with the
denoiser :func:`denoiser`, so each is defined for VE, VP and sub-VP alike; only :math:`s(t)` and its
inverse depend on the SDE. Since :math:`\alpha(0) = 1`, the result is a sample of :math:`x_0`.

**Options every few-step sampler takes** (``sample_fn(key, score_fn, sde, shape, *, ...)``):

- ``num_steps``: :math:`n \ge 2` (None: the method's default) steps from :math:`s_0 = s(T)`, the prior's level, to
  :math:`s_n = 0`. The last one, from :math:`s_{n-1} = s_{\min} = s(\epsilon)` to 0, is
  :math:`y \leftarrow D(y; s_{\min})`, Tweedie's denoising step (the ``denoise`` of the PC and ODE
  samplers). The step count is traced, so a new budget does not compile again.
- ``schedule``: how the levels are spaced, a key of :data:`SCHEDULES` (:func:`schedule_level`):
  ``edm`` (Karras et al. 2022, eq. 5, :func:`edm_schedule`), ``logsnr`` (uniform in
  :math:`\lambda = -\log s`), ``time_uniform`` or ``time_quadratic`` (uniform in :math:`t` or
  :math:`\sqrt t`); None: the method's default.
- ``rho``: the exponent :math:`\rho` of the ``edm`` schedule (None: 7, as in EDM; larger puts
  more steps at low noise and approaches ``logsnr``); the other schedules ignore it.
- ``eps``: the smallest nonzero time :math:`\epsilon`, so :math:`s_{\min} = s(\epsilon)`; defaults to
  ``sde.sampling_eps``.
- ``s_max``: None (default), or a level strictly between :math:`s(\epsilon)` and :math:`s(T)` to
  jump to first (needs ``num_steps >= 3``): the first step goes from :math:`s(T)` to
  :math:`s_{\max}` with one evaluation (:func:`jump_to_s_max`) and the other :math:`n - 1` levels
  follow the schedule over :math:`[s_{\min}, s_{\max}]`. Above the scale of the data the marginals
  are nearly Gaussian and :math:`D` nearly affine, so that one step is accurate and the rest of the
  budget goes where the data's structure forms. Song & Ermon (2020, "Improved techniques for
  training score-based generative models", technique 1) put the largest useful noise level near the
  largest distance between two data points; for the paper's SDEs :math:`s(T)` is far above it (VP:
  about 150 for data in :math:`[-1, 1]`).
- ``levels``: None, or the levels themselves, :math:`s_0 = s(T) > s_1 > \dots > s_{n-1} > 0`
  (an array ``[n]``; :math:`s_n = 0` follows), in place of all the options above, which must
  then be left None: for instance levels optimized for a model and a budget by
  :func:`~sde_jax.sampling.optimize_levels`. Their length is static (a new length compiles
  again), and the samples are differentiable in them.
- ``query_levels``: None, or with ``levels`` the levels :math:`q_i` ``[n]`` at which the steps
  evaluate the denoiser: the step at :math:`s_i` uses :math:`D(y; q_i)` in place of
  :math:`D(y; s_i)` (and a second evaluation at :math:`s_{i+1}`, Heun's or UniPC's, uses
  :math:`q_{i+1}`), the update itself still going from :math:`s_i` to :math:`s_{i+1}`. Evaluating
  the denoiser a little off its step's level corrects the bias a coarse step leaves in
  :math:`y`, as the time-shift and compensation samplers of the literature do; both sequences are
  fitted to a model by :func:`~sde_jax.sampling.optimize_levels`.
- ``z``: None, or a prior sample :math:`x_T` ``[B, *event]`` to start from instead of a draw with
  ``key`` (which then only draws the step noise of the stochastic samplers), as ``z`` of
  :func:`~sde_jax.sampling.ode_sample`: the same start can be solved by several samplers.

Each returns ``(samples [B, *event], nfe)``, ``nfe`` the number of score evaluations per sample
(int32), and runs as one compiled program (jitted with the score function, the shape and the
schedule's name static) whose loop over steps is a :func:`jax.lax.fori_loop`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax._checks import (
    check_choice,
    check_eps,
    check_int,
    check_positive,
    check_sde,
    check_shape,
)
from sde_jax.sde import SDE, VESDE, VPSDE, ScoreFn, batch_broadcast

Array = jax.Array

SCHEDULES = ("edm", "logsnr", "time_uniform", "time_quadratic")
# The most given levels whose loop is unrolled (Grid.loop).
UNROLL_MAX = 32


def noise_to_signal(sde: SDE, t: Array) -> Array:
    r""":math:`s(t) = \sigma(t)/\alpha(t)`, shaped like ``t``."""
    mean_coef, std = sde.marginal_coefs(t)
    return std / mean_coef


def prior_level(sde: SDE) -> Array:
    r""":math:`s(T)`, the noise-to-signal ratio of the prior sample (a float32 scalar)."""
    return noise_to_signal(sde, jnp.asarray(sde.T, jnp.float32))


def time_of(sde: SDE, s: Array) -> Array:
    r"""The time :math:`t` at which the noise-to-signal ratio is ``s``, the inverse of
    :func:`noise_to_signal`, shaped like ``s``.

    VE: :math:`t = \log(s/\sigma_{\min}) / \log(\sigma_{\max}/\sigma_{\min})`. VP and sub-VP share
    :math:`\alpha(t) = e^{-B(t)/2}` with :math:`B` the integrated :math:`\beta`, so
    :math:`t = B^{-1}(L)` (:meth:`~sde_jax.sde.VPSDE.inverse_integrated_beta`) with
    :math:`L = \log(1 + s^2)` for VP (:math:`s^2 = \alpha^{-2} - 1`) and
    :math:`L = 2\operatorname{asinh}(s/2)` for sub-VP (:math:`s = \alpha^{-1} - \alpha`).
    """
    if isinstance(sde, VESDE):
        return jnp.log(s / sde.sigma_min) / jnp.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, VPSDE):
        return sde.inverse_integrated_beta(jnp.log1p(s**2))
    return sde.inverse_integrated_beta(2.0 * jnp.arcsinh(0.5 * s))


def edm_schedule(i: Array, n: Array, s_max: Array, s_min: Array, rho: Array) -> Array:
    r"""The EDM noise level (Karras et al. 2022, eq. 5) of step ``i`` of ``n``,

    .. math:: s_i = \big(s_{\max}^{1/\rho} + \tfrac{i}{n-1}(s_{\min}^{1/\rho} -
              s_{\max}^{1/\rho})\big)^\rho, \qquad i < n,

    and :math:`s_i = 0` for :math:`i \ge n`."""
    frac = i / jnp.maximum(n - 1, 1)
    hi, lo = s_max ** (1.0 / rho), s_min ** (1.0 / rho)
    return jnp.where(i < n, (hi + frac * (lo - hi)) ** rho, 0.0)


def denoiser(sde: SDE, score_fn: ScoreFn, y: Array, s: Array) -> Array:
    r""":math:`D(y; s) = y + s^2\alpha\,\nabla_x\log p_t(\alpha y)` at :math:`t = t(s)`; ``y``
    ``[B, *event]``, ``s`` a scalar. One score evaluation."""
    t = jnp.full((y.shape[0],), time_of(sde, s))
    alpha = sde.marginal_coefs(t)[0]
    score = score_fn(batch_broadcast(alpha, y) * y, t)
    return y + batch_broadcast(s**2 * alpha, y) * score


def schedule_level(
    sde: SDE,
    schedule: str,
    i: Array,
    n: Array,
    eps: Array,
    rho: Array,
    s_max: Array | None = None,
) -> Array:
    r"""The noise level :math:`s_i` of step ``i`` of ``n`` under ``schedule`` (a key of
    :data:`SCHEDULES`); :math:`s_0 = s(T)`, :math:`s_{n-1} = s(\epsilon)`, :math:`s_i = 0` for
    :math:`i \ge n`. Between :math:`s_{\text{hi}} = s(T)` and :math:`s_{\text{lo}} = s(\epsilon)`
    (times :math:`t_{\text{hi}} = T`, :math:`t_{\text{lo}} = \epsilon`), with :math:`u = i/(n-1)`:

    - ``edm``: :func:`edm_schedule` with exponent ``rho``;
    - ``logsnr``: uniform in :math:`\lambda = -\log s` (half the log-SNR), DPM-Solver's
      recommended steps: :math:`s_i = s_{\text{hi}}^{1-u}\,s_{\text{lo}}^{u}`;
    - ``time_uniform``: :math:`s_i = s(t_{\text{hi}} + u(t_{\text{lo}} - t_{\text{hi}}))`;
    - ``time_quadratic``: :math:`s_i = s(t_i)`, :math:`\sqrt{t_i}` uniform between
      :math:`\sqrt{t_{\text{hi}}}` and :math:`\sqrt{t_{\text{lo}}}` (DPM-Solver's
      ``time_quadratic``).

    With ``s_max`` (a level strictly between :math:`s(\epsilon)` and :math:`s(T)`), :math:`s_0`
    stays :math:`s(T)`, where the prior sample is, and the other :math:`n - 1` levels follow the
    schedule from :math:`s_{\text{hi}} = s_1 = s_{\max}` (:math:`t_{\text{hi}} = t(s_{\max})`) to
    :math:`s(\epsilon)`: the first step jumps to :math:`s_{\max}`.
    """
    s_top = prior_level(sde)
    s_lo = noise_to_signal(sde, eps)
    if s_max is None:
        return _levels(sde, schedule, i, n, (sde.T, s_top), (eps, s_lo), rho)
    inner = _levels(sde, schedule, i - 1, n - 1, (time_of(sde, s_max), s_max), (eps, s_lo), rho)
    return jnp.where(i == 0, s_top, inner)


def _levels(sde, schedule, i, n, hi, lo, rho):
    """:func:`schedule_level`'s schedules from ``hi = (t, s)`` to ``lo = (t, s)``."""
    (t_hi, s_hi), (t_lo, s_lo) = hi, lo
    if schedule == "edm":
        return edm_schedule(i, n, s_hi, s_lo, rho)
    u = i / jnp.maximum(n - 1, 1)
    if schedule == "logsnr":
        level = jnp.exp(jnp.log(s_hi) + u * (jnp.log(s_lo) - jnp.log(s_hi)))
    elif schedule == "time_uniform":
        level = noise_to_signal(sde, t_hi + u * (t_lo - t_hi))
    else:
        root = jnp.sqrt(t_hi) + u * (jnp.sqrt(t_lo) - jnp.sqrt(t_hi))
        level = noise_to_signal(sde, root**2)
    return jnp.where(i < n, level, 0.0)


class Grid:
    r"""The levels of one sampler call (traced), from :func:`check_levels`'s ``args``:
    ``level(i)`` is :math:`s_i`; ``n`` the number of levels (a Python int when they are given as
    ``levels``, whose length is static, so that the loops over them can be differentiated);
    ``s_top`` is :math:`s(T)`, the prior's level, and ``s_min`` the last nonzero one."""

    def __init__(self, sde, schedule, args):
        n, eps, rho, s_max, levels, queries = args
        self.sde, self.schedule, self.eps, self.rho, self.s_max = sde, schedule, eps, rho, s_max
        self.levels, self.queries = levels, queries
        self.s_top = prior_level(sde)
        if levels is None:
            self.n, self.s_min = n, noise_to_signal(sde, eps)
        else:
            self.n, self.s_min = levels.shape[0], levels[-1]

    def level(self, i):
        if self.levels is not None:
            return jnp.where(i < self.n, self.levels[jnp.minimum(i, self.n - 1)], 0.0)
        return schedule_level(self.sde, self.schedule, i, self.n, self.eps, self.rho, self.s_max)

    def loop(self, lower, upper, body, init):
        """``jax.lax.fori_loop`` over the steps; unrolled when the levels are given (their count is
        static, at most :data:`UNROLL_MAX`), since XLA:CPU runs the gradients of convolutions
        inside a loop many times slower than unrolled (jax-ml/jax#12868), and the gradient in the
        given levels is what :func:`~sde_jax.sampling.optimize_levels` follows."""
        unroll = True if self.levels is not None and self.n <= UNROLL_MAX else None
        return jax.lax.fori_loop(lower, upper, body, init, unroll=unroll)

    def query(self, i, s):
        r"""The level at which step ``i``, at level ``s``, evaluates the denoiser: ``s``, or
        ``s`` times :math:`q_i/s_i` with ``query_levels``."""
        if self.queries is None:
            return s
        i = jnp.minimum(i, self.n - 1)
        return s * (self.queries[i] / self.levels[i])

    def count(self, nfe) -> Array:
        """``nfe`` (an expression in ``n``) as an int32 array."""
        return jnp.asarray(nfe, jnp.int32)


def scaled_prior_sample(
    sde: SDE, key: Array, shape: tuple[int, ...], z: Array | None = None
) -> Array:
    r"""A prior sample in the scaled variable, :math:`y = x_T/\alpha(T)`: a draw with ``key``, or
    the given :math:`x_T` ``z`` (the few-step samplers' ``z`` option)."""
    alpha_t = sde.marginal_coefs(jnp.full((shape[0],), sde.T))[0]
    x = sde.prior_sampling(key, shape) if z is None else z
    return x / batch_broadcast(alpha_t, x)


def check_z(z, shape: tuple[int, ...]) -> Array | None:
    """The few-step samplers' ``z`` as a float32 array of the batch's shape (or None)."""
    if z is None:
        return None
    if tuple(jnp.shape(z)) != tuple(shape):
        raise ValueError(f"`z` must have shape {tuple(shape)}; got {tuple(jnp.shape(z))}.")
    return jnp.asarray(z, jnp.float32)


def jump_to_s_max(sde: SDE, score_fn: ScoreFn, grid: Grid, y: Array) -> tuple[Array, int]:
    r"""The step from the prior's level :math:`s_0 = s(T)` to :math:`s_1 = s_{\max}` when the
    grid has ``s_max`` (one score evaluation), and the index of the first step left to take.

    In :math:`u = 1/s` the ODE reads :math:`\mathrm{d}(y u)/\mathrm{d}u = D`, so
    :math:`y_1 = r y_0 + s_1 \int_{u_0}^{u_1} D\,\mathrm{d}u` with :math:`r = s_1/s_0`. The jump
    takes the midpoint rule, :math:`y_1 = r y_0 + (1 - r) D(\hat y; s_m)` at
    :math:`u_m = (u_0 + u_1)/2` (:math:`s_m \approx 2 s_{\max}`), :math:`\hat y = (s_m/s_0) y_0`:
    above the data's scale :math:`D` is nearly affine in :math:`u` along a path (exactly, for
    Gaussian data), where the midpoint rule is exact.
    """
    # Measured on the ring mixture with the exact score, D at s(T) is as good; but a network's
    # D = y - s eps_hat multiplies its noise-prediction error by s, about 150 at s(T) against
    # 2 s_max here (on the digits model the jump at s(T) left a bias that more steps did not remove).
    if grid.s_max is None:
        return y, 0
    ratio = grid.s_max / grid.s_top
    s_mid = 2.0 / (1.0 / grid.s_top + 1.0 / grid.s_max)
    y_hat = (s_mid / grid.s_top) * y
    return ratio * y + (1.0 - ratio) * denoiser(sde, score_fn, y_hat, s_mid), 1


def check_levels(sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels=None, *,
                 default_steps, default_schedule):  # fmt: skip
    """Checks the options every few-step sampler shares (on the host, before tracing); None
    selects ``default_steps``, ``default_schedule`` and :math:`\rho = 7`.

    Returns:
        ``(shape, schedule, args)``: the shape as a tuple, the schedule's name (static) and
        ``args = (num_steps, eps, rho, s_max, levels, query_levels)`` for :class:`Grid`, the
        numbers as float32 / int32 arrays (``s_max`` and the levels None or float32; with
        ``levels`` the first four None).
    """
    check_sde(sde)
    shape = check_shape(shape)
    if levels is not None:
        given = {"num_steps": num_steps, "rho": rho, "schedule": schedule, "eps": eps,
                 "s_max": s_max}  # fmt: skip
        clash = sorted(k for k, v in given.items() if v is not None)
        if clash:
            raise ValueError(
                f"`levels` sets every noise level; {clash} cannot be given with it (leave them "
                "None)."
            )
        levels = check_given_levels(sde, levels)
        queries = _check_query_levels(query_levels, levels)
        return shape, default_schedule, (None, None, None, None, levels, queries)
    if query_levels is not None:
        raise ValueError("`query_levels` needs `levels`: give both, or neither.")
    eps = check_eps(sde, eps)
    num_steps = check_int("num_steps", default_steps if num_steps is None else num_steps, 2)
    rho = check_positive("rho", 7.0 if rho is None else rho)
    schedule = check_choice("schedule", default_schedule if schedule is None else schedule,
                            SCHEDULES)  # fmt: skip
    args = (
        jnp.asarray(num_steps, jnp.int32),
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(rho, jnp.float32),
        _check_s_max(sde, s_max, eps, num_steps),
        None,
        None,
    )
    return shape, schedule, args


def check_given_levels(sde: SDE, levels) -> Array:
    r"""``levels`` as a float32 array ``[n]`` if it is a valid sequence of noise levels: 1-D,
    :math:`n \ge 2`, finite, strictly decreasing and positive, starting at :math:`s(T)` (relative
    tolerance 1e-4), where the prior sample is. Traced values (inside a transformation such as
    :func:`jax.grad`) are passed as they are: only concrete ones can be checked."""
    if isinstance(levels, jax.core.Tracer):
        return levels
    arr = np.asarray(levels, np.float64)
    with jax.ensure_compile_time_eval():
        s_top = float(prior_level(sde))
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"`levels` must be a 1-D sequence of at least 2 noise levels; got shape "
                         f"{arr.shape}.")  # fmt: skip
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0) and np.all(np.diff(arr) < 0)):
        raise ValueError("`levels` must be finite, positive and strictly decreasing.")
    if abs(arr[0] - s_top) > 1e-4 * s_top:
        raise ValueError(
            f"`levels` must start at the prior's level s(T) = {s_top:.6g}; got {arr[0]:.6g}."
        )
    return jnp.asarray(arr, jnp.float32)


def _check_query_levels(query_levels, levels):
    """``query_levels`` as a float32 array shaped like ``levels`` (or None): positive and finite."""
    if query_levels is None or isinstance(query_levels, jax.core.Tracer):
        return query_levels
    arr = np.asarray(query_levels, np.float64)
    if arr.shape != tuple(levels.shape):
        raise ValueError(
            f"`query_levels` must have the shape of `levels`, {tuple(levels.shape)}; got "
            f"{arr.shape}."
        )
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise ValueError("`query_levels` must be finite and positive.")
    return jnp.asarray(arr, jnp.float32)


def _check_s_max(sde, s_max, eps, num_steps):
    """``s_max`` as a float32 array (or None), checked against the SDE's range of levels."""
    if s_max is None:
        return None
    # Evaluated now even when called under jit (the program's jitted sampler): the SDE's
    # constants are Python numbers.
    with jax.ensure_compile_time_eval():
        s_top = float(prior_level(sde))
        s_min = float(noise_to_signal(sde, jnp.asarray(eps, jnp.float32)))
    if isinstance(s_max, bool) or not isinstance(s_max, int | float) or not s_min < s_max < s_top:
        raise ValueError(
            f"`s_max` must be None or a noise level strictly between s(eps) = {s_min:.4g} and "
            f"s(T) = {s_top:.4g}; got {s_max!r}."
        )
    if num_steps < 3:
        raise ValueError(
            f"`s_max` needs `num_steps` >= 3 (one step to s_max, then at least two levels of the "
            f"schedule); got num_steps={num_steps}."
        )
    return jnp.asarray(s_max, jnp.float32)
