"""Samplers driven by the exact score reproduce the data distribution."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussians import exact_sample_bound, image_gaussian_diag, mixture_2d, sample_stats
from hlo import loop_bodies_and_host_ops

from sde_jax.sampling import CORRECTORS, PREDICTORS, SOLVERS, ode, ode_sample, pc, pc_sample
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
N_SAMPLES = 2000
NULL_REPS = 20
TARGETS = {"mixture_2d": mixture_2d, "image_8x8x3": image_gaussian_diag}


@functools.cache
def _null(target):
    """The exact distribution, a reference set and the acceptance bound (see
    :func:`gaussians.exact_sample_bound`)."""
    gm = TARGETS[target]()
    return gm, *exact_sample_bound(gm, N_SAMPLES, NULL_REPS, null_seed=20_000)


def _assert_matches_exact(target, samples):
    gm, reference, bound = _null(target)
    assert samples.shape == (N_SAMPLES, *gm.event_shape)
    assert bool(jnp.all(jnp.isfinite(samples)))
    stats = sample_stats(gm, samples, reference)
    names = ("energy distance", "|mean error|", "|covariance error|_F")
    for name, s, b in zip(names, stats, bound, strict=True):
        assert s <= b, f"{name} {s:.5f} exceeds the exact-sample spread bound {b:.5f}"


def _pairs(sde_name):
    out = []
    for p in PREDICTORS:
        for c in CORRECTORS:
            if (p, c) == ("none", "none"):
                continue
            if p == "ancestral_sampling" and sde_name == "subvp":
                continue
            out.append((p, c))
    return out


# Corrector-only sampling (no predictor) is a plain annealed MCMC: it needs several steps per noise
# level to equilibrate, as the paper's corrector-only rows show. Annealed Langevin's step follows
# s(t)^2, which for sub-VP is far below the data scale at small t, so it also needs a larger snr.
def _corrector_settings(sde_name, predictor, corrector):
    if predictor != "none":
        return dict(snr=0.16, n_steps=1)
    if corrector == "ald":
        return dict(snr=0.5 if sde_name == "subvp" else 0.3, n_steps=5)
    return dict(snr=0.16, n_steps=5)


PC_CASES = [(s, p, c) for s in SDES for p, c in _pairs(s)]


@pytest.mark.parametrize("sde_name, predictor, corrector", PC_CASES)
def test_pc_sampler_matches_exact_mixture(sde_name, predictor, corrector):
    sde = SDES[sde_name]
    gm = mixture_2d()
    settings = _corrector_settings(sde_name, predictor, corrector)
    x, nfe = pc_sample(
        jax.random.key(1),
        gm.score_fn(sde),
        sde,
        (N_SAMPLES, 2),
        predictor=predictor,
        corrector=corrector,
        **settings,
    )
    _assert_matches_exact("mixture_2d", x)
    per_step = (predictor != "none") + (corrector != "none") * settings["n_steps"]
    assert int(nfe) == sde.N * per_step


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
@pytest.mark.parametrize("corrector", ["none", "langevin"])
def test_pc_probability_flow_matches_exact_mixture(sde_name, predictor, corrector):
    sde = SDES[sde_name]
    gm = mixture_2d()
    x, _ = pc_sample(
        jax.random.key(2),
        gm.score_fn(sde),
        sde,
        (N_SAMPLES, 2),
        predictor=predictor,
        corrector=corrector,
        probability_flow=True,
    )
    _assert_matches_exact("mixture_2d", x)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_pc_sampler_matches_exact_image_gaussian(sde_name):
    sde = SDES[sde_name]
    gm = image_gaussian_diag()
    x, _ = pc_sample(jax.random.key(3), gm.score_fn(sde), sde, (N_SAMPLES, *gm.event_shape))
    _assert_matches_exact("image_8x8x3", x)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name, predictor, corrector", PC_CASES)
def test_pc_sampler_matches_exact_image_gaussian_all_pairs(sde_name, predictor, corrector):
    if (sde_name, predictor, corrector) == ("subvp", "none", "ald"):
        # Measured: energy distance 0.0233 / 0.0186 / 0.0176 against a bound of 0.0176 with
        # (snr, n_steps) = (0.5, 5) / (0.5, 20) / (1.0, 10). With s(t) ~ B(t) near t = 0, ALD's
        # steps are far smaller than the data scale, so corrector-only ALD on sub-VP does not
        # reach p_0 at practical step counts; every pair with a predictor does.
        pytest.xfail("corrector-only ALD on sub-VP does not equilibrate at a 192-d image shape")
    sde = SDES[sde_name]
    gm = image_gaussian_diag()
    x, _ = pc_sample(
        jax.random.key(4),
        gm.score_fn(sde),
        sde,
        (N_SAMPLES, *gm.event_shape),
        predictor=predictor,
        corrector=corrector,
        **_corrector_settings(sde_name, predictor, corrector),
    )
    _assert_matches_exact("image_8x8x3", x)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("solver", ["dopri5", "tsit5"])
def test_ode_sampler_matches_exact(sde_name, target, solver):
    sde = SDES[sde_name]
    gm = TARGETS[target]()
    x, nfe = ode_sample(
        jax.random.key(5), gm.score_fn(sde), sde, (N_SAMPLES, *gm.event_shape), solver=solver
    )
    _assert_matches_exact(target, x)
    assert 20 < int(nfe) < 1000


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_ode_nfe_is_exact(solver):
    """The reported NFE equals the number of score evaluations actually executed."""
    sde = VPSDE()
    gm = mixture_2d()
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(None))
        return gm.score(sde, x, t)

    x, nfe = ode_sample(
        jax.random.key(0), counting_score, sde, (8, 2), solver=solver, rtol=1e-3, atol=1e-3
    )
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == len(calls) > 0


def test_ode_decodes_a_given_latent_deterministically():
    sde = VESDE()
    gm = mixture_2d()
    score_fn = gm.score_fn(sde)
    z = sde.prior_sampling(jax.random.key(0), (16, 2))
    a, _ = ode_sample(jax.random.key(1), score_fn, sde, (16, 2), z=z)
    b, _ = ode_sample(jax.random.key(2), score_fn, sde, (16, 2), z=z)
    np.testing.assert_array_equal(a, b)
    c, _ = ode_sample(jax.random.key(1), score_fn, sde, (16, 2))
    assert not np.allclose(a, c)


def _trace_counter(score_fn):
    traces = []

    def counted(x, t):
        traces.append(None)  # Runs once per trace, never at execution.
        return score_fn(x, t)

    return counted, traces


@pytest.mark.parametrize("kind", ["pc", "ode"])
def test_samplers_compile_once(kind):
    sde = SubVPSDE(N=50)
    gm = mixture_2d()
    score_fn, traces = _trace_counter(gm.score_fn(sde))
    run = {
        "pc": functools.partial(pc_sample, predictor="euler_maruyama", corrector="langevin"),
        "ode": functools.partial(ode_sample, rtol=1e-3, atol=1e-3),
    }[kind]
    x1, _ = run(jax.random.key(0), score_fn, sde, (16, 2))
    n_traces = len(traces)
    x2, _ = run(jax.random.key(1), score_fn, sde, (16, 2))
    x3, _ = run(jax.random.key(2), score_fn, sde, (16, 2), eps=2e-3)
    assert len(traces) == n_traces > 0
    assert not np.allclose(x1, x2) and not np.allclose(x2, x3)


@pytest.mark.parametrize(
    "predictor, corrector", [("reverse_diffusion", "langevin"), ("ancestral_sampling", "ald")]
)
def test_pc_loop_runs_on_device(predictor, corrector):
    sde = VPSDE(N=20)
    gm = mixture_2d()
    lowered = pc._pc_sample.lower(
        jax.random.key(0),
        sde,
        0.16,
        1e-3,
        score_fn=gm.score_fn(sde),
        shape=(4, 2),
        predictor=predictor,
        corrector=corrector,
        n_steps=1,
        denoise=True,
        probability_flow=False,
    )
    n_loops, host_ops = loop_bodies_and_host_ops(lowered.compile().as_text())
    assert n_loops >= 1 and host_ops == []


def test_ode_loop_runs_on_device():
    sde = VESDE()
    gm = mixture_2d()
    lowered = ode._ode_sample.lower(
        jax.random.key(0),
        sde,
        None,
        1e-5,
        1e-5,
        1e-5,
        score_fn=gm.score_fn(sde),
        shape=(4, 2),
        solver="dopri5",
        denoise=True,
        max_steps=64,
    )
    n_loops, host_ops = loop_bodies_and_host_ops(lowered.compile().as_text())
    assert n_loops >= 1 and host_ops == []


def test_host_op_detector_sees_a_callback_in_the_loop():
    """Negative control for the two tests above."""
    sde = VPSDE(N=20)
    gm = mixture_2d()

    def chatty(x, t):
        jax.debug.print("{}", t[0])
        return gm.score(sde, x, t)

    lowered = pc._pc_sample.lower(
        jax.random.key(0),
        sde,
        0.16,
        1e-3,
        score_fn=chatty,
        shape=(4, 2),
        predictor="reverse_diffusion",
        corrector="none",
        n_steps=1,
        denoise=True,
        probability_flow=False,
    )
    assert loop_bodies_and_host_ops(lowered.compile().as_text())[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(predictor="heun"), "`predictor` must be one of"),
        (dict(corrector="mala"), "`corrector` must be one of"),
        (dict(predictor="none", corrector="none"), "cannot both be 'none'"),
        (dict(n_steps=0), "`n_steps`"),
        (dict(eps=1.5), "`eps`"),
        (dict(shape=(4,)), "`shape`"),
        (dict(probability_flow=True, predictor="ancestral_sampling"), "probability_flow"),
    ],
)
def test_pc_bad_input(kwargs, match):
    sde = VPSDE(N=10)
    shape = kwargs.pop("shape", (4, 2))
    with pytest.raises(ValueError, match=match):
        pc_sample(jax.random.key(0), mixture_2d().score_fn(sde), sde, shape, **kwargs)


def test_ancestral_sampling_on_subvp_raises():
    sde = SubVPSDE(N=10)
    with pytest.raises(ValueError, match=r"ancestral_sampling.*VESDE and VPSDE"):
        pc_sample(
            jax.random.key(0),
            mixture_2d().score_fn(sde),
            sde,
            (4, 2),
            predictor="ancestral_sampling",
        )


def test_ode_bad_input():
    sde = VPSDE()
    score_fn = mixture_2d().score_fn(sde)
    with pytest.raises(ValueError, match=r"`solver` must be one of.*dopri5"):
        ode_sample(jax.random.key(0), score_fn, sde, (4, 2), solver="rk45")
    with pytest.raises(ValueError, match="`z` must have shape"):
        ode_sample(jax.random.key(0), score_fn, sde, (4, 2), z=jnp.zeros((3, 2)))
