r"""Gaussian-mixture data, for which every quantity of a score-based model is known exactly.

If :math:`p_0 = \sum_k w_k \mathcal{N}(\mu_k, \Sigma_k)` and the forward SDE has the Gaussian
kernel :math:`\mathcal{N}(m(t)x_0, s(t)^2 I)`, then

.. math:: p_t = \sum_k w_k\,\mathcal{N}\big(m(t)\mu_k,\; m(t)^2\Sigma_k + s(t)^2 I\big),

so the score :math:`\nabla_x \log p_t`, the log-density and exact samples of every marginal are
available in closed form. Each covariance is stored by its eigendecomposition
:math:`\Sigma_k = U_k \operatorname{diag}(\lambda_k) U_k^\top`, which diagonalizes every
:math:`m^2\Sigma_k + s^2 I` at once.

These targets are what the tests and benchmarks drive the samplers and the likelihood with; they are
part of the library so that users can check their own samplers the same way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sde_jax.sde import SDE, check_time

Array = jax.Array


@struct.dataclass
class GaussianMixture:
    """A mixture of ``K`` full-covariance Gaussians over events of shape ``event_shape``.

    Attributes:
        log_weights: ``[K]`` normalized log mixture weights.
        means: ``[K, D]`` component means, ``D = prod(event_shape)``.
        eigvals: ``[K, D]`` eigenvalues of the component covariances (positive).
        eigvecs: ``[K, D, D]`` orthonormal eigenvectors (columns), or None for axis-aligned
            (diagonal) covariances, which keeps high-dimensional targets cheap.
        event_shape: shape of one sample (static).
    """

    log_weights: Array
    means: Array
    eigvals: Array
    eigvecs: Array | None
    event_shape: tuple[int, ...] = struct.field(pytree_node=False)

    @classmethod
    def from_covariances(cls, weights, means, covs, event_shape=None) -> GaussianMixture:
        """Builds a mixture from weights ``[K]``, means ``[K, D]`` and covariances ``[K, D, D]``."""
        weights = jnp.asarray(weights, jnp.float32)
        means = jnp.asarray(means, jnp.float32)
        covs = jnp.asarray(covs, jnp.float32)
        if means.ndim != 2 or covs.shape != means.shape + means.shape[-1:]:
            raise ValueError(
                f"`means` must be [K, D] and `covs` [K, D, D]; got {means.shape} and {covs.shape}."
            )
        if weights.shape != means.shape[:1]:
            raise ValueError(f"`weights` must be [K] = [{means.shape[0]}]; got {weights.shape}.")
        event_shape = tuple(event_shape) if event_shape is not None else (means.shape[1],)
        if math.prod(event_shape) != means.shape[1]:
            raise ValueError(f"`event_shape` {event_shape} does not hold D = {means.shape[1]}.")
        eigvals, eigvecs = jnp.linalg.eigh(covs)
        if not bool(jnp.all(eigvals > 0)):
            raise ValueError("every covariance in `covs` must be positive definite.")
        log_w = jnp.log(weights / jnp.sum(weights))
        return cls(log_w, means, eigvals, eigvecs, event_shape)

    @classmethod
    def diagonal(cls, weights, means, variances, event_shape=None) -> GaussianMixture:
        """A mixture of axis-aligned Gaussians: weights ``[K]``, means and variances ``[K, D]``."""
        weights = jnp.asarray(weights, jnp.float32)
        means = jnp.asarray(means, jnp.float32)
        variances = jnp.asarray(variances, jnp.float32)
        if means.ndim != 2 or variances.shape != means.shape or weights.shape != means.shape[:1]:
            raise ValueError(
                "`weights`, `means`, `variances` must be [K], [K, D], [K, D]; got "
                f"{weights.shape}, {means.shape}, {variances.shape}."
            )
        if not bool(jnp.all(variances > 0)):
            raise ValueError("every entry of `variances` must be positive.")
        event_shape = tuple(event_shape) if event_shape is not None else (means.shape[1],)
        if math.prod(event_shape) != means.shape[1]:
            raise ValueError(f"`event_shape` {event_shape} does not hold D = {means.shape[1]}.")
        return cls(jnp.log(weights / jnp.sum(weights)), means, variances, None, event_shape)

    @classmethod
    def gaussian(cls, mean, cov, event_shape=None) -> GaussianMixture:
        """A single Gaussian with mean ``[D]`` and covariance ``[D, D]``."""
        return cls.from_covariances(
            jnp.ones(1), jnp.asarray(mean)[None], jnp.asarray(cov)[None], event_shape
        )

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _flat(self, x: Array) -> Array:
        return jnp.reshape(x, (x.shape[0], self.dim))

    def component_log_probs(self, x: Array, mean_coef: Array, var: Array) -> Array:
        r"""``[B, K]`` log-densities :math:`\log \mathcal{N}(x; m\mu_k, m^2\Sigma_k + v I)` with
        per-sample ``mean_coef`` :math:`m` and ``var`` :math:`v`, both ``[B]``."""
        xf = self._flat(x)
        centered = xf[:, None, :] - mean_coef[:, None, None] * self.means[None]  # [B, K, D]
        proj = centered
        if self.eigvecs is not None:
            proj = jnp.einsum("bkd,kde->bke", centered, self.eigvecs)
        v = mean_coef[:, None, None] ** 2 * self.eigvals[None] + var[:, None, None]
        return -0.5 * jnp.sum(proj**2 / v + jnp.log(2 * jnp.pi * v), axis=-1)

    def log_prob(self, x: Array) -> Array:
        """Exact :math:`\\log p_0(x)` for ``x`` of shape ``[B, *event]``; returns ``[B]``."""
        b = x.shape[0]
        lp = self.component_log_probs(x, jnp.ones(b), jnp.zeros(b))
        return jax.nn.logsumexp(lp + self.log_weights[None], axis=-1)

    def marginal_log_prob(self, sde: SDE, x: Array, t: Array) -> Array:
        """Exact :math:`\\log p_t(x)` under the forward ``sde``; ``x`` ``[B, *event]``, ``t`` ``[B]``."""
        check_time(x, t)
        m, s = sde.marginal_coefs(t)
        lp = self.component_log_probs(x, m, s**2)
        return jax.nn.logsumexp(lp + self.log_weights[None], axis=-1)

    def score(self, sde: SDE, x: Array, t: Array) -> Array:
        r"""Exact score :math:`\nabla_x \log p_t(x)`, shape of ``x``."""
        return jax.grad(lambda y: jnp.sum(self.marginal_log_prob(sde, y, t)))(x)

    def score_fn(self, sde: SDE):
        """The exact ``score_fn(x, t)`` the samplers and the likelihood take."""
        return lambda x, t: self.score(sde, x, t)

    def sample(self, key: Array, n: int) -> Array:
        """``n`` exact samples of :math:`p_0`, shape ``[n, *event]``."""
        return self.marginal_sample(key, n, None, None)

    def marginal_sample(self, key: Array, n: int, sde: SDE | None, t: Array | None) -> Array:
        """``n`` exact samples of :math:`p_t` (of :math:`p_0` when ``sde`` is None), ``t`` ``[n]``."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(n,))
        if sde is None:
            m, s = jnp.ones(n), jnp.zeros(n)
        else:
            m, s = sde.marginal_coefs(t)
        scale = jnp.sqrt(m[:, None] ** 2 * self.eigvals[comp] + s[:, None] ** 2)  # [n, D]
        z = jax.random.normal(k_noise, (n, self.dim))
        noise = scale * z
        if self.eigvecs is not None:
            noise = jnp.einsum("nde,ne->nd", self.eigvecs[comp], noise)
        x = m[:, None] * self.means[comp] + noise
        return jnp.reshape(x, (n, *self.event_shape))

    def mean(self) -> Array:
        """Exact mean of :math:`p_0`, shape ``[*event]``."""
        w = jnp.exp(self.log_weights)
        return jnp.reshape(w @ self.means, self.event_shape)

    def covariance(self) -> Array:
        """Exact ``[D, D]`` covariance of :math:`p_0` (events flattened)."""
        w = jnp.exp(self.log_weights)
        if self.eigvecs is None:
            covs = jax.vmap(jnp.diag)(self.eigvals)
        else:
            covs = jnp.einsum("kde,ke,kfe->kdf", self.eigvecs, self.eigvals, self.eigvecs)
        mu = w @ self.means
        centered = self.means - mu[None]
        return jnp.einsum("k,kdf->df", w, covs + centered[:, :, None] * centered[:, None, :])

    def fisher_trace(self, sde: SDE, t: Array) -> Array:
        r""":math:`\mathbb{E}_{p_t}\|\nabla \log p_t\|^2 = \operatorname{tr}((m^2\Sigma+s^2I)^{-1})`
        for a single Gaussian; ``t`` ``[B]``, returns ``[B]``."""
        if self.num_components != 1:
            raise ValueError("`fisher_trace` has a closed form only for a single Gaussian (K = 1).")
        m, s = sde.marginal_coefs(t)
        return jnp.sum(1.0 / (m[:, None] ** 2 * self.eigvals[0][None] + s[:, None] ** 2), axis=-1)


def ring_mixture() -> GaussianMixture:
    r"""A 2-D test distribution with structure at several scales: 8 axis-aligned Gaussians with
    means :math:`2(\cos\frac{2\pi k}{8}, \sin\frac{2\pi k}{8})` and weights proportional to
    :math:`k + 1`, :math:`k = 0, \dots, 7`; even :math:`k` have standard deviations
    :math:`(0.1, 0.1)`, odd :math:`k` :math:`(0.3, 0.2)`. The largest distance between two of 20,000 of
    its samples is about 6. The sample-quality benchmark (``benchmarks/quality_vs_nfe.py``) and the
    few-step sampler tests use it.
    """
    k = np.arange(8)
    angle = 2 * np.pi * k / 8
    means = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1)
    std = np.where(k % 2 == 0, 0.1, 0.3)
    variances = np.stack([std**2, (0.5 * std + 0.05) ** 2], 1)
    return GaussianMixture.diagonal(k + 1.0, means, variances)
