"""Given noise levels (the ``levels`` option of every few-step sampler) and the levels fitted to a
model by ``optimize_levels``, against the schedules they replace and against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.closed_form import GaussianMixture, ring_mixture
from sde_jax.sampling import (
    FEW_STEP_METHODS,
    TUNABLE_METHODS,
    levels_from_weights,
    optimize_levels,
    sample,
    schedule_level,
    teacher_solve,
)
from sde_jax.sampling.levels import noise_to_signal, prior_level, scaled_prior_sample
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
# VP in the default run, sub-VP and VE with -m slow (the samplers only see s, so the SDEs differ
# only in s(T), s(eps) and t(s)).
SDE_PARAMS = [
    "vp",
    pytest.param("subvp", marks=pytest.mark.slow),
    pytest.param("ve", marks=pytest.mark.slow),
]
DEFAULT_SCHEDULE = {"dpm_solver_3m": "logsnr", "unipc": "logsnr"}


def _schedule_levels(sde, schedule, n):
    eps = jnp.float32(sde.sampling_eps)
    return jnp.stack(
        [
            schedule_level(sde, schedule, jnp.int32(i), jnp.int32(n), eps, jnp.float32(7.0))
            for i in range(n)
        ]
    )


@pytest.mark.parametrize("sde_name", SDE_PARAMS)
@pytest.mark.parametrize("method", FEW_STEP_METHODS)
def test_given_levels_reproduce_the_schedule(sde_name, method):
    """The schedule's own levels, given as ``levels``, give the same samples and NFE."""
    sde, gm = SDES[sde_name], ring_mixture()
    schedule = DEFAULT_SCHEDULE.get(method, "edm")
    levels = _schedule_levels(sde, schedule, 6)
    key = jax.random.key(3)
    x_ref, nfe_ref = sample(key, gm.score_fn(sde), sde, (256, 2), method=method, num_steps=6)
    x, nfe = sample(key, gm.score_fn(sde), sde, (256, 2), method=method, levels=levels)
    assert int(nfe) == int(nfe_ref)
    # Same arithmetic but for the levels' rounding (each a float32 either way): a few ulps of the
    # data's scale, 2.
    np.testing.assert_allclose(np.asarray(x), np.asarray(x_ref), atol=2e-4, rtol=0)


@pytest.mark.parametrize("method", FEW_STEP_METHODS)
def test_query_levels_equal_to_the_levels_change_nothing(method):
    """``query_levels`` = ``levels`` is the plain sampler; other query levels change the samples
    (each step evaluates the denoiser at its query level)."""
    sde, gm = VESDE(), ring_mixture()
    levels = _schedule_levels(sde, "logsnr", 6)
    run = lambda **kw: np.asarray(
        sample(jax.random.key(1), gm.score_fn(sde), sde, (128, 2), method=method, **kw)[0]
    )
    plain = run(levels=levels)
    np.testing.assert_array_equal(run(levels=levels, query_levels=levels), plain)
    assert np.max(np.abs(run(levels=levels, query_levels=1.5 * levels) - plain)) > 0.01


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(query_levels=[1.0, 0.5]), "needs `levels`"),
        (dict(levels="top", query_levels=[1.0, 0.5]), "shape of `levels`"),
        (dict(levels="top", query_levels=[1.0, 0.0, 0.5]), "finite and positive"),
        (dict(levels=[1.0, 0.5]), "prior's level"),
        (dict(levels=[[1.0, 0.5]]), "1-D"),
        (dict(levels="top-increasing"), "strictly decreasing"),
        (dict(levels="top", num_steps=3), r"\['num_steps'\] cannot be given"),
        (dict(levels="top", schedule="edm", s_max=2.0), r"\['s_max', 'schedule'\]"),
    ],
)
def test_bad_levels_are_refused(options, match):
    sde = VPSDE()
    top = float(prior_level(sde))
    if options.get("levels") == "top":
        options = dict(options, levels=[top, 1.0, 0.1])
    elif options.get("levels") == "top-increasing":
        options = dict(options, levels=[top, 0.1, 1.0])
    with pytest.raises(ValueError, match=match):
        sample(
            jax.random.key(0), ring_mixture().score_fn(sde), sde, (8, 2), method="ddim", **options
        )


@pytest.mark.parametrize("sde_name", list(SDES))
def test_teacher_solve_is_the_exact_flow_for_gaussian_data(sde_name):
    """For N(mu, c^2 I) data the flow in (y, s) is y(s) = mu + (y_T - mu) sqrt(c^2 + s^2) /
    sqrt(c^2 + s_T^2), and the last step D(y; s) = mu + c^2 (y - mu) / (c^2 + s^2)."""
    sde, mu, c = SDES[sde_name], jnp.array([[0.5, -1.0]]), 0.3
    gm = GaussianMixture.gaussian(np.asarray(mu[0]), c**2 * np.eye(2))
    y = scaled_prior_sample(sde, jax.random.key(1), (64, 2))
    s_min = noise_to_signal(sde, jnp.float32(sde.sampling_eps))
    x, nfe = teacher_solve(gm.score_fn(sde), sde, y, s_min)
    s_top = prior_level(sde)
    y_end = mu + (y - mu) * jnp.sqrt(c**2 + s_min**2) / jnp.sqrt(c**2 + s_top**2)
    expected = mu + c**2 * (y_end - mu) / (c**2 + s_min**2)
    # rtol 1e-5 per step of a solve of ~10 units of lambda, on values of order 1.
    np.testing.assert_allclose(np.asarray(x), np.asarray(expected), atol=2e-4, rtol=0)
    assert int(nfe) > 1


# UniPC and DPM-Solver++(3M) solve the linear systems that went singular; the others are slow tests.
_SINGULAR = ("unipc", "dpm_solver_3m")


@pytest.mark.parametrize(
    "method",
    [m if m in _SINGULAR else pytest.param(m, marks=pytest.mark.slow) for m in TUNABLE_METHODS],
)
def test_levels_are_differentiable_at_equal_steps(method):
    """Equal log-ratios (the logsnr start) make the multistep solvers' unused linear systems
    singular; the gradient must stay finite there and nearby."""
    sde, gm = VPSDE(), ring_mixture()
    eps = jnp.float32(sde.sampling_eps)

    def loss(theta, delta):
        levels = levels_from_weights(sde, theta, eps)
        x, _ = sample(jax.random.key(5), gm.score_fn(sde), sde, (16, 2), method=method,
                      levels=levels, query_levels=levels * jnp.exp(delta))  # fmt: skip
        return jnp.mean(x**2)

    # Compiled whole, as optimize_levels runs it.
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for theta in (jnp.zeros(9), jnp.full(9, 0.05).at[::2].set(-0.05)):
        grads = grad(theta, jnp.zeros(10))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize("sde_name", SDE_PARAMS)
def test_optimized_levels_halve_the_held_out_error(sde_name):
    """On the ring mixture with its exact score, 5 levels of DPM-Solver++(3M) and their query levels
    fitted in 150 Adam steps: valid levels (s(T) first, s(eps) last, decreasing), NFE 5, and the
    held-out squared distance to the ODE at most half that of the logsnr start."""
    sde, gm = SDES[sde_name], ring_mixture()
    fitted, report = optimize_levels(
        jax.random.key(0), gm.score_fn(sde), sde, (512, 2), method="dpm_solver_3m", num_steps=5,
        iterations=150,
    )  # fmt: skip
    lv = np.asarray(fitted["levels"])
    assert fitted["query_levels"].shape == (5,) and bool(jnp.all(fitted["query_levels"] > 0))
    assert lv.shape == (5,) and np.all(np.diff(lv) < 0)
    np.testing.assert_allclose(lv[0], float(prior_level(sde)), rtol=1e-5)
    s_min = float(noise_to_signal(sde, jnp.float32(sde.sampling_eps)))
    np.testing.assert_allclose(lv[-1], s_min, rtol=1e-4)
    assert report["nfe"] == 5 and report["held_out_samples"] == 128
    assert report["error_end"]["held_out"] < 0.5 * report["error_start"]["held_out"]
    assert report["error_end"]["fit"] <= report["error_start"]["fit"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="pc"), "method"),
        (dict(method="ddim", eta=0.5), "deterministic"),
        (dict(method="unipc", schedule="edm"), r"\['schedule'\]"),
        (dict(method="unipc", num_steps=1), "num_steps"),
        (dict(method="dpm_solver_2m", error_floor=0.0), "error_floor"),
    ],
)
def test_optimize_levels_refuses_what_it_cannot_fit(kwargs, match):
    sde = VPSDE()
    kwargs = {"num_steps": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        optimize_levels(jax.random.key(0), ring_mixture().score_fn(sde), sde, (8, 2), **kwargs)


@pytest.mark.parametrize("method", FEW_STEP_METHODS)
def test_z_is_the_prior_sample(method):
    """``z`` replaces the draw: passing the sampler's own prior draw changes nothing, and another
    z gives other samples."""
    sde, gm = VPSDE(), ring_mixture()
    key = jax.random.key(2)
    # edm and ddim draw their prior sample with the first half of the key, the others with all.
    k_prior = jax.random.split(key)[0] if method.startswith(("edm", "ddim")) else key
    z = sde.prior_sampling(k_prior, (64, 2))
    x_ref, _ = sample(key, gm.score_fn(sde), sde, (64, 2), method=method, num_steps=5)
    x, _ = sample(key, gm.score_fn(sde), sde, (64, 2), method=method, num_steps=5, z=z)
    # The draw inside and outside the compiled sampler fuses differently: a few float32 ulps of
    # the prior's scale, carried through 5 steps.
    np.testing.assert_allclose(np.asarray(x), np.asarray(x_ref), atol=1e-4, rtol=0)
    x_other, _ = sample(key, gm.score_fn(sde), sde, (64, 2), method=method, num_steps=5, z=-z)
    assert np.max(np.abs(np.asarray(x_other) - np.asarray(x_ref))) > 0.1
    with pytest.raises(ValueError, match="`z` must have shape"):
        sample(key, gm.score_fn(sde), sde, (64, 2), method=method, num_steps=5, z=z[:8])


def _narrow_mixture():
    """5-D, 4 components with per-coordinate standard deviations 0.05 to 0.5 (the benchmark's
    second mixture)."""
    rng = np.random.default_rng(11)
    means = 3.0 * rng.normal(size=(4, 5))
    std = np.exp(rng.uniform(np.log(0.05), np.log(0.5), size=(4, 5)))
    return GaussianMixture.diagonal(np.array([0.5, 0.25, 0.15, 0.1]), means, std**2)


def test_fitted_levels_sample_a_narrow_mixture_at_10_nfe():
    """DPM-Solver++(2M) on 10 fitted levels samples a mixture with components of width 0.05: its
    samples' mean log-density is that of exact samples to within 0.1 nats (-0.064)."""
    sde, gm = VPSDE(), _narrow_mixture()
    score_fn = gm.score_fn(sde)
    fitted, _ = optimize_levels(jax.random.key(5), score_fn, sde, (2048, 5),
                                method="dpm_solver_2m", num_steps=10, iterations=1000)  # fmt: skip
    x, nfe = sample(jax.random.key(3), score_fn, sde, (8000, 5), method="dpm_solver_2m", **fitted)
    exact = gm.sample(jax.random.key(2), 8000)
    gap = float(jnp.mean(gm.log_prob(x)) - jnp.mean(gm.log_prob(exact)))
    # The per-sample log-density has s.d. 1.6 here: two sets of 8,000 differ by 0.025 (s.e.);
    # PC with 1,000 steps: -0.058; fitted to the mean square in this setting: -3.18.
    assert int(nfe) == 10 and abs(gap) < 0.1, gap
