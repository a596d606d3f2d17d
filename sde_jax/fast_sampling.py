r"""Few-step samplers: EDM Heun (deterministic and stochastic), DPM-Solver++ (2M and 3M), UniPC
and DDIM.

Every SDE of the paper has Gaussian marginals :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,n` with
:math:`(\alpha, \sigma)` = ``sde.marginal_coefs(t)`` (VE: :math:`\alpha = 1`; VP:
:math:`\sigma^2 = 1 - \alpha^2`; sub-VP: :math:`\sigma = 1 - \alpha^2`). In the scaled variable
:math:`y = x/\alpha` every one of them is a VE process whose noise level is the noise-to-signal
ratio :math:`s(t) = \sigma(t)/\alpha(t)`, which increases strictly in :math:`t`, and the
probability-flow ODE becomes (Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models", eq. 4 with their :math:`s(t) = 1`)

.. math:: \frac{\mathrm{d}y}{\mathrm{d}s} = \frac{y - D(y; s)}{s}, \qquad
          D(y; s) = \mathbb{E}[x_0 \mid x_t = \alpha y] = y + s^2\,\alpha\,\nabla_x\log p_t(\alpha y),

with :math:`t = t(s)` the inverse of :math:`s(t)` (closed form for each SDE, :func:`time_of`). The
samplers here work on :math:`(y, s)` with the denoiser :math:`D` built from ``score_fn``, so each is
defined for VE, VP and sub-VP alike; only :math:`s(t)` and its inverse depend on the SDE.

By default (``schedule="edm"``) noise levels follow the EDM schedule (Karras et al. 2022, eq. 5)

.. math:: s_i = \big(s_{\max}^{1/\rho} + \tfrac{i}{n-1}(s_{\min}^{1/\rho} - s_{\max}^{1/\rho})\big)^\rho,
          \quad i = 0, \dots, n - 1, \qquad s_n = 0,

with :math:`s_{\max} = s(T)` and :math:`s_{\min} = s(\epsilon)`; ``num_steps`` :math:`= n` steps
go from :math:`s_0` to :math:`s_n = 0`. The last step, from :math:`s_{\min}` to 0, is
:math:`y \leftarrow D(y; s_{\min})`, Tweedie's denoising step (the ``denoise`` of the PC and ODE
samplers), for every method. Since :math:`\alpha(0) = 1`, the result is a sample of :math:`x_0`.
Every method also takes the other schedules of :func:`schedule_level` (``logsnr``: uniform in
:math:`\lambda = -\log s`, the default of the DPM-Solver++(3M) and UniPC samplers;
``time_uniform``; ``time_quadratic``).

``s_max`` starts the schedule below the prior's level: the first step jumps from :math:`s(T)` to
:math:`s_{\max}` and the other :math:`n - 1` levels span :math:`[s_{\min}, s_{\max}]`. Above the
scale of the data the marginals are nearly Gaussian and :math:`D` nearly constant, so that one
step is accurate and the rest of the budget goes where the data's structure forms. Song & Ermon
(2020, "Improved techniques for training score-based generative models", technique 1) put the
largest useful noise level near the largest distance between two data points; for the paper's
SDEs :math:`s(T)` is far above it (VP: about 150 for data in :math:`[-1, 1]`).

Methods and their score evaluations (NFE) per sample:

- :func:`edm_heun_sample`: Heun's second-order method on the ODE (Karras et al. 2022,
  Algorithm 1); :math:`2n - 1` NFE (the last step is an Euler step).
- :func:`edm_stochastic_sample`: the same with "churn", noise that raises :math:`s_i` to
  :math:`\hat s_i = (1 + \gamma_i) s_i` before each step (Algorithm 2); :math:`2n - 1` NFE.
- :func:`dpm_solver_2m_sample`: DPM-Solver++(2M), the second-order multistep solver of the
  data-prediction ODE (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of diffusion
  probabilistic models", Algorithm 2), first order in its first and last steps; :math:`n` NFE.
- :func:`dpm_solver_3m_sample`: multistep DPM-Solver++ of order up to 3 (Lu et al. 2022);
  :math:`n` NFE.
- :func:`unipc_sample`: UniPC (Zhao et al. 2023), the bh2 predictor-corrector whose corrector
  reuses the next step's evaluation; :math:`n` NFE.
- :func:`ddim_sample`: DDIM (Song, Meng & Ermon 2021, "Denoising diffusion implicit models", eq. 12)
  with stochasticity :math:`\eta` (0: deterministic, the Euler step of the ODE above; 1: the
  ancestral step of the posterior :math:`q(x_{t'} \mid x_t, x_0)`); :math:`n` NFE.

Each sampler is one compiled program (jitted with the score function, the shape and the schedule's
name static); the number of steps, :math:`\epsilon` and the method's constants are traced, so a new
step budget does not compile again. The loop over steps is a :func:`jax.lax.fori_loop` on the device.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from sde_jax.sde import SDE, VESDE, VPSDE, ScoreFn, SubVPSDE, batch_broadcast

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# The (alpha, s) parametrisation of each SDE.


def _check_sde(sde) -> None:
    if not isinstance(sde, VESDE | VPSDE | SubVPSDE):
        raise ValueError(f"`sde` must be a VESDE, VPSDE or SubVPSDE; got {type(sde).__name__}.")


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
    :math:`\alpha(t) = e^{-L(t)/2}` with :math:`L(t) = \beta_0 t + \tfrac12(\beta_1 - \beta_0)t^2`,
    so :math:`t = 2L / (\beta_0 + \sqrt{\beta_0^2 + 2(\beta_1 - \beta_0)L})` (the root of the
    quadratic, written without cancellation), where :math:`L = \log(1 + s^2)` for VP
    (:math:`s^2 = \alpha^{-2} - 1`) and :math:`L = 2\operatorname{asinh}(s/2)` for sub-VP
    (:math:`s = \alpha^{-1} - \alpha`).
    """
    if isinstance(sde, VESDE):
        return jnp.log(s / sde.sigma_min) / jnp.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, VPSDE):
        big_l = jnp.log1p(s**2)
    else:
        big_l = 2.0 * jnp.arcsinh(0.5 * s)
    b0, db = sde.beta_min, sde.beta_max - sde.beta_min
    return 2.0 * big_l / (b0 + jnp.sqrt(b0**2 + 2.0 * db * big_l))


def edm_schedule(i: Array, n: Array, s_max: Array, s_min: Array, rho: Array) -> Array:
    r"""The EDM noise level :math:`s_i` (Karras et al. 2022, eq. 5) for step ``i`` of ``n``;
    :math:`s_0 = s_{\max}`, :math:`s_{n-1} = s_{\min}` and :math:`s_i = 0` for :math:`i \ge n`."""
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


SCHEDULES = ("edm", "logsnr", "time_uniform", "time_quadratic")


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

    ``rho`` is read by ``edm`` only.
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


class _Grid:
    r"""The schedule of one call: ``level(i)`` is :math:`s_i`; ``s_top`` = :math:`s(T)`, the prior's
    level, and ``s_min`` = :math:`s(\epsilon)`, the last nonzero one."""

    def __init__(self, sde, num_steps, eps, rho, schedule="edm", s_max=None):
        self.sde, self.n, self.eps, self.rho, self.schedule = sde, num_steps, eps, rho, schedule
        self.s_max = s_max
        self.s_top = prior_level(sde)
        self.s_min = noise_to_signal(sde, eps)

    def level(self, i):
        return schedule_level(self.sde, self.schedule, i, self.n, self.eps, self.rho, self.s_max)


def _prior(sde: SDE, key: Array, shape) -> Array:
    """A prior sample, in the scaled variable :math:`y = x_T/\\alpha(T)`."""
    alpha_t = sde.marginal_coefs(jnp.full((shape[0],), sde.T))[0]
    x = sde.prior_sampling(key, shape)
    return x / batch_broadcast(alpha_t, x)


def _jump(sde: SDE, score_fn: ScoreFn, grid: _Grid, y: Array) -> tuple[Array, int]:
    r"""The step from the prior's level :math:`s_0 = s(T)` to :math:`s_1 = s_{\max}` when the
    grid has ``s_max`` (one score evaluation), and the index of the first step left to take.

    In :math:`u = 1/s` the ODE reads :math:`\mathrm{d}(y u)/\mathrm{d}u = D`, so
    :math:`y_1 = r y_0 + s_1 \int_{u_0}^{u_1} D\,\mathrm{d}u` with :math:`r = s_1/s_0`. The jump
    takes the midpoint rule, :math:`y_1 = r y_0 + (1 - r) D(\hat y; s_m)` at
    :math:`u_m = (u_0 + u_1)/2` (:math:`s_m \approx 2 s_{\max}`), :math:`\hat y = (s_m/s_0) y_0`:
    above the data's scale :math:`D` is nearly affine in :math:`u` along a path (exactly, for
    Gaussian data), where the midpoint rule is exact. Measured on the ring mixture with the exact
    score, :math:`D` at :math:`s(T)` is as good; but a network's :math:`D = y - s\hat\epsilon`
    multiplies its noise-prediction error by :math:`s`, about 150 at :math:`s(T)` against
    :math:`2 s_{\max}` here (on the digits model the jump at :math:`s(T)` left a bias that more
    steps did not remove).
    """
    if grid.s_max is None:
        return y, 0
    ratio = grid.s_max / grid.s_top
    s_mid = 2.0 / (1.0 / grid.s_top + 1.0 / grid.s_max)
    y_hat = (s_mid / grid.s_top) * y
    return ratio * y + (1.0 - ratio) * denoiser(sde, score_fn, y_hat, s_mid), 1


# ---------------------------------------------------------------------------------------------
# Argument checks (on the host, before tracing).


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"`num_steps` must be an int >= 2; got {num_steps!r}.")
    return num_steps


def _check_rho(rho) -> float:
    if not rho > 0:
        raise ValueError(f"`rho` must be > 0; got {rho!r}.")
    return float(rho)


def _check_schedule(schedule) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}; got {schedule!r}.")
    return schedule


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


def _prepare(sde, shape, eps, num_steps, rho, s_max=None):
    from sde_jax.sampling import _check_eps, _check_shape

    _check_sde(sde)
    eps = _check_eps(sde, eps)
    num_steps = _check_num_steps(num_steps)
    return (
        _check_shape(shape),
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(num_steps, jnp.int32),
        jnp.asarray(_check_rho(rho), jnp.float32),
        _check_s_max(sde, s_max, eps, num_steps),
    )


# ---------------------------------------------------------------------------------------------
# EDM Heun.


def edm_heun_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    rho: float = 7.0,
    schedule: str = "edm",
    eps: float | None = None,
    s_max: float | None = None,
) -> tuple[Array, Array]:
    r"""Deterministic sampling with Heun's method on the EDM schedule (Karras et al. 2022,
    Algorithm 1), for VE, VP and sub-VP.

    Step :math:`i` moves from :math:`s_i` to :math:`s_{i+1}` with the slope
    :math:`d_i = (y - D(y; s_i))/s_i`, then corrects with the average of :math:`d_i` and the slope
    at the new point, except for the last step (to :math:`s = 0`), which is an Euler step.

    Args:
        key: PRNG key for the prior sample.
        score_fn: ``score_fn(x, t) -> score``.
        sde: a VESDE, VPSDE or SubVPSDE.
        shape: ``(B, *event)``.
        num_steps: :math:`n \ge 2` steps; :math:`2n - 1` score evaluations.
        rho: the schedule's exponent :math:`\rho` (7 in EDM; larger puts more steps at low noise).
        schedule: the noise levels, a key of :data:`SCHEDULES` (:func:`schedule_level`).
        eps: the smallest nonzero time, :math:`s_{\min} = s(\epsilon)`; defaults to
            ``sde.sampling_eps``.
        s_max: the first level below the prior's :math:`s(T)`, or None (default) for none: the
            first step jumps from :math:`s(T)` to it and the schedule's other levels span
            :math:`[s(\epsilon), s_{\max}]` (:func:`schedule_level`; needs ``num_steps >= 3``).

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = 2 * num_steps - 1``, or ``2 * num_steps - 2``
        with ``s_max``, whose jump is one evaluation (int32).
    """
    shape, eps, n, rho, s_max = _prepare(sde, shape, eps, num_steps, rho, s_max)
    zero = jnp.zeros((), jnp.float32)
    return _edm_sample(
        key,
        sde,
        n,
        eps,
        rho,
        s_max,
        zero,
        zero,
        zero,
        zero,
        score_fn=score_fn,
        shape=shape,
        churn=False,
        schedule=_check_schedule(schedule),
    )


def edm_stochastic_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    rho: float = 7.0,
    schedule: str = "edm",
    s_churn: float = 10.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    eps: float | None = None,
    s_max: float | None = None,
) -> tuple[Array, Array]:
    r"""Stochastic sampling of Karras et al. 2022 (Algorithm 2): Heun steps with churn.

    Before step :math:`i` the noise level is raised to :math:`\hat s_i = (1 + \gamma_i)s_i` by
    adding :math:`\sqrt{\hat s_i^2 - s_i^2}\,S_\text{noise}\,z`, with
    :math:`\gamma_i = \min(S_\text{churn}/n, \sqrt2 - 1)` where
    :math:`S_{t\min} \le s_i \le S_{t\max}` and 0 elsewhere; then a Heun step goes from
    :math:`\hat s_i` to :math:`s_{i+1}`. :math:`\hat s_i` is capped at :math:`s(T)` so that the
    score is never asked for beyond the time range it was trained on (this only affects the first
    step).

    Args:
        key: PRNG key (prior sample and churn noise).
        score_fn: ``score_fn(x, t) -> score``.
        sde: a VESDE, VPSDE or SubVPSDE.
        shape: ``(B, *event)``.
        num_steps: :math:`n \ge 2` steps; :math:`2n - 1` score evaluations.
        rho: the schedule's exponent.
        s_churn: :math:`S_\text{churn} \ge 0`, the total amount of churn (0 is
            :func:`edm_heun_sample`).
        s_tmin: :math:`S_{t\min}`, the lowest noise level (in :math:`s`) that gets churn.
        s_tmax: :math:`S_{t\max}`, the highest.
        s_noise: :math:`S_\text{noise}`, the scale of the added noise (slightly above 1 in EDM to
            offset a denoiser's bias; 1 for an exact score).
        schedule: the noise levels, a key of :data:`SCHEDULES` (:func:`schedule_level`).
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.
        s_max: the first level below the prior's :math:`s(T)`, or None (default) for none: the
            first step jumps from :math:`s(T)` to it and the schedule's other levels span
            :math:`[s(\epsilon), s_{\max}]` (:func:`schedule_level`; needs ``num_steps >= 3``).

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = 2 * num_steps - 1``, or ``2 * num_steps - 2``
        with ``s_max``, whose jump is one evaluation (int32).
    """
    shape, eps, n, rho, s_max = _prepare(sde, shape, eps, num_steps, rho, s_max)
    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not v >= 0:
            raise ValueError(f"`{name}` must be >= 0; got {v!r}.")
    if not s_tmax >= s_tmin:
        raise ValueError(f"`s_tmax` must be >= `s_tmin` ({s_tmin}); got {s_tmax!r}.")
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return _edm_sample(
        key,
        sde,
        n,
        eps,
        rho,
        s_max,
        f32(s_churn),
        f32(s_tmin),
        f32(s_tmax),
        f32(s_noise),
        score_fn=score_fn,
        shape=shape,
        churn=True,
        schedule=_check_schedule(schedule),
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "churn", "schedule"))
def _edm_sample(
    key,
    sde,
    n,
    eps,
    rho,
    s_max,
    s_churn,
    s_tmin,
    s_tmax,
    s_noise,
    *,
    score_fn,
    shape,
    churn,
    schedule,
):
    k_prior, k_loop = jax.random.split(key)
    grid = _Grid(sde, n, eps, rho, schedule, s_max)
    y = _prior(sde, k_prior, shape)
    denoise = functools.partial(denoiser, sde, score_fn)
    gamma_max = jnp.minimum(s_churn / n.astype(jnp.float32), math.sqrt(2.0) - 1.0)

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
        d = (y - denoise(y, s)) / s
        y_euler = y + (s_next - s) * d
        d_next = (y_euler - denoise(y_euler, s_next)) / s_next
        return y + (s_next - s) * 0.5 * (d + d_next)

    # With s_max, one evaluation (not Heun's two) jumps to it; no churn at s_0 = s(T), the cap.
    y, first = _jump(sde, score_fn, grid, y)
    y = jax.lax.fori_loop(first, n - 1, heun_step, y)
    # The last step, to s = 0, is Euler's: y + (0 - s) (y - D) / s = D.
    y, s = raise_noise(n - 1, y, grid.s_min)
    return denoise(y, s), (2 * n - 1 - first).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# DPM-Solver++(2M).


def dpm_solver_2m_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    rho: float = 7.0,
    schedule: str = "edm",
    eps: float | None = None,
    s_max: float | None = None,
) -> tuple[Array, Array]:
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the EDM schedule, for VE, VP and sub-VP.

    With :math:`\lambda = -\log s` (half the log-SNR) and :math:`h_i = \lambda_{i+1} - \lambda_i`,
    the exact solution of the data-prediction ODE with :math:`D` held at a linear extrapolation is

    .. math:: y_{i+1} = \tfrac{s_{i+1}}{s_i}\,y_i + \big(1 - \tfrac{s_{i+1}}{s_i}\big)\,
              \big[(1 + \tfrac{1}{2r_i})D_i - \tfrac{1}{2r_i}D_{i-1}\big],
              \qquad r_i = h_{i-1}/h_i,

    (:math:`x = \alpha y` turns this into the paper's form), where :math:`D_i = D(y_i; s_i)`. The
    first step has no :math:`D_{i-1}` and the last (to :math:`s = 0`, :math:`h = \infty`) no finite
    :math:`r`, so both are first order (:math:`D_i` alone), as in the reference algorithm.

    Args:
        key: PRNG key for the prior sample.
        score_fn: ``score_fn(x, t) -> score``.
        sde: a VESDE, VPSDE or SubVPSDE.
        shape: ``(B, *event)``.
        num_steps: :math:`n \ge 2` steps, one score evaluation each.
        rho: the schedule's exponent (large :math:`\rho` approaches the paper's uniform-in-log-SNR
            steps).
        schedule: the noise levels, a key of :data:`SCHEDULES` (:func:`schedule_level`).
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.
        s_max: the first level below the prior's :math:`s(T)`, or None (default) for none: the
            first step jumps from :math:`s(T)` to it and the schedule's other levels span
            :math:`[s(\epsilon), s_{\max}]` (:func:`schedule_level`; needs ``num_steps >= 3``).

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = num_steps`` (int32).
    """
    shape, eps, n, rho, s_max = _prepare(sde, shape, eps, num_steps, rho, s_max)
    return _dpm_solver_2m_sample(
        key,
        sde,
        n,
        eps,
        rho,
        s_max,
        score_fn=score_fn,
        shape=shape,
        schedule=_check_schedule(schedule),
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "schedule"))
def _dpm_solver_2m_sample(key, sde, n, eps, rho, s_max, *, score_fn, shape, schedule):
    grid = _Grid(sde, n, eps, rho, schedule, s_max)
    y = _prior(sde, key, shape)

    def step(i, carry):
        y, d_prev, h_prev = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        d = denoiser(sde, score_fn, y, s)
        h = jnp.log(s / s_next)
        # r = h_prev / h; the first step (h_prev = 0 marks it) is first order.
        half_inv_r = jnp.where(h_prev == 0, 0.0, 0.5 * h / jnp.where(h_prev == 0, 1.0, h_prev))
        d_ext = (1.0 + half_inv_r) * d - half_inv_r * d_prev
        ratio = s_next / s
        return ratio * y + (1.0 - ratio) * d_ext, d, h

    y, first = _jump(sde, score_fn, grid, y)
    carry = (y, jnp.zeros_like(y), jnp.zeros((), y.dtype))
    y, _, _ = jax.lax.fori_loop(first, n - 1, step, carry)
    return denoiser(sde, score_fn, y, grid.s_min), n.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# DPM-Solver++(3M) and UniPC: multistep solvers of order up to 3.
#
# Both keep the denoiser values D_i, D_{i-1}, D_{i-2} and the log-ratios h_{i-1}, h_{i-2} of the
# last steps; an order is usable at step i only once that many values exist, hence the traced
# order k_i = min(order, i + 1) (and, with lower_order_final, min(k_i, n - i)), and each update's
# coefficients are scalars picked by jnp.where, so no unused (possibly 0/0) term touches the
# samples.


def _step_order(i, first, n, order, lower_order_final):
    """The order of step ``i`` when the multistep history starts at step ``first``."""
    k = jnp.minimum(order, i - first + 1)
    return jnp.where(lower_order_final, jnp.minimum(k, n - i), k)


def _safe_div(a, b):
    """a / b, and 0 where b == 0 (steps that have no history yet)."""
    return jnp.where(b == 0, 0.0, a / jnp.where(b == 0, 1.0, b))


def _dpm_3m_coefs(h, h1, h2, k):
    r"""The coefficients :math:`(c_1, c_2)` of :math:`D_i - D_{i-1}` and :math:`D_{i-1} - D_{i-2}`
    in a DPM-Solver++ step of order ``k``: :math:`y' = r y + (1 - r) D_i + c_1 (D_i - D_{i-1}) +
    c_2 (D_{i-1} - D_{i-2})`, :math:`r = e^{-h}`."""
    r0, r1 = h1 / h, h2 / h
    phi_2 = jnp.expm1(-h) / h + 1.0
    phi_3 = phi_2 / h - 0.5
    # Order 2 (the 2M update): (1 - r) / (2 r0) on D_i - D_{i-1}.
    c1_2 = _safe_div(-0.5 * jnp.expm1(-h), r0)
    # Order 3: phi_2 D1 - phi_3 D2 with D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),
    # D2 = (D1_0 - D1_1)/(r0 + r1), D1_0 = (D_i - D_{i-1})/r0, D1_1 = (D_{i-1} - D_{i-2})/r1.
    c1_3 = _safe_div(phi_2 * (1.0 + _safe_div(r0, r0 + r1)) - _safe_div(phi_3, r0 + r1), r0)
    c2_3 = _safe_div(_safe_div(phi_3 - phi_2 * r0, r0 + r1), r1)
    c1 = jnp.select([k == 2, k == 3], [c1_2, c1_3], 0.0)
    c2 = jnp.where(k == 3, c2_3, 0.0)
    return c1, c2


def _unipc_b(h):
    r"""UniPC's :math:`b_1, b_2, b_3` for the data prediction with :math:`B(h) = e^{-h} - 1`
    (the bh2 variant): :math:`b_j = j!\,\varphi_{j+1}(-h)/B(h)`, with :math:`\varphi_1(z) =
    (e^z - 1)/z` and :math:`\varphi_{j+1}(z) = (\varphi_j(z) - 1/j!)/z`."""
    hh = -h
    big_b = jnp.expm1(hh)
    g1 = big_b / hh - 1.0
    g2 = g1 / hh - 0.5
    g3 = g2 / hh - 1.0 / 6.0
    return g1 / big_b, 2.0 * g2 / big_b, 6.0 * g3 / big_b


def _solve2(a11, a12, a21, a22, b1, b2):
    det = a11 * a22 - a12 * a21
    return _safe_div(b1 * a22 - a12 * b2, det), _safe_div(a11 * b2 - a21 * b1, det)


def _unipc_coefs(h, h1, h2, k):
    r"""UniPC-:math:`k` (bh2) coefficients for the differences :math:`D_{i-1} - D_i`,
    :math:`D_{i-2} - D_i` (predictor: ``p1, p2``; corrector: ``q1, q2``) and
    :math:`D_{i+1} - D_i` (corrector: ``q0``), each multiplying :math:`(1 - r)`.

    With :math:`r_1 = -h_{i-1}/h` and :math:`r_2 = -(h_{i-1} + h_{i-2})/h` (that is,
    :math:`r_j = (\lambda_{i-j} - \lambda_i)/h`) the relative positions of the past values and
    :math:`r = 1` the new one, the predictor of order :math:`k` solves
    :math:`\sum_j a_j r_j^{m-1} = b_m` over the :math:`k - 1` past values (:math:`m < k`; order 2
    takes :math:`a = 1/2`, as UniPC does), and the corrector the same system with the new value as
    well (:math:`m \le k`; order 1 takes :math:`1/2`); the weight of a difference is
    :math:`a_j / r_j`.
    """
    b1, b2, b3 = _unipc_b(h)
    rk1, rk2 = -h1 / h, -(h1 + h2) / h
    # Predictor.
    p1_2 = _safe_div(0.5, rk1)
    a1, a2 = _solve2(1.0, 1.0, rk1, rk2, b1, b2)
    p1 = jnp.select([k == 2, k == 3], [p1_2, _safe_div(a1, rk1)], 0.0)
    p2 = jnp.where(k == 3, _safe_div(a2, rk2), 0.0)
    # Corrector, order 2: [[1, 1], [rk1, 1]] (a1, a0) = (b1, b2).
    c1_2, c0_2 = _solve2(1.0, 1.0, rk1, 1.0, b1, b2)
    # Order 3: [[1, 1, 1], [rk1, rk2, 1], [rk1^2, rk2^2, 1]] (a1, a2, a0) = (b1, b2, b3);
    # subtracting the first row from the others leaves two equations in (a1, a2), and
    # a0 = b1 - a1 - a2.
    c1_3, c2_3 = _solve2(rk1 - 1.0, rk2 - 1.0, rk1**2 - 1.0, rk2**2 - 1.0, b2 - b1, b3 - b1)
    c0_3 = b1 - c1_3 - c2_3
    q0 = jnp.select([k == 1, k == 2, k == 3], [0.5, c0_2, c0_3])
    q1 = jnp.select([k == 2, k == 3], [_safe_div(c1_2, rk1), _safe_div(c1_3, rk1)], 0.0)
    q2 = jnp.where(k == 3, _safe_div(c2_3, rk2), 0.0)
    return (p1, p2), (q0, q1, q2)


def _check_order(order) -> int:
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"`order` must be 1, 2 or 3; got {order!r}.")
    return order


def dpm_solver_3m_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    order: int = 3,
    lower_order_final: bool = True,
    rho: float = 7.0,
    schedule: str = "logsnr",
    eps: float | None = None,
    s_max: float | None = None,
) -> tuple[Array, Array]:
    r"""Multistep DPM-Solver++ of order up to 3 (Lu et al. 2022, "DPM-Solver++", the multistep
    third-order update), for VE, VP and sub-VP.

    With :math:`D_i = D(y_i; s_i)`, :math:`h_i = \log(s_i/s_{i+1})`, :math:`r = e^{-h_i}`,
    :math:`r_0 = h_{i-1}/h_i`, :math:`r_1 = h_{i-2}/h_i`, the step of order 3 is

    .. math:: y_{i+1} = r\,y_i + (1 - r) D_i + \varphi_2 D^{(1)} - \varphi_3 D^{(2)},

    :math:`\varphi_2 = (e^{-h} - 1)/h + 1`, :math:`\varphi_3 = \varphi_2/h - 1/2`,
    :math:`D^{(1)}_0 = (D_i - D_{i-1})/r_0`, :math:`D^{(1)}_1 = (D_{i-1} - D_{i-2})/r_1`,
    :math:`D^{(1)} = D^{(1)}_0 + \tfrac{r_0}{r_0 + r_1}(D^{(1)}_0 - D^{(1)}_1)`,
    :math:`D^{(2)} = (D^{(1)}_0 - D^{(1)}_1)/(r_0 + r_1)`; order 2 is
    :func:`dpm_solver_2m_sample`'s update and order 1 DDIM's. Step :math:`i` (from 0) uses order
    :math:`\min(\text{order}, i + 1)`, and with ``lower_order_final`` also at most :math:`n - i`
    (the last steps before the denoising step are of lower order, which the reference solver
    recommends for few steps). The last step, to :math:`s = 0`, is the denoising step
    :math:`y \leftarrow D(y; s_{\min})`.

    Args:
        key: PRNG key for the prior sample.
        score_fn: ``score_fn(x, t) -> score``.
        sde: a VESDE, VPSDE or SubVPSDE.
        shape: ``(B, *event)``.
        num_steps: :math:`n \ge 2` steps, one score evaluation each.
        order: 1, 2 or 3.
        lower_order_final: lower the order of the final steps (above).
        rho: the exponent of the ``edm`` schedule.
        schedule: the noise levels, a key of :data:`SCHEDULES` (default ``logsnr``, the
            reference solver's).
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.
        s_max: the first level below the prior's :math:`s(T)`, or None (default) for none: the
            first step jumps from :math:`s(T)` to it and the schedule's other levels span
            :math:`[s(\epsilon), s_{\max}]` (:func:`schedule_level`; needs ``num_steps >= 3``).

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = num_steps`` (int32).
    """
    return _multistep(
        key, score_fn, sde, shape, num_steps, order, lower_order_final, rho, schedule, eps, s_max,
        unipc=False,
    )  # fmt: skip


def unipc_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    order: int = 3,
    lower_order_final: bool = True,
    rho: float = 7.0,
    schedule: str = "logsnr",
    eps: float | None = None,
    s_max: float | None = None,
) -> tuple[Array, Array]:
    r"""UniPC (Zhao et al. 2023, "UniPC: A unified predictor-corrector framework for fast sampling
    of diffusion models"), the multistep UniP predictor with the UniC corrector, variant bh2
    (:math:`B(h) = e^{h} - 1`), data prediction, for VE, VP and sub-VP.

    Step :math:`i` predicts :math:`\tilde y_{i+1} = r y_i + (1 - r)\big(D_i + \sum_j a_j
    (D_{i-j} - D_i)/r_j\big)` from the past denoiser values (order :math:`k_i`), evaluates
    :math:`D_{i+1} = D(\tilde y_{i+1}; s_{i+1})` there, and corrects with it:
    :math:`y_{i+1} = r y_i + (1 - r)\big(D_i + \sum_j c_j (D_{i-j} - D_i)/r_j + c_0 (D_{i+1} -
    D_i)\big)` (coefficients from the linear systems of the paper's Algorithms 2 and 3; see
    :func:`_unipc_coefs`). :math:`D_{i+1}` is then reused by the next step, so the corrector costs
    no evaluation. The order is :math:`k_i = \min(\text{order}, i + 1)`, with
    ``lower_order_final`` at most :math:`n - i`. The last step, to :math:`s = 0`, returns the
    denoiser value at the last predicted point (uncorrected: a correction would need one more
    evaluation, as in the reference, whose last step has no corrector).

    Args:
        key: PRNG key for the prior sample.
        score_fn: ``score_fn(x, t) -> score``.
        sde: a VESDE, VPSDE or SubVPSDE.
        shape: ``(B, *event)``.
        num_steps: :math:`n \ge 2` steps, one score evaluation each.
        order: the predictor's order, 1, 2 or 3 (the corrector's is one more).
        lower_order_final: lower the order of the final steps.
        rho: the exponent of the ``edm`` schedule.
        schedule: the noise levels, a key of :data:`SCHEDULES` (default ``logsnr``).
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.
        s_max: the first level below the prior's :math:`s(T)`, or None (default) for none: the
            first step jumps from :math:`s(T)` to it and the schedule's other levels span
            :math:`[s(\epsilon), s_{\max}]` (:func:`schedule_level`; needs ``num_steps >= 3``).

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = num_steps`` (int32).
    """
    return _multistep(
        key, score_fn, sde, shape, num_steps, order, lower_order_final, rho, schedule, eps, s_max,
        unipc=True,
    )  # fmt: skip


def _multistep(
    key,
    score_fn,
    sde,
    shape,
    num_steps,
    order,
    lower_order_final,
    rho,
    schedule,
    eps,
    s_max,
    *,
    unipc,
):
    """Checks the arguments of :func:`dpm_solver_3m_sample` / :func:`unipc_sample` and runs
    their shared compiled loop."""
    shape, eps, n, rho, s_max = _prepare(sde, shape, eps, num_steps, rho, s_max)
    return _multistep_sample(
        key,
        sde,
        n,
        eps,
        rho,
        s_max,
        jnp.asarray(_check_order(order), jnp.int32),
        jnp.asarray(_check_bool("lower_order_final", lower_order_final)),
        score_fn=score_fn,
        shape=shape,
        schedule=_check_schedule(schedule),
        unipc=unipc,
    )


def _check_bool(name, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool; got {value!r}.")
    return value


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "schedule", "unipc"))
def _multistep_sample(
    key, sde, n, eps, rho, s_max, order, lower_order_final, *, score_fn, shape, schedule, unipc
):
    grid = _Grid(sde, n, eps, rho, schedule, s_max)
    denoise = functools.partial(denoiser, sde, score_fn)
    y, first = _jump(sde, score_fn, grid, _prior(sde, key, shape))
    zero, zeros = jnp.zeros((), y.dtype), jnp.zeros_like(y)

    def dpm_step(i, carry):
        # d1, d2: D at steps i-1, i-2; h1, h2: the log-ratios of those steps.
        y, d1, d2, h1, h2 = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        d0 = denoise(y, s)
        h = jnp.log(s / s_next)
        c1, c2 = _dpm_3m_coefs(h, h1, h2, _step_order(i, first, n, order, lower_order_final))
        ratio = s_next / s
        y_next = ratio * y + (1.0 - ratio) * d0 + c1 * (d0 - d1) + c2 * (d1 - d2)
        return y_next, d0, d1, h, h1

    def unipc_step(i, carry):
        # d0: D at step i (at its predicted point), d1, d2 at steps i-1, i-2.
        y, d0, d1, d2, h1, h2 = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        h = jnp.log(s / s_next)
        ratio = s_next / s
        (p1, p2), (q0, q1, q2) = _unipc_coefs(
            h, h1, h2, _step_order(i, first, n, order, lower_order_final)
        )
        base = ratio * y + (1.0 - ratio) * d0
        y_pred = base + (1.0 - ratio) * (p1 * (d1 - d0) + p2 * (d2 - d0))
        d_new = denoise(y_pred, s_next)
        y_next = base + (1.0 - ratio) * (q1 * (d1 - d0) + q2 * (d2 - d0) + q0 * (d_new - d0))
        return y_next, d_new, d0, d1, h, h1

    if not unipc:
        y, *_ = jax.lax.fori_loop(first, n - 1, dpm_step, (y, zeros, zeros, zero, zero))
        return denoise(y, grid.s_min), n.astype(jnp.int32)
    carry = (y, denoise(y, grid.level(first)), zeros, zeros, zero, zero)
    _, d, *_ = jax.lax.fori_loop(first, n - 1, unipc_step, carry)
    # d was evaluated at the last predicted point, at s_{n-1} = s_min: it is D(y; s_min) there.
    return d, n.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# DDIM.


def ddim_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    rho: float = 7.0,
    schedule: str = "edm",
    eps: float | None = None,
    s_max: float | None = None,
) -> tuple[Array, Array]:
    r"""DDIM (Song, Meng & Ermon 2021, eq. 12) on the EDM schedule, for VE, VP and sub-VP.

    From :math:`s` to :math:`s' < s`, with :math:`D = D(y; s)` and :math:`\hat n = (y - D)/s` the
    predicted noise,

    .. math:: y' = D + \sqrt{s'^2 - c^2}\,\hat n + c\,z, \qquad
              c = \eta\,s'\sqrt{1 - s'^2/s^2},

    which in :math:`x = \alpha y` is the paper's update with its :math:`\sigma_t(\eta)` (:math:`c`
    is the posterior standard deviation of :math:`q(y_{s'} \mid y_s, x_0)` times :math:`\eta`).
    :math:`\eta = 0` is the Euler step of the probability-flow ODE, :math:`\eta = 1` the ancestral
    (DDPM-like) step. The last step, to :math:`s' = 0`, returns :math:`D`.

    Args:
        key: PRNG key (prior sample and, for :math:`\eta > 0`, the step noise).
        score_fn: ``score_fn(x, t) -> score``.
        sde: a VESDE, VPSDE or SubVPSDE.
        shape: ``(B, *event)``.
        num_steps: :math:`n \ge 2` steps, one score evaluation each.
        eta: :math:`\eta \in [0, 1]`.
        rho: the schedule's exponent.
        schedule: the noise levels, a key of :data:`SCHEDULES` (:func:`schedule_level`).
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.
        s_max: the first level below the prior's :math:`s(T)`, or None (default) for none: the
            first step jumps from :math:`s(T)` to it and the schedule's other levels span
            :math:`[s(\epsilon), s_{\max}]` (:func:`schedule_level`; needs ``num_steps >= 3``).

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = num_steps`` (int32).
    """
    shape, eps, n, rho, s_max = _prepare(sde, shape, eps, num_steps, rho, s_max)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must lie in [0, 1]; got {eta!r}.")
    return _ddim_sample(
        key,
        sde,
        n,
        eps,
        rho,
        s_max,
        jnp.asarray(eta, jnp.float32),
        score_fn=score_fn,
        shape=shape,
        schedule=_check_schedule(schedule),
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "schedule"))
def _ddim_sample(key, sde, n, eps, rho, s_max, eta, *, score_fn, shape, schedule):
    k_prior, k_loop = jax.random.split(key)
    grid = _Grid(sde, n, eps, rho, schedule, s_max)
    y = _prior(sde, k_prior, shape)

    def step(i, y):
        s, s_next = grid.level(i), grid.level(i + 1)
        d = denoiser(sde, score_fn, y, s)
        kept = 1.0 - (s_next / s) ** 2
        c = eta * s_next * jnp.sqrt(kept)
        z = jax.random.normal(jax.random.fold_in(k_loop, i), y.shape, y.dtype)
        # sqrt(s'^2 - c^2), written so that eta = 0 gives s' exactly.
        return d + s_next * jnp.sqrt(1.0 - eta**2 * kept) * (y - d) / s + c * z

    y, first = _jump(sde, score_fn, grid, y)
    y = jax.lax.fori_loop(first, n - 1, step, y)
    return denoiser(sde, score_fn, y, grid.s_min), n.astype(jnp.int32)
