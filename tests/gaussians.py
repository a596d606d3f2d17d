"""Closed-form targets shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.closed_form import GaussianMixture

IMAGE_SHAPE = (8, 8, 3)


def mixture_2d() -> GaussianMixture:
    """Two well-separated, unequally weighted, correlated 2-D components."""
    return GaussianMixture.from_covariances(
        jnp.array([0.3, 0.7]),
        jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
        jnp.array([[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.4]]]),
    )


def image_gaussian_full() -> GaussianMixture:
    """A Gaussian at an image shape with a full, non-isotropic covariance (eigenvalues 0.05..2)."""
    d = int(np.prod(IMAGE_SHAPE))
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.geomspace(0.05, 2.0, d)
    cov = (q * eig) @ q.T
    mean = 0.5 * np.sin(np.arange(d))
    return GaussianMixture.gaussian(mean, cov, IMAGE_SHAPE)


def image_gaussian_diag() -> GaussianMixture:
    """A Gaussian at an image shape with per-pixel variances 0.05..2 (cheap to sample with)."""
    d = int(np.prod(IMAGE_SHAPE))
    var = np.random.default_rng(1).permutation(np.geomspace(0.05, 2.0, d))
    mean = 0.5 * np.cos(np.arange(d))
    return GaussianMixture.diagonal(np.ones(1), mean[None], var[None], IMAGE_SHAPE)


def energy_distance(x: jax.Array, y: jax.Array) -> float:
    """The (V-statistic) energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between two sample sets."""
    x = jnp.reshape(x, (x.shape[0], -1))
    y = jnp.reshape(y, (y.shape[0], -1))

    def mean_dist(a, b):
        d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
        return jnp.mean(jnp.sqrt(jnp.maximum(d2, 0.0)))

    return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def sample_stats(gm: GaussianMixture, x: jax.Array, reference: jax.Array) -> np.ndarray:
    """Energy distance to a reference set, and distances of the first two moments to the truth."""
    xf = jnp.reshape(x, (x.shape[0], -1))
    mean_err = float(jnp.linalg.norm(jnp.mean(xf, 0) - jnp.reshape(gm.mean(), -1)))
    cov_err = float(jnp.linalg.norm(jnp.cov(xf.T) - gm.covariance()))
    return np.array([energy_distance(x, reference), mean_err, cov_err])


def exact_sample_bound(
    gm: GaussianMixture, n_samples: int, reps: int, null_seed: int
) -> tuple[jax.Array, np.ndarray]:
    """A reference set of exact samples, and the acceptance bound of :func:`sample_stats`.

    The bound is the mean plus four standard deviations, per statistic, of the statistics between
    ``reps`` independent exact sets (keys ``null_seed + i``) and the reference: an exact sampler
    exceeds it rarely, while a biased one (e.g. too few corrector steps) exceeds it by far.
    """
    reference = gm.sample(jax.random.key(10_000), n_samples)
    null = np.stack(
        [
            sample_stats(gm, gm.sample(jax.random.key(null_seed + i), n_samples), reference)
            for i in range(reps)
        ]
    )
    return reference, null.mean(0) + 4 * null.std(0, ddof=1)
