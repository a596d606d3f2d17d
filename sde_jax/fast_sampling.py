r"""Few-step samplers: EDM Heun (deterministic and stochastic), DPM-Solver++ (2M) and DDIM.

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

Noise levels follow the EDM schedule (Karras et al. 2022, eq. 5)

.. math:: s_i = \big(s_{\max}^{1/\rho} + \tfrac{i}{n-1}(s_{\min}^{1/\rho} - s_{\max}^{1/\rho})\big)^\rho,
          \quad i = 0, \dots, n - 1, \qquad s_n = 0,

with :math:`s_{\max} = s(T)` and :math:`s_{\min} = s(\epsilon)`; ``num_steps`` :math:`= n` steps
go from :math:`s_0` to :math:`s_n = 0`. The last step, from :math:`s_{\min}` to 0, is
:math:`y \leftarrow D(y; s_{\min})`, Tweedie's denoising step (the ``denoise`` of the PC and ODE
samplers), for every method. Since :math:`\alpha(0) = 1`, the result is a sample of :math:`x_0`.

Methods and their score evaluations (NFE) per sample:

- :func:`edm_heun_sample`: Heun's second-order method on the ODE (Karras et al. 2022,
  Algorithm 1); :math:`2n - 1` NFE (the last step is an Euler step).
- :func:`edm_stochastic_sample`: the same with "churn", noise that raises :math:`s_i` to
  :math:`\hat s_i = (1 + \gamma_i) s_i` before each step (Algorithm 2); :math:`2n - 1` NFE.
- :func:`dpm_solver_2m_sample`: DPM-Solver++(2M), the second-order multistep solver of the
  data-prediction ODE (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of diffusion
  probabilistic models", Algorithm 2), first order in its first and last steps; :math:`n` NFE.
- :func:`ddim_sample`: DDIM (Song, Meng & Ermon 2021, "Denoising diffusion implicit models", eq. 12)
  with stochasticity :math:`\eta` (0: deterministic, the Euler step of the ODE above; 1: the
  ancestral step of the posterior :math:`q(x_{t'} \mid x_t, x_0)`); :math:`n` NFE.

Each sampler is one compiled program (jitted with the score function and the shape static); the
number of steps, :math:`\epsilon` and the method's constants are traced, so a new step budget
does not compile again. The loop over steps is a :func:`jax.lax.fori_loop` on the device.
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


class _Grid:
    """The schedule of one call: ``level(i)`` is :math:`s_i`, and the start and end noise levels."""

    def __init__(self, sde: SDE, num_steps: Array, eps: Array, rho: Array):
        self.n = num_steps
        self.s_max = noise_to_signal(sde, jnp.asarray(sde.T, jnp.float32))
        self.s_min = noise_to_signal(sde, eps)
        self.rho = rho

    def level(self, i):
        return edm_schedule(i, self.n, self.s_max, self.s_min, self.rho)


def _prior(sde: SDE, key: Array, shape) -> Array:
    """A prior sample, in the scaled variable :math:`y = x_T/\\alpha(T)`."""
    alpha_t = sde.marginal_coefs(jnp.full((shape[0],), sde.T))[0]
    x = sde.prior_sampling(key, shape)
    return x / batch_broadcast(alpha_t, x)


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


def _prepare(sde, shape, eps, num_steps, rho):
    from sde_jax.sampling import _check_eps, _check_shape

    _check_sde(sde)
    return (
        _check_shape(shape),
        jnp.asarray(_check_eps(sde, eps), jnp.float32),
        jnp.asarray(_check_num_steps(num_steps), jnp.int32),
        jnp.asarray(_check_rho(rho), jnp.float32),
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
    eps: float | None = None,
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
        eps: the smallest nonzero time, :math:`s_{\min} = s(\epsilon)`; defaults to
            ``sde.sampling_eps``.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = 2 * num_steps - 1`` (int32).
    """
    shape, eps, n, rho = _prepare(sde, shape, eps, num_steps, rho)
    zero = jnp.zeros((), jnp.float32)
    return _edm_sample(
        key, sde, n, eps, rho, zero, zero, zero, zero, score_fn=score_fn, shape=shape, churn=False
    )


def edm_stochastic_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    rho: float = 7.0,
    s_churn: float = 10.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    eps: float | None = None,
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
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = 2 * num_steps - 1`` (int32).
    """
    shape, eps, n, rho = _prepare(sde, shape, eps, num_steps, rho)
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
        f32(s_churn),
        f32(s_tmin),
        f32(s_tmax),
        f32(s_noise),
        score_fn=score_fn,
        shape=shape,
        churn=True,
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "churn"))
def _edm_sample(key, sde, n, eps, rho, s_churn, s_tmin, s_tmax, s_noise, *, score_fn, shape, churn):
    k_prior, k_loop = jax.random.split(key)
    grid = _Grid(sde, n, eps, rho)
    y = _prior(sde, k_prior, shape)
    denoise = functools.partial(denoiser, sde, score_fn)
    gamma_max = jnp.minimum(s_churn / n.astype(jnp.float32), math.sqrt(2.0) - 1.0)

    def raise_noise(i, y, s):
        if not churn:
            return y, s
        gamma = jnp.where((s >= s_tmin) & (s <= s_tmax), gamma_max, 0.0)
        # The cap s_hat <= s(T); s_0 can round a little above s(T), hence the maximum with 0.
        gamma = jnp.minimum(gamma, jnp.maximum(grid.s_max / s - 1.0, 0.0))
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

    y = jax.lax.fori_loop(0, n - 1, heun_step, y)
    # The last step, to s = 0, is Euler's: y + (0 - s) (y - D) / s = D.
    y, s = raise_noise(n - 1, y, grid.s_min)
    return denoise(y, s), (2 * n - 1).astype(jnp.int32)


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
    eps: float | None = None,
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
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = num_steps`` (int32).
    """
    shape, eps, n, rho = _prepare(sde, shape, eps, num_steps, rho)
    return _dpm_solver_2m_sample(key, sde, n, eps, rho, score_fn=score_fn, shape=shape)


@functools.partial(jax.jit, static_argnames=("score_fn", "shape"))
def _dpm_solver_2m_sample(key, sde, n, eps, rho, *, score_fn, shape):
    grid = _Grid(sde, n, eps, rho)
    y = _prior(sde, key, shape)

    def step(i, carry):
        y, d_prev, h_prev = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        d = denoiser(sde, score_fn, y, s)
        h = jnp.log(s / s_next)
        # r = h_prev / h; the first step (h_prev = 0 marks it) is first order.
        half_inv_r = jnp.where(i == 0, 0.0, 0.5 * h / jnp.where(i == 0, 1.0, h_prev))
        d_ext = (1.0 + half_inv_r) * d - half_inv_r * d_prev
        ratio = s_next / s
        return ratio * y + (1.0 - ratio) * d_ext, d, h

    y, _, _ = jax.lax.fori_loop(0, n - 1, step, (y, jnp.zeros_like(y), jnp.zeros((), y.dtype)))
    return denoiser(sde, score_fn, y, grid.s_min), n.astype(jnp.int32)


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
    eps: float | None = None,
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
        eps: the smallest nonzero time; defaults to ``sde.sampling_eps``.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe = num_steps`` (int32).
    """
    shape, eps, n, rho = _prepare(sde, shape, eps, num_steps, rho)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must lie in [0, 1]; got {eta!r}.")
    return _ddim_sample(
        key, sde, n, eps, rho, jnp.asarray(eta, jnp.float32), score_fn=score_fn, shape=shape
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape"))
def _ddim_sample(key, sde, n, eps, rho, eta, *, score_fn, shape):
    k_prior, k_loop = jax.random.split(key)
    grid = _Grid(sde, n, eps, rho)
    y = _prior(sde, k_prior, shape)

    def step(i, y):
        s, s_next = grid.level(i), grid.level(i + 1)
        d = denoiser(sde, score_fn, y, s)
        kept = 1.0 - (s_next / s) ** 2
        c = eta * s_next * jnp.sqrt(kept)
        z = jax.random.normal(jax.random.fold_in(k_loop, i), y.shape, y.dtype)
        # sqrt(s'^2 - c^2), written so that eta = 0 gives s' exactly.
        return d + s_next * jnp.sqrt(1.0 - eta**2 * kept) * (y - d) / s + c * z

    y = jax.lax.fori_loop(0, n - 1, step, y)
    return denoiser(sde, score_fn, y, grid.s_min), n.astype(jnp.int32)
