"""Few-step samplers (EDM Heun, DPM-Solver++(2M) and (3M), UniPC, DDIM, fixed-grid ODE) and the
`sample` entry point, driven by the exact score of closed-form targets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussians import exact_sample_bound, image_gaussian_diag, mixture_2d, sample_stats
from hlo import loop_bodies_and_host_ops

from sde_jax.closed_form import ring_mixture
from sde_jax.sampling import (
    FEW_STEP_METHODS,
    METHODS,
    SOLVERS,
    ddim,
    edm,
    levels,
    method_options,
    multistep,
    ode_sample,
    pc_sample,
    sample,
    solver_nfe,
)
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
N_SAMPLES = 2000
NULL_REPS = 20

# (method, options, (small, mid, large) num_steps). The small and mid budgets are chosen so that
# their error is far above the exact-sample spread for every SDE (measured: energy distance 0.04 to
# 60 against a bound of about 0.005), and the large one so that the sampler has converged; the
# test checks the ordering small > mid > bound >= large.
CASES = {
    "edm_heun": ("edm_heun", {}, (4, 8, 32)),
    "edm_stochastic": ("edm_stochastic", {"s_churn": 10.0}, (4, 8, 64)),
    "dpm_solver_2m": ("dpm_solver_2m", {}, (2, 8, 48)),
    "dpm_solver_2m_logsnr": ("dpm_solver_2m", {"schedule": "logsnr"}, (2, 4, 64)),
    "dpm_solver_3m": ("dpm_solver_3m", {}, (2, 4, 32)),
    "unipc": ("unipc", {}, (2, 4, 32)),
    "edm_heun_time_uniform": ("edm_heun", {"schedule": "time_uniform"}, (2, 4, 32)),
    "ddim": ("ddim", {"eta": 0.0}, (2, 8, 128)),
    "ddim_eta1": ("ddim", {"eta": 1.0}, (2, 8, 256)),
    # s_max = 20, about three times the largest distance between two likely points of mixture_2d:
    # the jump from s(T) is then accurate well beyond the exact-sample spread.
    "unipc_s_max": ("unipc", {"s_max": 20.0}, (3, 8, 32)),
    "edm_heun_s_max": ("edm_heun", {"s_max": 20.0}, (3, 8, 32)),
    "ode_fixed_heun": ("ode", {"controller": "fixed", "solver": "heun"}, (3, 4, 64)),
    "ode_fixed_tsit5": ("ode", {"controller": "fixed", "solver": "tsit5"}, (1, 2, 16)),
}


@functools.cache
def _null(target):
    """The exact distribution, a reference set and the acceptance bound (see
    :func:`gaussians.exact_sample_bound`)."""
    gm = {"mixture_2d": mixture_2d, "image": image_gaussian_diag}[target]()
    return gm, *exact_sample_bound(gm, N_SAMPLES, NULL_REPS, null_seed=30_000)


def _expected_nfe(method, options, n):
    if method in ("edm_heun", "edm_stochastic"):
        return 2 * n - 1 - ("s_max" in options)
    if method == "ode":
        return int(solver_nfe(SOLVERS[options["solver"]](), n)) + 1
    return n


# The fixed-grid diffrax solves compile slowest; one solver runs by default, the other is slow.
SLOW_CASES = ("ode_fixed_tsit5",)
DEFAULT_CASES = [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("case", DEFAULT_CASES)
def test_converges_to_exact_mixture_as_nfe_grows(sde_name, case):
    method, options, budgets = CASES[case]
    sde = SDES[sde_name]
    gm, reference, bound = _null("mixture_2d")
    score_fn = gm.score_fn(sde)  # One object for all budgets: one compiled program.
    results = []
    for n in budgets:
        x, nfe = sample(
            jax.random.key(7), score_fn, sde, (N_SAMPLES, 2), method=method, num_steps=n, **options
        )
        assert x.shape == (N_SAMPLES, 2) and bool(jnp.all(jnp.isfinite(x)))
        assert nfe.dtype == jnp.int32 and int(nfe) == _expected_nfe(method, options, n)
        results.append(sample_stats(gm, x, reference))
    ed = [r[0] for r in results]
    assert ed[0] > ed[1] > bound[0], f"energy distances {ed} do not decrease from above {bound[0]}"
    names = ("energy distance", "|mean error|", "|covariance error|_F")
    for name, s, b in zip(names, results[-1], bound, strict=True):
        assert s <= b, f"{name} {s:.5f} at num_steps={budgets[-1]} exceeds the bound {b:.5f}"


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_exact_image_gaussian(sde_name, case):
    method, options, budgets = CASES[case]
    sde = SDES[sde_name]
    gm, reference, bound = _null("image")
    x, _ = sample(
        jax.random.key(8),
        gm.score_fn(sde),
        sde,
        (N_SAMPLES, *gm.event_shape),
        method=method,
        num_steps=budgets[-1],
        **options,
    )
    assert x.shape == (N_SAMPLES, *gm.event_shape)
    stats = sample_stats(gm, x, reference)
    assert np.all(stats <= bound), f"stats {stats} exceed the bound {bound}"


@pytest.mark.parametrize("case", DEFAULT_CASES)
def test_any_event_shape(case):
    """The samplers take any event shape: an image-shaped Gaussian at a small batch."""
    method, options, budgets = CASES[case]
    sde = VPSDE()
    gm = image_gaussian_diag()
    x, _ = sample(
        jax.random.key(0),
        gm.score_fn(sde),
        sde,
        (8, *gm.event_shape),
        method=method,
        num_steps=budgets[1],
        **options,
    )
    assert x.shape == (8, *gm.event_shape) and bool(jnp.all(jnp.isfinite(x)))


@pytest.mark.parametrize("case", list(CASES))
def test_nfe_is_exact(case):
    """The reported NFE equals the number of score evaluations actually executed."""
    method, options, _ = CASES[case]
    sde = VESDE()
    gm = mixture_2d()
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(None))
        return gm.score(sde, x, t)

    x, nfe = sample(
        jax.random.key(0), counting_score, sde, (8, 2), method=method, num_steps=5, **options
    )
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == len(calls) == _expected_nfe(method, options, 5)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method", ["unipc", "dpm_solver_3m"])
def test_s_max_at_the_data_scale_samples_the_ring_at_20_nfe(sde_name, method):
    """The README's quality-against-NFE result, at the size of one exact-sample set: on the
    8-component ring (structure from 0.1 to 6), 20 NFE with s_max = 6 (about the largest
    distance between likely points) and s_min = 0.01 (eps = t(0.01), VP's default level) are
    within the spread of exact samples; without s_max the same budget spends most steps above the
    data's scale (VP, sub-VP) or far below its finest one (sub-VP)."""
    sde = SDES[sde_name]
    gm = ring_mixture()
    reference, bound = exact_sample_bound(gm, N_SAMPLES, NULL_REPS, null_seed=40_000)
    # VE's default s(eps) is sigma_min = 0.01 already.
    eps = None if sde_name == "ve" else float(levels.time_of(sde, jnp.float32(0.01)))
    x, nfe = sample(
        jax.random.key(9), gm.score_fn(sde), sde, (N_SAMPLES, 2), method=method,
        num_steps=20, s_max=6.0, eps=eps,
    )  # fmt: skip
    assert int(nfe) == 20
    stats = sample_stats(gm, x, reference)
    assert np.all(stats <= bound), f"stats {stats} exceed the bound {bound}"


def _gaussian_ode_error(sde, method, num_steps, **options):
    """Largest error against the exact probability-flow solution for 1-D data N(0, c^2): in
    y = x/alpha the ODE keeps y / sqrt(c^2 + s^2) constant, and the last step returns
    D(y; s_min) = y c^2 / (c^2 + s_min^2)."""
    c = 0.5

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coefs(t)
        return -x / (alpha**2 * c**2 + sigma**2)[:, None]

    x, _ = sample(
        jax.random.key(0), score_fn, sde, (64, 1), method=method, num_steps=num_steps, **options
    )
    s_max, s_min = (
        float(v)
        for v in levels.noise_to_signal(sde, jnp.asarray([sde.T, sde.sampling_eps], jnp.float32))
    )
    y_t = levels.scaled_prior_sample(sde, jax.random.key(0), (64, 1))
    y_min = y_t * np.sqrt(c**2 + s_min**2) / np.sqrt(c**2 + s_max**2)
    return float(jnp.max(jnp.abs(x - y_min * c**2 / (c**2 + s_min**2))))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_higher_order_solvers_are_more_accurate(sde_name):
    """On the same logSNR steps, DPM-Solver++(3M) and UniPC (order 3) solve the ODE more
    accurately than DPM-Solver++(2M), and UniPC's error falls faster than second order would
    (second order: 4x per doubling; measured: above 5x from 20 to 40 steps, 2M: 2.5 to 4x)."""
    sde = SDES[sde_name]
    err = lambda method, n: _gaussian_ode_error(sde, method, n, schedule="logsnr")
    two, three, uni = err("dpm_solver_2m", 40), err("dpm_solver_3m", 40), err("unipc", 40)
    assert three < 0.6 * two and uni < 0.1 * two, (two, three, uni)
    assert err("unipc", 20) > 5 * uni


def test_order_two_multistep_is_dpm_solver_2m():
    """The multistep solver at order 2 without lower-order final steps is DPM-Solver++(2M)."""
    sde = VPSDE()
    score_fn = mixture_2d().score_fn(sde)
    run = functools.partial(sample, jax.random.key(2), score_fn, sde, (64, 2), num_steps=7)
    c, _ = run(method="dpm_solver_3m", order=2, lower_order_final=False, schedule="edm")
    d, _ = run(method="dpm_solver_2m")
    np.testing.assert_allclose(c, d, rtol=1e-5, atol=1e-5)


def test_stochastic_without_churn_is_deterministic_heun():
    sde = VPSDE()
    score_fn = mixture_2d().score_fn(sde)
    a, _ = sample(jax.random.key(3), score_fn, sde, (64, 2), method="edm_heun", num_steps=6)
    b, _ = sample(
        jax.random.key(3), score_fn, sde, (64, 2), method="edm_stochastic", num_steps=6, s_churn=0.0
    )
    np.testing.assert_array_equal(a, b)


def test_sample_dispatches_to_pc_and_ode():
    sde = SubVPSDE(N=20)
    score_fn = mixture_2d().score_fn(sde)
    a, nfe_a = sample(jax.random.key(0), score_fn, sde, (16, 2), method="pc", snr=0.1)
    b, nfe_b = pc_sample(jax.random.key(0), score_fn, sde, (16, 2), snr=0.1)
    np.testing.assert_array_equal(a, b)
    assert int(nfe_a) == int(nfe_b) == 40
    c, _ = sample(jax.random.key(0), score_fn, sde, (16, 2), method="ode", rtol=1e-3, atol=1e-3)
    d, _ = ode_sample(jax.random.key(0), score_fn, sde, (16, 2), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize(
    "method", ["edm_heun", "edm_stochastic", "dpm_solver_2m", "unipc", "ddim", "ode"]
)
def test_new_budget_does_not_compile_again(method):
    sde = VESDE()
    gm = mixture_2d()
    traces = []

    def counted(x, t):
        traces.append(None)  # Runs once per trace, never at execution.
        return gm.score(sde, x, t)

    extra = {"controller": "fixed"} if method == "ode" else {}
    run = functools.partial(sample, score_fn=counted, sde=sde, shape=(16, 2), method=method)
    x1, _ = run(jax.random.key(0), num_steps=4, **extra)
    n_traces = len(traces)
    x2, _ = run(jax.random.key(0), num_steps=9, **extra)
    x3, _ = run(jax.random.key(0), num_steps=9, eps=1e-3, **extra)
    assert len(traces) == n_traces > 0
    assert not np.allclose(x1, x2) and not np.allclose(x2, x3)


@pytest.mark.parametrize(
    "method", ["edm_stochastic", "dpm_solver_2m", "dpm_solver_3m", "unipc", "ddim"]
)
def test_loop_runs_on_device(method):
    sde = VPSDE()
    gm = mixture_2d()
    fn = {
        "edm_stochastic": edm._edm_sample,
        "dpm_solver_2m": multistep._dpm_solver_2m_sample,
        "dpm_solver_3m": multistep._multistep_sample,
        "unipc": multistep._multistep_sample,
        "ddim": ddim._ddim_sample,
    }[method]
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    # The jump to s_max takes the other branch of the schedule (and of EDM's first step).
    s_max = f32(5.0) if method in ("edm_stochastic", "unipc") else None
    grid_args = (jnp.asarray(8, jnp.int32), f32(1e-3), f32(7.0), s_max, None, None)
    args = [jax.random.key(0), sde, grid_args, None]
    kwargs = dict(score_fn=gm.score_fn(sde), shape=(4, 2), schedule="logsnr")
    if method == "edm_stochastic":
        args += [f32(1.0), f32(0.0), f32(1e3), f32(1.0)]
        kwargs["churn"] = True
    if method == "ddim":
        args.append(f32(1.0))
    if method in ("dpm_solver_3m", "unipc"):
        args += [jnp.asarray(3, jnp.int32), jnp.asarray(True)]
        kwargs["unipc"] = method == "unipc"
    n_loops, host_ops = loop_bodies_and_host_ops(fn.lower(*args, **kwargs).compile().as_text())
    assert n_loops >= 1 and host_ops == []


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        (
            "heun2",
            {},
            r"`method` must be one of \['ddim', 'dpm_solver_2m', 'dpm_solver_3m', 'edm_heun'",
        ),
        ("ddim", dict(s_churn=1.0), r"method 'ddim' takes no option\(s\) \['s_churn'\]"),
        ("pc", dict(num_steps=10), r"method 'pc' takes no option\(s\) \['num_steps'\]"),
        ("edm_heun", dict(num_steps=1), "`num_steps` must be an int >= 2"),
        ("dpm_solver_2m", dict(num_steps=2.5), "`num_steps` must be an int >= 2"),
        ("ddim", dict(rho=0.0), "`rho` must be > 0"),
        ("edm_heun", dict(schedule="cosine"), r"`schedule` must be one of \['edm', 'logsnr'"),
        ("unipc", dict(order=4), "`order` must be 1, 2 or 3"),
        ("dpm_solver_3m", dict(order=True), "`order` must be 1, 2 or 3"),
        ("unipc", dict(lower_order_final=1), "`lower_order_final` must be a bool"),
        ("ode", dict(schedule="logsnr"), r"method 'ode' takes no option\(s\) \['schedule'\]"),
        ("ddim", dict(eta=1.5), r"`eta` must lie in \[0, 1\]"),
        ("edm_stochastic", dict(s_churn=-1.0), "`s_churn` must be >= 0"),
        ("edm_stochastic", dict(s_tmin=2.0, s_tmax=1.0), "`s_tmax` must be >= `s_tmin`"),
        ("edm_heun", dict(eps=0.0), "`eps`"),
        ("unipc", dict(s_max=200.0), r"`s_max` must be None or a noise level strictly between"),
        ("unipc", dict(s_max=0.005), r"`s_max` must be None or a noise level strictly between"),
        ("ddim", dict(s_max="5"), r"`s_max` must be None or a noise level strictly between"),
        ("edm_heun", dict(s_max=5.0, num_steps=2), r"`s_max` needs `num_steps` >= 3"),
        ("ode", dict(s_max=5.0), r"method 'ode' takes no option\(s\) \['s_max'\]"),
        ("ode", dict(controller="adaptive"), r"`controller` must be one of \['fixed', 'pid'\]"),
        ("ode", dict(num_steps=10), "options of controller='fixed', not 'pid'"),
        ("ode", dict(controller="fixed"), "controller='fixed' needs `num_steps`"),
        ("ode", dict(controller="fixed", num_steps=8, rtol=1e-3), "options of controller='pid'"),
    ],
)
def test_bad_input(method, kwargs, match):
    sde = VPSDE()
    with pytest.raises(ValueError, match=match):
        sample(jax.random.key(0), mixture_2d().score_fn(sde), sde, (4, 2), method=method, **kwargs)


def test_method_options_name_each_methods_keywords():
    assert set(METHODS) == {
        "pc",
        "ode",
        "edm_heun",
        "edm_stochastic",
        "dpm_solver_2m",
        "dpm_solver_3m",
        "unipc",
        "ddim",
    }
    for method in ("edm_heun", "edm_stochastic", "dpm_solver_2m", "dpm_solver_3m", "unipc", "ddim"):
        assert "schedule" in method_options(method)
    assert {"order", "lower_order_final"} <= set(method_options("unipc"))
    assert "eta" in method_options("ddim") and "s_churn" in method_options("edm_stochastic")
    assert {"controller", "num_steps", "rtol"} <= set(method_options("ode"))


def test_few_step_methods_are_the_methods_on_noise_levels():
    assert isinstance(METHODS, dict)
    assert FEW_STEP_METHODS == (
        "edm_heun",
        "edm_stochastic",
        "dpm_solver_2m",
        "dpm_solver_3m",
        "unipc",
        "ddim",
    )
