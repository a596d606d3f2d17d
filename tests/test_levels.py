"""Noise levels of the few-step samplers: s(t) and its inverse, the schedules, the denoiser and the
jump to s_max, against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax import fast_sampling
from sde_jax.closed_form import GaussianMixture
from sde_jax.sampling import SCHEDULES, levels
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


@pytest.mark.parametrize("sde_name", list(SDES))
def test_time_of_inverts_noise_to_signal(sde_name):
    sde = SDES[sde_name]
    t = jnp.linspace(sde.sampling_eps, sde.T, 101)
    s = levels.noise_to_signal(sde, t)
    assert bool(jnp.all(jnp.diff(s) > 0))
    np.testing.assert_allclose(levels.time_of(sde, s), t, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_denoiser_is_the_exact_posterior_mean(sde_name):
    """For Gaussian data N(mu, C), E[x0 | x_t] = mu + alpha C (alpha^2 C + sigma^2 I)^-1 (x - alpha mu)."""
    sde = SDES[sde_name]
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    cov, mu = a @ a.T + 0.2 * np.eye(3), rng.normal(size=3)
    gm = GaussianMixture.gaussian(mu, cov)
    for t in (0.01, 0.3, 0.9):
        alpha, sigma = (float(v) for v in sde.marginal_coefs(jnp.asarray(t)))
        x = rng.normal(size=(4, 3)) * 3.0
        s = levels.noise_to_signal(sde, jnp.asarray(t, jnp.float32))
        d = levels.denoiser(sde, gm.score_fn(sde), jnp.asarray(x / alpha, jnp.float32), s)
        gain = alpha * cov @ np.linalg.inv(alpha**2 * cov + sigma**2 * np.eye(3))
        expected = mu + (x - alpha * mu) @ gain.T
        np.testing.assert_allclose(d, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_edm_schedule_endpoints_and_order():
    s = levels.edm_schedule(jnp.arange(12), 10, 80.0, 0.002, 7.0)
    np.testing.assert_allclose(s[jnp.array([0, 9])], [80.0, 0.002], rtol=1e-5)
    assert bool(jnp.all(jnp.diff(s[:10]) < 0)) and bool(jnp.all(s[10:] == 0))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_run_from_s_max_to_s_min(sde_name, schedule):
    """Every schedule starts at s(T), ends at s(eps) after n - 1 decreasing steps, then is 0."""
    sde = SDES[sde_name]
    eps = jnp.asarray(sde.sampling_eps, jnp.float32)
    s = levels.schedule_level(sde, schedule, jnp.arange(12), 10, eps, jnp.float32(7.0))
    ends = levels.noise_to_signal(sde, jnp.asarray([sde.T, sde.sampling_eps], jnp.float32))
    np.testing.assert_allclose(s[jnp.array([0, 9])], ends, rtol=1e-4)
    assert bool(jnp.all(jnp.diff(s[:10]) < 0)) and bool(jnp.all(s[10:] == 0))
    if schedule == "logsnr":  # Equal steps in log s.
        np.testing.assert_allclose(jnp.diff(jnp.log(s[:10])), jnp.log(ends[1] / ends[0]) / 9, 1e-3)
    if schedule == "time_uniform":
        t = levels.time_of(sde, s[:10])
        np.testing.assert_allclose(jnp.diff(t), (sde.sampling_eps - sde.T) / 9, rtol=1e-3)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_s_max_jumps_then_runs_the_schedule_below_it(sde_name, schedule):
    """With s_max: s_0 = s(T), then n - 1 levels of the schedule from s_max down to s(eps)."""
    sde = SDES[sde_name]
    eps = jnp.asarray(sde.sampling_eps, jnp.float32)
    i = jnp.arange(12)
    s = levels.schedule_level(sde, schedule, i, 10, eps, jnp.float32(7.0), jnp.float32(5.0))
    plain = levels.schedule_level(sde, schedule, i, 10, eps, jnp.float32(7.0))
    np.testing.assert_allclose(s[jnp.array([0, 1, 9])], [plain[0], 5.0, plain[9]], rtol=1e-4)
    assert bool(jnp.all(jnp.diff(s[:10]) < 0)) and bool(jnp.all(s[10:] == 0))
    if schedule == "logsnr":
        np.testing.assert_allclose(jnp.diff(jnp.log(s[1:10])), jnp.log(s[9] / 5.0) / 8, 1e-3)
    if schedule == "time_uniform":
        t = levels.time_of(sde, s[1:10])
        t_hi = levels.time_of(sde, jnp.float32(5.0))
        np.testing.assert_allclose(jnp.diff(t), (sde.sampling_eps - t_hi) / 8, rtol=1e-3)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_jump_to_s_max_is_exact_for_gaussian_data(sde_name):
    """For data N(0, c^2) the probability-flow path keeps y / sqrt(c^2 + s^2) constant. The
    midpoint rule in u = 1/s is exact for a D affine in u, which it is here up to a relative
    O((c/s)^2): at s_max = 5c the jump is within 2e-4 s_max of the exact point (measured: float32
    rounding, 2e-5 to 5e-5), where D held at s(T) (the left-point rule) would be off by about
    c^2 / (2 s_max^2) = 2e-2 s_max."""
    sde, c, s_max = SDES[sde_name], 0.5, 2.5

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coefs(t)
        return -x / (alpha**2 * c**2 + sigma**2)[:, None]

    f32 = lambda v: jnp.asarray(v, jnp.float32)
    args = (f32(10), f32(sde.sampling_eps), f32(7.0), f32(s_max), None, None)
    grid = levels.Grid(sde, "logsnr", args)
    y0 = levels.scaled_prior_sample(sde, jax.random.key(0), (256, 1))
    y1, first = levels.jump_to_s_max(sde, score_fn, grid, y0)
    exact = y0 * np.sqrt(c**2 + s_max**2) / np.sqrt(c**2 + float(grid.s_top) ** 2)
    assert first == 1
    assert float(jnp.max(jnp.abs(y1 - exact))) < 2e-4 * s_max


def test_fast_sampling_keeps_the_old_import_paths():
    assert fast_sampling.time_of is levels.time_of
    assert fast_sampling.SCHEDULES is SCHEDULES
