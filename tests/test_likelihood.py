"""Exact likelihood through the probability-flow ODE, against closed-form log-densities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussians import image_gaussian_full, mixture_2d
from hlo import loop_bodies_and_host_ops

from sde_jax import likelihood
from sde_jax.closed_form import GaussianMixture
from sde_jax.likelihood import bits_per_dim, log_likelihood
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
EPS = 1e-5


def _centered_mixture():
    """mixture_2d shifted to mean zero: the prior N(0, sigma_max^2 I) then matches p_T to
    second order, while the uncentered mixture's mean gives VE a per-sample prior error of about
    z . mu / sigma_max^2 ~ 0.05 nats that belongs to the model, not to the ODE solve."""
    gm = mixture_2d()
    return gm.replace(means=gm.means - jnp.reshape(gm.mean(), (1, -1)))


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_matches_exact_log_density(name):
    sde = SDES[name]
    gm = _centered_mixture()
    x = gm.sample(jax.random.key(1), 64)
    exact = gm.marginal_log_prob(sde, x, jnp.full((64,), EPS))
    logp, _, nfe = log_likelihood(
        jax.random.key(2), gm.score_fn(sde), sde, x, trace="exact", eps=EPS
    )
    assert float(jnp.mean(jnp.abs(logp - exact))) < 0.01
    assert 20 < int(nfe) < 1000


@pytest.mark.parametrize("name", list(SDES))
def test_ode_part_is_accurate_to_solver_tolerance(name):
    """Replacing the prior by the exact p_T leaves only the ODE and divergence error."""
    sde = SDES[name]
    gm = mixture_2d()
    x = gm.sample(jax.random.key(1), 64)
    exact = gm.marginal_log_prob(sde, x, jnp.full((64,), EPS))
    logp, z, _ = log_likelihood(jax.random.key(2), gm.score_fn(sde), sde, x, trace="exact")
    ode_only = logp - sde.prior_logp(z) + gm.marginal_log_prob(sde, z, jnp.ones(64))
    # Measured 2e-5 (mean) at rtol = atol = 1e-5, and ten times less at 1e-6.
    assert float(jnp.mean(jnp.abs(ode_only - exact))) < 2e-4
    assert float(jnp.max(jnp.abs(ode_only - exact))) < 2e-3


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("trace", ["rademacher", "gaussian"])
def test_hutchinson_estimates_are_unbiased(name, trace):
    sde = SDES[name]
    gm = mixture_2d()
    n_points, n_probes = 8, 256
    x = gm.sample(jax.random.key(3), n_points)
    reference, _, _ = log_likelihood(jax.random.key(0), gm.score_fn(sde), sde, x, trace="exact")
    # Each copy of a point gets its own probe, held fixed along its trajectory.
    x_rep = jnp.repeat(x, n_probes, axis=0)
    est, _, _ = log_likelihood(jax.random.key(4), gm.score_fn(sde), sde, x_rep, trace=trace)
    est = np.asarray(est, np.float64).reshape(n_points, n_probes)
    dev = est - np.asarray(reference, np.float64)[:, None]
    se = dev.std(axis=1, ddof=1) / np.sqrt(n_probes)
    assert np.all(se > 0)
    # Per point within 4 standard errors; pooled over the points within 3.
    np.testing.assert_array_less(np.abs(dev.mean(axis=1)), 4 * se)
    pooled_se = np.sqrt(np.sum(se**2)) / n_points
    assert abs(dev.mean()) < 3 * pooled_se


@pytest.mark.parametrize("name", list(SDES))
def test_bits_per_dim_on_gaussian_image(name):
    sde = SDES[name]
    gm = image_gaussian_full()
    x = gm.sample(jax.random.key(5), 4)
    logp, z, _ = log_likelihood(jax.random.key(6), gm.score_fn(sde), sde, x, trace="exact")
    # The model's density is exact up to its prior; measure it against the exact p_T as above.
    logp = logp - sde.prior_logp(z) + gm.marginal_log_prob(sde, z, jnp.ones(4))
    exact = gm.marginal_log_prob(sde, x, jnp.full((4,), EPS))
    bpd = bits_per_dim(logp, gm.event_shape)
    bpd_exact = -np.asarray(exact, np.float64) / (192 * np.log(2)) + 7.0
    np.testing.assert_allclose(bpd, bpd_exact, atol=1e-4)


def test_bits_per_dim_offsets_follow_the_data_scaling():
    d = (4, 4, 3)
    n = np.prod(d)
    # Uniform noise over 256 levels carries exactly 8 bits per dimension in either scaling:
    # density 1 on [0, 1]^D, density 2^-D on [-1, 1]^D.
    np.testing.assert_allclose(bits_per_dim(jnp.zeros(1), d, data_range=(0.0, 1.0)), [8.0])
    np.testing.assert_allclose(bits_per_dim(jnp.array([-n * np.log(2)]), d), [8.0], rtol=1e-6)
    # The offsets of the reference code: 7 for centered data, 8 for data in [0, 1].
    assert float(bits_per_dim(jnp.zeros(1), d)[0]) == 7.0
    assert float(bits_per_dim(jnp.zeros(1), d, data_range=(0.0, 1.0))[0]) == 8.0
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(jnp.zeros(1), d, data_range=(1.0, 0.0))


def test_log_likelihood_is_differentiable():
    """d log p / dx through the solve recovers the exact score of p_eps."""
    sde = VPSDE()
    gm = GaussianMixture.gaussian(jnp.zeros(2), jnp.array([[0.6, 0.25], [0.25, 0.4]]))
    x = gm.sample(jax.random.key(7), 8)
    total = lambda y: jnp.sum(
        log_likelihood(jax.random.key(0), gm.score_fn(sde), sde, y, trace="exact")[0]
    )
    grad = jax.grad(total)(x)
    np.testing.assert_allclose(grad, gm.score(sde, x, jnp.full((8,), EPS)), rtol=2e-3, atol=2e-3)


def test_log_likelihood_compiles_once_and_runs_on_device():
    sde = VESDE()
    gm = mixture_2d()
    traces = []

    def score_fn(x, t):
        traces.append(None)
        return gm.score(sde, x, t)

    x = gm.sample(jax.random.key(0), 4)
    log_likelihood(jax.random.key(1), score_fn, sde, x)
    n = len(traces)
    log_likelihood(jax.random.key(2), score_fn, sde, x + 0.1)
    assert len(traces) == n > 0
    lowered = likelihood._log_likelihood.lower(
        jax.random.key(0),
        sde,
        x,
        1e-5,
        1e-5,
        1e-5,
        score_fn=gm.score_fn(sde),
        trace="rademacher",
        solver="dopri5",
        max_steps=64,
    )
    n_loops, host_ops = loop_bodies_and_host_ops(lowered.compile().as_text())
    assert n_loops >= 1 and host_ops == []


def test_bad_input():
    sde = VPSDE()
    score_fn = mixture_2d().score_fn(sde)
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=r"`trace` must be one of.*exact"):
        log_likelihood(jax.random.key(0), score_fn, sde, x, trace="hutchinson")
    with pytest.raises(ValueError, match="`solver` must be one of"):
        log_likelihood(jax.random.key(0), score_fn, sde, x, solver="rk45")
    with pytest.raises(ValueError, match="`x` must be"):
        log_likelihood(jax.random.key(0), score_fn, sde, jnp.zeros(3))
