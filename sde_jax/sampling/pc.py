r"""Predictor–corrector sampling (paper Algorithm 1).

The sampler takes a plain ``score_fn(x, t)`` with ``x`` ``[B, *event]`` and ``t`` ``[B]`` and runs as
one compiled program whose loop is a :func:`jax.lax.fori_loop`, jitted with the score function, the
shape and the method names static, so repeated calls with the same arguments reuse one executable.
Pass the same ``score_fn`` object on every call (e.g. a ``functools.partial`` built once): a new
closure per call is a new static argument and compiles again.

Predictors (one step of the reverse-time SDE from :math:`t_i` down to the next time):

- ``euler_maruyama``: :math:`x \leftarrow x - \bar f\,\Delta t + \bar g \sqrt{\Delta t}\,z`,
  :math:`\Delta t = T/N`, with the reverse drift :math:`\bar f = f - g^2 s_\theta`;
- ``reverse_diffusion``: the forward discretization reversed (paper eq. 45),
  :math:`x \leftarrow x - f_i + G_i^2 s_\theta + G_i z`;
- ``ancestral_sampling``: the SMLD / DDPM ancestral step (paper eqs. 47 and 48), VE and VP only;
- ``none``.

Correctors (``n_steps`` Langevin MCMC steps at the same time :math:`t_i`):

- ``langevin``: step size :math:`\epsilon = 2\alpha_i(r\|z\|/\|s_\theta\|)^2` from the target
  signal-to-noise ratio :math:`r` (paper Algorithms 4 and 5), with both norms averaged over the batch
  as in the paper's code: per-sample norms make the step explode for samples where the score is
  nearly zero, which is common in low dimension. :math:`\alpha_i = 1 - \beta_i` for VP and sub-VP
  (whose noise schedule is the same) and 1 for VE;
- ``ald``: annealed Langevin dynamics with :math:`\epsilon = 2\alpha_i (r\,s(t))^2`;
- ``none``.

With ``denoise=True`` the sample returned is the mean of the last update, without its noise, which
is Tweedie's denoising step at :math:`t = \epsilon` for ``reverse_diffusion``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sde_jax._checks import check_choice, check_eps, check_int, check_shape
from sde_jax.sde import SDE, VESDE, VPSDE, ScoreFn, SubVPSDE, batch_broadcast

Array = jax.Array


def _normal(key: Array, x: Array) -> Array:
    return jax.random.normal(key, x.shape, x.dtype)


def _per_sample_norm(v: Array) -> Array:
    return jnp.linalg.norm(jnp.reshape(v, (v.shape[0], -1)), axis=-1)


# ---------------------------------------------------------------------------------------------
# Predictors: (key, sde, score_fn, x, t, probability_flow) -> (x, x_mean).


def euler_maruyama_predictor(key, sde: SDE, score_fn: ScoreFn, x, t, probability_flow=False):
    """One Euler–Maruyama step of the reverse SDE (or Euler step of the probability-flow ODE)."""
    dt = sde.T / sde.N
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x - drift * dt
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(diffusion * math.sqrt(dt), x) * _normal(key, x), x_mean


def reverse_diffusion_predictor(key, sde: SDE, score_fn: ScoreFn, x, t, probability_flow=False):
    """One step of the reversed forward discretization (paper eq. 45)."""
    f, g = sde.reverse(score_fn, probability_flow).discretize(x, t)
    x_mean = x - f
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(g, x) * _normal(key, x), x_mean


def ancestral_sampling_predictor(key, sde: SDE, score_fn: ScoreFn, x, t, probability_flow=False):
    """The ancestral sampling step of SMLD (VE, paper eq. 47) or DDPM (VP, eq. 48)."""
    # check_pc_options rejects probability_flow: ancestral sampling is stochastic by definition.
    del probability_flow
    score = score_fn(x, t)
    if isinstance(sde, VESDE):
        sigma, adjacent = sde.adjacent_sigmas(t)
        x_mean = x + batch_broadcast(sigma**2 - adjacent**2, x) * score
        std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    else:
        beta = sde.discrete_betas[sde.timestep_index(t)]
        x_mean = (x + batch_broadcast(beta, x) * score) / batch_broadcast(jnp.sqrt(1.0 - beta), x)
        std = jnp.sqrt(beta)
    return x_mean + batch_broadcast(std, x) * _normal(key, x), x_mean


def none_predictor(key, sde, score_fn, x, t, probability_flow=False):
    """Leaves ``x`` unchanged (corrector-only sampling)."""
    del key, sde, score_fn, t, probability_flow
    return x, x


def denoise_step(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """The noise-free mean of a reverse-diffusion step, :math:`x - f_i + G_i^2 s_\\theta(x, t)`."""
    f, _ = sde.reverse(score_fn).discretize(x, t)
    return x - f


# ---------------------------------------------------------------------------------------------
# Correctors: (key, sde, score_fn, x, t, snr, n_steps) -> (x, x_mean).


def _corrector_alpha(sde: SDE, t: Array) -> Array:
    if isinstance(sde, VPSDE | SubVPSDE):
        return sde.alphas[sde.timestep_index(t)]
    return jnp.ones_like(t)


def _langevin_loop(key, sde: SDE, score_fn: ScoreFn, x, t, n_steps, step_size_fn):
    alpha = _corrector_alpha(sde, t)

    def body(i, carry):
        x, _ = carry
        grad = score_fn(x, t)
        noise = _normal(jax.random.fold_in(key, i), x)
        step = step_size_fn(grad, noise) * alpha
        x_mean = x + batch_broadcast(step, x) * grad
        return x_mean + batch_broadcast(jnp.sqrt(2.0 * step), x) * noise, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


def langevin_corrector(key, sde: SDE, score_fn: ScoreFn, x, t, snr, n_steps):
    """Langevin MCMC with the step size set by the target signal-to-noise ratio ``snr``."""

    def step_size(grad, noise):
        ratio = jnp.mean(_per_sample_norm(noise)) / jnp.mean(_per_sample_norm(grad))
        return jnp.full(grad.shape[:1], 2.0 * (snr * ratio) ** 2)

    return _langevin_loop(key, sde, score_fn, x, t, n_steps, step_size)


def ald_corrector(key, sde: SDE, score_fn: ScoreFn, x, t, snr, n_steps):
    """Annealed Langevin dynamics (Song & Ermon 2019) with step :math:`2(r\\,s(t))^2`."""
    std = sde.marginal_coefs(t)[1]
    return _langevin_loop(key, sde, score_fn, x, t, n_steps, lambda g, z: 2.0 * (snr * std) ** 2)


def none_corrector(key, sde, score_fn, x, t, snr, n_steps):
    """Leaves ``x`` unchanged (predictor-only sampling)."""
    del key, sde, score_fn, t, snr, n_steps
    return x, x


PREDICTORS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama_predictor,
    "reverse_diffusion": reverse_diffusion_predictor,
    "ancestral_sampling": ancestral_sampling_predictor,
    "none": none_predictor,
}
CORRECTORS: dict[str, Callable] = {
    "langevin": langevin_corrector,
    "ald": ald_corrector,
    "none": none_corrector,
}


# ---------------------------------------------------------------------------------------------
# The sampler.


def check_pc_options(
    sde: SDE,
    predictor: str,
    corrector: str,
    n_steps: int,
    probability_flow: bool,
    *,
    needs_predictor: bool = False,
) -> None:
    """Raises ``ValueError`` for PC options that do not go together.

    Args:
        needs_predictor: reject ``predictor='none'`` too (the masked samplers return the
            predictor's last mean).
    """
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("corrector", corrector, CORRECTORS)
    if needs_predictor and predictor == "none":
        raise ValueError("`predictor` must not be 'none' for this sampler.")
    if predictor == "none" and corrector == "none":
        raise ValueError("`predictor` and `corrector` cannot both be 'none'.")
    if predictor == "ancestral_sampling" and not isinstance(sde, VESDE | VPSDE):
        raise ValueError(
            "`predictor='ancestral_sampling'` is defined for VESDE and VPSDE only; "
            f"got {type(sde).__name__}. Use 'reverse_diffusion' or 'euler_maruyama'."
        )
    if predictor == "ancestral_sampling" and probability_flow:
        raise ValueError("`predictor='ancestral_sampling'` does not support probability_flow=True.")
    check_int("n_steps", n_steps, 1)


def pc_nfe(sde: SDE, predictor: str, corrector: str, n_steps: int) -> int:
    """Score evaluations of one PC sample: ``N`` times (predictor + ``n_steps`` correctors)."""
    return sde.N * ((predictor != "none") + (corrector != "none") * n_steps)


def pc_times(sde: SDE, eps: Array) -> Array:
    r"""The PC time grid :math:`t_i = T - i(T - \epsilon)/(N - 1)`, :math:`i = 0, \dots, N-1`."""
    return jnp.linspace(sde.T, eps, sde.N)


def pc_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    eps: float | None = None,
    denoise: bool = True,
    probability_flow: bool = False,
) -> tuple[Array, Array]:
    r"""Predictor–corrector sampling (paper Algorithm 1) on the time grid :func:`pc_times`.

    Args:
        key: PRNG key.
        score_fn: ``score_fn(x, t) -> score``.
        sde: the forward SDE; its ``N`` is the number of PC steps.
        shape: ``(B, *event)``.
        predictor: one of :data:`PREDICTORS`.
        corrector: one of :data:`CORRECTORS`.
        snr: the correctors' signal-to-noise ratio :math:`r`.
        n_steps: corrector steps per time step.
        eps: the last time of the grid; defaults to ``sde.sampling_eps``.
        denoise: return the last update's mean (no final noise).
        probability_flow: the predictor follows the probability-flow ODE instead of the SDE.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe`` the number of score evaluations per sample.
    """
    check_pc_options(sde, predictor, corrector, n_steps, probability_flow)
    samples = _pc_sample(
        key,
        sde,
        jnp.asarray(snr, jnp.float32),
        jnp.asarray(check_eps(sde, eps), jnp.float32),
        score_fn=score_fn,
        shape=check_shape(shape),
        predictor=predictor,
        corrector=corrector,
        n_steps=n_steps,
        denoise=denoise,
        probability_flow=probability_flow,
    )
    return samples, jnp.asarray(pc_nfe(sde, predictor, corrector, n_steps), jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=(
        "score_fn",
        "shape",
        "predictor",
        "corrector",
        "n_steps",
        "denoise",
        "probability_flow",
    ),
)
def _pc_sample(
    key, sde, snr, eps, *, score_fn, shape, predictor, corrector, n_steps, denoise, probability_flow
):
    return pc_loop(
        key, sde, score_fn, snr, eps, shape=shape, predictor=predictor, corrector=corrector,
        n_steps=n_steps, denoise=denoise, probability_flow=probability_flow,
    )  # fmt: skip


def pc_loop(
    key, sde, score_fn, snr, eps, *, shape, predictor, corrector, n_steps, denoise, probability_flow
):
    """The traced body of :func:`pc_sample` (checked arguments, no jit of its own), for samplers
    that run it under their own jit, e.g. with a score closing over traced labels."""
    predict = PREDICTORS[predictor]
    correct = CORRECTORS[corrector]
    k_prior, k_loop = jax.random.split(key)
    x = sde.prior_sampling(k_prior, shape)
    times = pc_times(sde, eps)

    def body(i, carry):
        x, _ = carry
        t = jnp.full((shape[0],), times[i])
        k_corr, k_pred = jax.random.split(jax.random.fold_in(k_loop, i))
        x, x_mean = correct(k_corr, sde, score_fn, x, t, snr, n_steps)
        if predictor == "none":
            # Corrector-only sampling denoises with the corrector's last mean.
            return x, x_mean
        return predict(k_pred, sde, score_fn, x, t, probability_flow)

    x, x_mean = jax.lax.fori_loop(0, sde.N, body, (x, x))
    return x_mean if denoise else x
