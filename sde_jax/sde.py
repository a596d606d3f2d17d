r"""Forward SDEs of score-based generative models and their time reversals.

Each SDE is an immutable pytree (a :func:`flax.struct.dataclass`) whose float hyper-parameters are
leaves and whose number of discretization steps ``N`` is static, so an SDE can be closed over or
passed through :func:`jax.jit` without retracing for new float values.

A forward SDE

.. math:: \mathrm{d}x = f(x, t)\,\mathrm{d}t + g(t)\,\mathrm{d}w, \qquad t \in [0, T]

has Gaussian transition kernels :math:`p_{0t}(x(t) \mid x(0)) = \mathcal{N}(m(t)\,x(0), s(t)^2 I)`
for the three SDEs of the paper, which :meth:`marginal_prob` returns.

Shapes: ``x`` is ``[B, *event]`` and ``t`` is ``[B]`` everywhere; per-sample scalars such as the
diffusion coefficient or the marginal standard deviation are returned with shape ``[B]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_broadcast(v: Array, x: Array) -> Array:
    """Reshapes a per-sample vector ``v`` of shape ``[B]`` to ``[B, 1, ..., 1]`` matching ``x``."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def check_time(x: Array, t: Array) -> None:
    """Raises ``ValueError`` unless ``t`` has shape ``[B]`` for ``x`` of shape ``[B, *event]``."""
    if jnp.ndim(t) != 1 or jnp.shape(t)[0] != jnp.shape(x)[0]:
        raise ValueError(
            f"`t` must have shape [B] = [{jnp.shape(x)[0]}] matching the batch of `x` "
            f"(shape {tuple(jnp.shape(x))}); got shape {tuple(jnp.shape(t))}."
        )


def sum_event(x: Array) -> Array:
    """Sums ``x`` of shape ``[B, *event]`` over its event axes; returns ``[B]``."""
    return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def _event_size(x: Array) -> int:
    return math.prod(x.shape[1:])


def _standard_normal_logp(z: Array, scale: Array | float) -> Array:
    d = _event_size(z)
    return -0.5 * d * jnp.log(2 * jnp.pi * scale**2) - sum_event(z**2) / (2 * scale**2)


class _SDEMethods:
    """Methods shared by every SDE. Subclasses define the coefficients."""

    T = 1.0
    N: int
    sampling_eps: float

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        r"""Drift :math:`f(x, t)` (shape of ``x``) and diffusion :math:`g(t)` (shape ``[B]``)."""
        check_time(x, t)
        return batch_broadcast(self._drift_coef(t), x) * x, self.diffusion(t)

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        r"""Mean :math:`m(t)\,x` (shape of ``x``) and std :math:`s(t)` (shape ``[B]``) of
        :math:`p_{0t}(\cdot \mid x)`."""
        check_time(x, t)
        mean_coef, std = self.marginal_coefs(t)
        return batch_broadcast(mean_coef, x) * x, std

    def prior_logp(self, z: Array) -> Array:
        """Log-density of the prior :math:`p_T` at ``z`` of shape ``[B, *event]``; returns ``[B]``."""
        return _standard_normal_logp(z, self._prior_std)

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        """Draws ``shape = (B, *event)`` samples from the prior :math:`p_T`."""
        return self._prior_std * jax.random.normal(key, shape)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (paper eq. 6) or probability-flow ODE (eq. 13) driven by
        ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def timestep_index(self, t: Array) -> Array:
        r"""The index :math:`i` of the discrete noise level at time ``t``, :math:`\lfloor t(N-1)/T
        \rfloor` (int32, shaped like ``t``)."""
        # Truncation, not rounding: that is how the paper's discrete samplers map their time grid
        # onto the N noise levels.
        return (t * (self.N - 1) / self.T).astype(jnp.int32)

    def euler_maruyama_discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        r"""One Euler–Maruyama step of size :math:`T/N`:
        :math:`f_i = f(x, t)\,\Delta t`, :math:`G_i = g(t)\sqrt{\Delta t}`."""
        drift, diffusion = self.sde(x, t)
        dt = self.T / self.N
        return drift * dt, diffusion * math.sqrt(dt)

    # Subclass interface.
    def _drift_coef(self, t: Array) -> Array:
        raise NotImplementedError

    def diffusion(self, t: Array) -> Array:
        """Diffusion coefficient :math:`g(t)`, shaped like ``t``."""
        raise NotImplementedError

    def marginal_coefs(self, t: Array) -> tuple[Array, Array]:
        """Mean coefficient :math:`m(t)` and std :math:`s(t)`, both shaped like ``t``."""
        raise NotImplementedError

    @property
    def _prior_std(self) -> Array | float:
        return 1.0


class _BetaSchedule:
    """The linear noise schedule :math:`\\beta(t) = \\beta_0 + t(\\beta_1 - \\beta_0)` of VP and
    sub-VP SDEs, and its DDPM discretization :math:`\\beta_i = \\beta(i/(N-1))/N`."""

    beta_min: float
    beta_max: float
    N: int

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Array) -> Array:
        r""":math:`B(t) = \int_0^t \beta = \beta_0 t + \tfrac12(\beta_1 - \beta_0)t^2`, shaped like
        ``t``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inverse_integrated_beta(self, b: Array) -> Array:
        r"""The time :math:`t \ge 0` with :math:`B(t) = b`, shaped like ``b``."""
        # The positive root of the quadratic, written without cancellation.
        slope = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * b))

    @property
    def discrete_betas(self) -> Array:
        """:math:`\\beta_i`, shape ``[N]``."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> Array:
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> Array:
        return jnp.cumprod(self.alphas)

    @property
    def sqrt_alphas_cumprod(self) -> Array:
        return jnp.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> Array:
        return jnp.sqrt(1.0 - self.alphas_cumprod)

    def _drift_coef(self, t: Array) -> Array:
        return -0.5 * self.beta(t)


@struct.dataclass
class VPSDE(_BetaSchedule, _SDEMethods):
    r"""Variance-preserving SDE :math:`\mathrm{d}x = -\tfrac12\beta(t)x\,\mathrm{d}t +
    \sqrt{\beta(t)}\,\mathrm{d}w`, the continuous limit of DDPM.

    Attributes:
        beta_min: :math:`\beta_0 = \beta(0)`.
        beta_max: :math:`\beta_1 = \beta(1)`.
        N: number of discretization steps (static).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)
    sampling_eps = 1e-3

    def diffusion(self, t: Array) -> Array:
        return jnp.sqrt(self.beta(t))

    def marginal_coefs(self, t: Array) -> tuple[Array, Array]:
        log_m = -0.5 * self.integrated_beta(t)
        return jnp.exp(log_m), jnp.sqrt(-jnp.expm1(2.0 * log_m))

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        r"""DDPM discretization: :math:`x_{i+1} = \sqrt{1-\beta_i}\,x_i + \sqrt{\beta_i}\,z`, so
        :math:`f_i = (\sqrt{1-\beta_i} - 1)x` and :math:`G_i = \sqrt{\beta_i}`."""
        check_time(x, t)
        i = self.timestep_index(t)
        beta = self.discrete_betas[i]
        return batch_broadcast(jnp.sqrt(1.0 - beta), x) * x - x, jnp.sqrt(beta)


@struct.dataclass
class SubVPSDE(_BetaSchedule, _SDEMethods):
    r"""Sub-VP SDE :math:`\mathrm{d}x = -\tfrac12\beta(t)x\,\mathrm{d}t +
    \sqrt{\beta(t)(1 - e^{-2\int_0^t\beta(s)\mathrm{d}s})}\,\mathrm{d}w`, whose marginal variance
    is bounded by the VP SDE's.

    It discretizes by Euler–Maruyama. Its discrete tables (``discrete_betas``, ``alphas``, ...) are
    the VP SDE's, since both share the linear :math:`\beta(t)`; the Langevin correctors use
    ``alphas`` for their step size.

    Attributes:
        beta_min: :math:`\beta_0 = \beta(0)`.
        beta_max: :math:`\beta_1 = \beta(1)`.
        N: number of discretization steps (static).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)
    sampling_eps = 1e-3

    def diffusion(self, t: Array) -> Array:
        discount = -jnp.expm1(-2.0 * self.integrated_beta(t))
        return jnp.sqrt(self.beta(t) * discount)

    def marginal_coefs(self, t: Array) -> tuple[Array, Array]:
        log_m = -0.5 * self.integrated_beta(t)
        return jnp.exp(log_m), -jnp.expm1(2.0 * log_m)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Euler–Maruyama discretization (the paper defines no special one for sub-VP)."""
        return self.euler_maruyama_discretize(x, t)


@struct.dataclass
class VESDE(_SDEMethods):
    r"""Variance-exploding SDE :math:`\mathrm{d}x = \sqrt{\mathrm{d}[\sigma^2(t)]/\mathrm{d}t}
    \,\mathrm{d}w` with :math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t`, the
    continuous limit of SMLD (NCSN).

    Attributes:
        sigma_min: :math:`\sigma_{\min}`.
        sigma_max: :math:`\sigma_{\max}`, also the prior's standard deviation.
        N: number of noise scales (static).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = struct.field(pytree_node=False, default=1000)
    sampling_eps = 1e-5

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    @property
    def discrete_sigmas(self) -> Array:
        r""":math:`\sigma_i`, geometrically spaced from :math:`\sigma_{\min}` to
        :math:`\sigma_{\max}`, shape ``[N]``."""
        return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

    def _drift_coef(self, t: Array) -> Array:
        return jnp.zeros_like(t)

    def diffusion(self, t: Array) -> Array:
        return self.sigma(t) * jnp.sqrt(2.0 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))

    def marginal_coefs(self, t: Array) -> tuple[Array, Array]:
        return jnp.ones_like(t), self.sigma(t)

    @property
    def _prior_std(self) -> Array | float:
        return self.sigma_max

    def adjacent_sigmas(self, t: Array) -> tuple[Array, Array]:
        r"""The discrete noise level :math:`\sigma_i` at ``t`` and the next smaller one
        :math:`\sigma_{i-1}` (0 below the first), both shaped like ``t``."""
        i = self.timestep_index(t)
        sigmas = self.discrete_sigmas
        return sigmas[i], jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        r"""SMLD discretization: :math:`x_{i+1} = x_i + \sqrt{\sigma_{i+1}^2 - \sigma_i^2}\,z`."""
        check_time(x, t)
        sigma, adjacent = self.adjacent_sigmas(t)
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


SDE = VESDE | VPSDE | SubVPSDE


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    r"""The reverse-time process of a forward SDE for a given score function.

    With ``probability_flow=False`` this is the reverse SDE (paper eq. 6)

    .. math:: \mathrm{d}x = [f(x,t) - g(t)^2 \nabla_x \log p_t(x)]\,\mathrm{d}t + g(t)\,\mathrm{d}\bar w,

    and with ``probability_flow=True`` the probability-flow ODE (eq. 13)

    .. math:: \mathrm{d}x = [f(x,t) - \tfrac12 g(t)^2 \nabla_x \log p_t(x)]\,\mathrm{d}t.

    Both are written as coefficients in forward time ``t`` (to be integrated from ``T`` to 0).
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def _reverse(self, x, t, f, g):
        weight = 0.5 if self.probability_flow else 1.0
        score = self.score_fn(x, t)
        f = f - batch_broadcast(weight * g**2, x) * score
        g = jnp.zeros_like(g) if self.probability_flow else g
        return f, g

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift (shape of ``x``) and diffusion (``[B]``) of the reverse process."""
        drift, diffusion = self.forward.sde(x, t)
        return self._reverse(x, t, drift, diffusion)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        r"""Reverse of the forward discretization:
        :math:`f_i - G_i^2 s(x, t)` (halved for the probability flow) and :math:`G_i` (0)."""
        f, g = self.forward.discretize(x, t)
        return self._reverse(x, t, f, g)
