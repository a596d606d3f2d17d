r"""Denoising score-matching objectives.

Every objective here has the same per-example form. With :math:`x_t = m_t x_0 + s_t z`,
:math:`z \sim \mathcal{N}(0, I)`, and the model score :math:`s_\theta(x_t, t)`,

.. math:: \ell = w(t)\,\operatorname{reduce}\big((s_t\, s_\theta(x_t, t) + z)^2\big),

where ``reduce`` is the mean over dimensions (``reduce_mean=True``) or :math:`\tfrac12` times the sum
(the paper's default), and the weight :math:`w(t)` encodes the weighting :math:`\lambda(t)` of the
paper's eq. (7) relative to :math:`s_t^2`:

- continuous, :math:`\lambda = s_t^2` (default): :math:`w = 1`, :math:`t \sim U[\epsilon, T]`;
- continuous, likelihood weighting :math:`\lambda = g(t)^2`: :math:`w = g^2 / s_t^2`;
- likelihood weighting with importance sampling (Song et al. 2021, "Maximum likelihood training of
  score-based diffusion models"): :math:`t \sim q(t) \propto g(t)^2 / s_t^2`, and
  :math:`w = Z / (T - \epsilon)` with :math:`Z = \int_\epsilon^T g^2/s^2\,\mathrm{d}t`, which has the
  same expectation as the line above and much lower variance near :math:`t = 0`;
- discrete SMLD (VE): uniform noise level :math:`i`, :math:`s = \sigma_i`, :math:`m = 1`;
- discrete DDPM (VP): uniform :math:`i`, :math:`m = \sqrt{\bar\alpha_i}`,
  :math:`s = \sqrt{1-\bar\alpha_i}`; the loss is the DDPM :math:`\epsilon`-prediction loss since
  :math:`\epsilon_\theta = -s\, s_\theta`.

For the discrete objectives the score function is evaluated at :math:`t_i = i / (N - 1)`, the time of
noise level :math:`i` in the discrete samplers' grid.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sde_jax._checks import check_eps, check_sde
from sde_jax.sde import SDE, VESDE, VPSDE, SubVPSDE, batch_broadcast

Array = jax.Array
# score_fn(params, x, t, *, train, key) -> score, as returned by sde_jax.models.make_score_fn.
TrainScoreFn = Callable[..., Array]
LossFn = Callable[[object, Array, Array], Array]


def likelihood_weight_antiderivative(sde: SDE, t: Array) -> Array:
    r"""An antiderivative :math:`F(t)` of the likelihood weight :math:`g(t)^2 / s(t)^2`.

    With :math:`B(t) = \int_0^t \beta`: VP :math:`F = \log(e^{B} - 1)`; sub-VP
    :math:`F = 2\log(2\sinh(B/2))`; VE :math:`F = 2t\log(\sigma_{\max}/\sigma_{\min})`.
    """
    if isinstance(sde, VESDE):
        return 2.0 * t * (jnp.log(sde.sigma_max) - jnp.log(sde.sigma_min))
    b = sde.integrated_beta(t)
    if isinstance(sde, VPSDE):
        return jnp.log(jnp.expm1(b))
    return b + 2.0 * jnp.log(-jnp.expm1(-b))


def _inverse_antiderivative(sde: SDE, f: Array) -> Array:
    if isinstance(sde, VESDE):
        return f / (2.0 * (jnp.log(sde.sigma_max) - jnp.log(sde.sigma_min)))
    if isinstance(sde, VPSDE):
        b = jax.nn.softplus(f)
    else:
        b = 2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * f))
    return sde.inverse_integrated_beta(b)


def sample_importance_time(key: Array, sde: SDE, n: int, eps: float) -> tuple[Array, Array]:
    r"""Samples ``n`` times from :math:`q(t) \propto g(t)^2/s(t)^2` on :math:`[\epsilon, T]` by
    inverting :math:`F`, and returns them with the normalizer :math:`Z = F(T) - F(\epsilon)`."""
    f_lo = likelihood_weight_antiderivative(sde, jnp.asarray(eps, jnp.float32))
    f_hi = likelihood_weight_antiderivative(sde, jnp.asarray(sde.T, jnp.float32))
    u = jax.random.uniform(key, (n,))
    t = _inverse_antiderivative(sde, f_lo + u * (f_hi - f_lo))
    return jnp.clip(t, eps, sde.T), f_hi - f_lo


def make_loss_fn(
    sde: SDE,
    score_fn: TrainScoreFn,
    *,
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    importance_weighting: bool = False,
    eps: float = 1e-5,
    train: bool = True,
    per_example: bool = False,
) -> LossFn:
    r"""Builds the denoising score-matching loss of the paper for ``sde``.

    Args:
        sde: the forward SDE.
        score_fn: ``score_fn(params, x, t, *, train, key) -> score`` with ``x`` ``[B, *event]``
            and ``t`` ``[B]``; ``key`` drives dropout when ``train`` is true.
        continuous: continuous-time DSM; otherwise the discrete SMLD (VE) or DDPM (VP) loss.
        reduce_mean: mean over dimensions instead of :math:`\tfrac12` times the sum.
        likelihood_weighting: :math:`\lambda(t) = g(t)^2` (continuous only).
        importance_weighting: sample :math:`t` proportionally to the likelihood weight (requires
            ``likelihood_weighting``).
        eps: smallest time sampled by the continuous losses.
        train: passed to ``score_fn``.
        per_example: return the ``[B]`` per-example losses instead of their mean (e.g. to
            evaluate a test set whose last batch is padded).

    Returns:
        ``loss_fn(params, key, batch) -> scalar``, the batch mean of the per-example losses;
        ``batch`` is ``[B, *event]``.

    Raises:
        ValueError: for combinations the paper does not define.
    """
    check_sde(sde)
    if not continuous and isinstance(sde, SubVPSDE):
        raise ValueError(
            "`continuous=False` is defined for VESDE (SMLD) and VPSDE (DDPM) only; "
            "the sub-VP SDE has no discrete loss."
        )
    if likelihood_weighting and not continuous:
        raise ValueError("`likelihood_weighting=True` requires `continuous=True`.")
    if importance_weighting and not likelihood_weighting:
        raise ValueError("`importance_weighting=True` requires `likelihood_weighting=True`.")
    check_eps(sde, eps)

    def reduce(v: Array) -> Array:
        v = jnp.reshape(v, (v.shape[0], -1))
        return jnp.mean(v, axis=-1) if reduce_mean else 0.5 * jnp.sum(v, axis=-1)

    def sample_time(key: Array, n: int) -> tuple[Array, Array, Array, Array]:
        """Times ``t`` with their mean coefficient, std and weight, all ``[n]``."""
        if not continuous:
            i = jax.random.randint(key, (n,), 0, sde.N)
            t = i.astype(jnp.float32) / (sde.N - 1)
            if isinstance(sde, VESDE):
                return t, jnp.ones(n), sde.discrete_sigmas[i], jnp.ones(n)
            return t, sde.sqrt_alphas_cumprod[i], sde.sqrt_1m_alphas_cumprod[i], jnp.ones(n)
        if importance_weighting:
            t, z_norm = sample_importance_time(key, sde, n, eps)
            weight = jnp.full((n,), z_norm / (sde.T - eps))
            return t, *sde.marginal_coefs(t), weight
        t = jax.random.uniform(key, (n,), minval=eps, maxval=sde.T)
        m, s = sde.marginal_coefs(t)
        if likelihood_weighting:
            return t, m, s, (sde.diffusion(t) / s) ** 2
        return t, m, s, jnp.ones(n)

    def loss_fn(params, key: Array, batch: Array) -> Array:
        k_t, k_z, k_model = jax.random.split(key, 3)
        n = batch.shape[0]
        t, m, s, weight = sample_time(k_t, n)
        z = jax.random.normal(k_z, batch.shape, batch.dtype)
        x_t = batch_broadcast(m, batch) * batch + batch_broadcast(s, batch) * z
        score = score_fn(params, x_t, t, train=train, key=k_model)
        losses = weight * reduce((batch_broadcast(s, score) * score + z) ** 2)
        return losses if per_example else jnp.mean(losses)

    return loss_fn
