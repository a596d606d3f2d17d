"""SDE coefficients against the paper's reference values and against simulation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.sde import SDE, VESDE, VPSDE, SubVPSDE

F32_EPS = float(np.finfo(np.float32).eps)
TIMES = [9.999999747378752e-06, 0.0010000000474974513, 0.25, 0.5, 1.0]

# Values computed in float32 with the SDE definitions of the paper's code (beta 0.1..20,
# sigma 0.01..50, N = 1000); copied from the project's reference material.
REFERENCE = {
    "vp": {
        "mean_coef": [
            0.9999995231628418,
            0.9999450445175171,
            0.7236571907997131,
            0.2811828851699829,
            0.006571585778146982,
        ],
        "std": [
            0.0010066175600513816,
            0.010486685670912266,
            0.6901596188545227,
            0.9596542119979858,
            0.9999783635139465,
        ],
        "drift_at_x1": [
            -0.05009949952363968,
            -0.059950001537799835,
            -2.5374999046325684,
            -5.025000095367432,
            -10.0,
        ],
        "diffusion": [
            0.31654226779937744,
            0.3462657928466797,
            2.2527759075164795,
            3.170173406600952,
            4.4721360206604,
        ],
        "discretize_f_at_x1": [
            -5.0008296966552734e-05,
            -5.0008296966552734e-05,
            -0.002533257007598877,
            -0.005032658576965332,
            -0.010050475597381592,
        ],
        "discretize_G": [
            0.009999999776482582,
            0.009999999776482582,
            0.07113409787416458,
            0.10019999742507935,
            0.1414213478565216,
        ],
    },
    "subvp": {
        "mean_coef": [
            0.9999995231628418,
            0.9999450445175171,
            0.7236571907997131,
            0.2811828851699829,
            0.006571585778146982,
        ],
        "std": [
            1.0132789611816406e-06,
            0.0001099705696105957,
            0.4763202667236328,
            0.9209361672401428,
            0.9999567866325378,
        ],
        "drift_at_x1": [
            -0.05009949952363968,
            -0.059950001537799835,
            -2.5374999046325684,
            -5.025000095367432,
            -10.0,
        ],
        "diffusion": [
            0.00045062077697366476,
            0.005134568549692631,
            1.9191741943359375,
            3.1602494716644287,
            4.4721360206604,
        ],
        "discretize_f_at_x1": [
            -5.0099501095246524e-05,
            -5.9950005379505455e-05,
            -0.002537500113248825,
            -0.005025000311434269,
            -0.010000000707805157,
        ],
        "discretize_G": [
            1.424988113285508e-05,
            0.0001623693242436275,
            0.060689620673656464,
            0.0999358668923378,
            0.1414213627576828,
        ],
    },
    "ve": {
        "mean_coef": [1.0] * 5,
        "std": [
            0.010000851936638355,
            0.010085536167025566,
            0.08408963680267334,
            0.7071067690849304,
            50.0,
        ],
        "drift_at_x1": [0.0] * 5,
        "diffusion": [
            0.041276250034570694,
            0.041625767946243286,
            0.3470609486103058,
            2.9184231758117676,
            206.36367797851562,
        ],
        "discretize_f_at_x1": [0.0] * 5,
        "discretize_G": [
            0.009999999776482582,
            0.009999999776482582,
            0.010864300653338432,
            0.09155159443616867,
            6.501295566558838,
        ],
    },
}
PRIOR_LOGP_ZEROS_32x32x3 = {"vp": -2822.979248046875, "ve": -14840.7138671875}

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


def _values(sde: SDE) -> dict[str, np.ndarray]:
    t = jnp.asarray(TIMES, jnp.float32)
    x = jnp.ones((len(TIMES), 1))
    mean, std = sde.marginal_prob(x, t)
    drift, diffusion = sde.sde(x, t)
    f, g = sde.discretize(x, t)
    out = dict(
        mean_coef=mean[:, 0],
        std=std,
        drift_at_x1=drift[:, 0],
        diffusion=diffusion,
        discretize_f_at_x1=f[:, 0],
        discretize_G=g,
    )
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


@pytest.mark.parametrize("name", list(SDES))
def test_matches_reference_constants(name):
    sde, ref = SDES[name], REFERENCE[name]
    got = _values(sde)
    # Quantities computed the same way as the reference agree to a few float32 ulps.
    for key in ("mean_coef", "drift_at_x1", "discretize_f_at_x1"):
        np.testing.assert_allclose(got[key], ref[key], rtol=8 * F32_EPS, atol=1e-12, err_msg=key)
    # Several reference values are 1 - exp(-a) evaluated in float32, which for small a loses all
    # but a few bits (absolute error up to one ulp of 1.0); ours use expm1. So those are compared
    # through the quantity that carries the cancellation, with a one-ulp absolute bound.
    t = np.asarray(TIMES)
    if name == "ve":
        np.testing.assert_allclose(got["std"], ref["std"], rtol=8 * F32_EPS)
        np.testing.assert_allclose(got["diffusion"], ref["diffusion"], rtol=8 * F32_EPS)
        # sqrt(sigma_i^2 - sigma_{i-1}^2) cancels by about sigma^2 / (sigma_i^2 - sigma_{i-1}^2).
        # Each table entry exp(linspace(log ...)) carries up to ~4 ulps (the rounded exponent
        # times |log sigma| < 4), 8 once squared, on both terms and in both implementations.
        sig = np.asarray(sde.adjacent_sigmas(jnp.asarray(t, jnp.float32))[0], np.float64)
        bound = 32 * F32_EPS * sig**2 / np.asarray(ref["discretize_G"]) ** 2
        np.testing.assert_array_less(
            np.abs(got["discretize_G"] ** 2 / np.asarray(ref["discretize_G"]) ** 2 - 1), bound
        )
        return
    beta = 0.1 + t * (20.0 - 0.1)
    one_ulp = F32_EPS
    if name == "vp":
        np.testing.assert_allclose(got["std"] ** 2, np.square(ref["std"]), rtol=1e-6, atol=one_ulp)
        np.testing.assert_allclose(got["diffusion"], ref["diffusion"], rtol=8 * F32_EPS)
        np.testing.assert_allclose(got["discretize_G"], ref["discretize_G"], rtol=8 * F32_EPS)
    else:
        np.testing.assert_allclose(got["std"], ref["std"], rtol=1e-6, atol=one_ulp)
        # diffusion^2 = beta (1 - exp(-2B)), discretize_G^2 = diffusion^2 / N.
        np.testing.assert_allclose(
            got["diffusion"] ** 2 / beta,
            np.square(ref["diffusion"]) / beta,
            rtol=1e-6,
            atol=one_ulp,
        )
        np.testing.assert_allclose(
            got["discretize_G"] ** 2 * 1000 / beta,
            np.square(ref["discretize_G"]) * 1000 / beta,
            rtol=1e-6,
            atol=one_ulp,
        )


def test_discrete_tables_and_prior_match_reference():
    vp, ve = VPSDE(), VESDE()
    np.testing.assert_allclose(
        vp.discrete_betas[jnp.array([0, -1])],
        [9.999999747378752e-05, 0.019999999552965164],
        rtol=4 * F32_EPS,
    )
    np.testing.assert_allclose(
        vp.sqrt_1m_alphas_cumprod[jnp.array([0, -1])],
        [0.010000829584896564, 0.9999797940254211],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        ve.discrete_sigmas[jnp.array([0, -1])],
        [0.009999999776482582, 50.000003814697266],
        rtol=8 * F32_EPS,
    )
    z = jnp.zeros((1, 32, 32, 3))
    np.testing.assert_allclose(vp.prior_logp(z), [PRIOR_LOGP_ZEROS_32x32x3["vp"]], rtol=1e-6)
    np.testing.assert_allclose(ve.prior_logp(z), [PRIOR_LOGP_ZEROS_32x32x3["ve"]], rtol=1e-6)
    np.testing.assert_allclose(SubVPSDE().prior_logp(z), vp.prior_logp(z))


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_prob_matches_simulated_forward_sde(name):
    """Euler–Maruyama paths of the forward SDE reach the mean and std that marginal_prob gives."""
    sde = SDES[name]
    n_paths, n_steps, x0 = 20000, 2000, 1.5
    t_end = jnp.array([0.1, 0.5, 1.0])

    def simulate(key, t1):
        dt = t1 / n_steps

        def step(x, i):
            t = jnp.full((n_paths,), i * dt)
            drift, g = sde.sde(x, t)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape)
            return x + drift * dt + g[:, None] * jnp.sqrt(dt) * z, None

        x, _ = jax.lax.scan(step, jnp.full((n_paths, 1), x0), jnp.arange(n_steps))
        return x[:, 0]

    for j, t1 in enumerate(t_end):
        x = simulate(jax.random.key(j), t1)
        mean, std = sde.marginal_prob(jnp.full((1, 1), x0), t1[None])
        var = float(std[0]) ** 2
        if name == "ve":
            # marginal_prob's std is sigma(t), which assumes sigma(0) = 0; the forward SDE started
            # at time 0 accumulates sigma(t)^2 - sigma_min^2.
            var -= sde.sigma_min**2
        emp_mean, emp_var = float(jnp.mean(x)), float(jnp.var(x))
        # Four standard errors; the Euler–Maruyama bias (about 1e-4 relative here) is far smaller.
        assert abs(emp_mean - float(mean[0, 0])) < 4 * np.sqrt(var / n_paths), (t1, emp_mean)
        assert abs(emp_var / var - 1) < 4 * np.sqrt(2 / n_paths), (t1, emp_var, var)


@pytest.mark.parametrize("name", list(SDES))
def test_discretize_converges_to_the_sde(name):
    """f_i / (f dt) and G_i / (g sqrt(dt)) tend to 1 at rate 1/N."""
    cls = type(SDES[name])
    t = jnp.array([0.25, 0.5, 0.75, 1.0])
    x = jnp.full((4, 1), 1.5)
    errors = []
    for n in (100, 1000, 10000):
        sde = cls(N=n)
        f, g = sde.discretize(x, t)
        drift, diffusion = sde.sde(x, t)
        err_f = jnp.where(drift == 0, jnp.abs(f), jnp.abs(f / (drift / n) - 1))
        err_g = jnp.abs(g / (diffusion / np.sqrt(n)) - 1)
        errors.append(float(jnp.maximum(jnp.max(err_f), jnp.max(err_g))))
    assert errors[2] < 20.0 / 10000, errors
    # First order: ten times more steps, (at least five times) smaller error. Sub-VP discretizes by
    # Euler–Maruyama, so its error is rounding only.
    assert errors[1] <= errors[0] / 5 + 1e-6 and errors[2] <= errors[1] / 5 + 1e-6, errors


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_is_paper_equations_6_and_13(name, probability_flow):
    sde = SDES[name]
    score_fn = lambda x, t: -x * (1.0 + t[:, None])
    x = jax.random.normal(jax.random.key(0), (3, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    rsde = sde.reverse(score_fn, probability_flow)
    weight = 0.5 if probability_flow else 1.0
    drift, g = sde.sde(x, t)
    r_drift, r_g = rsde.sde(x, t)
    np.testing.assert_allclose(
        r_drift, drift - weight * g[:, None] ** 2 * score_fn(x, t), rtol=1e-6
    )
    np.testing.assert_allclose(r_g, 0.0 * g if probability_flow else g)
    f, big_g = sde.discretize(x, t)
    r_f, r_big_g = rsde.discretize(x, t)
    np.testing.assert_allclose(r_f, f - weight * big_g[:, None] ** 2 * score_fn(x, t), rtol=1e-6)
    np.testing.assert_allclose(r_big_g, 0.0 * big_g if probability_flow else big_g)


@pytest.mark.parametrize("name", list(SDES))
def test_prior_sampling_matches_prior_logp(name):
    sde = SDES[name]
    z = sde.prior_sampling(jax.random.key(0), (4000, 3))
    std = 50.0 if name == "ve" else 1.0
    np.testing.assert_allclose(jnp.std(z), std, rtol=4 * np.sqrt(0.5 / z.size))
    # The prior log-density is that of N(0, std^2 I) at T.
    expected = -0.5 * jnp.sum(z**2, -1) / std**2 - 1.5 * jnp.log(2 * jnp.pi * std**2)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)


def test_sdes_are_immutable_pytrees_usable_in_jit():
    sde = VESDE()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sde.sigma_max = 10.0  # type: ignore[misc]
    traces = []

    @jax.jit
    def std_at_one(sde, x):
        traces.append(None)
        return sde.marginal_prob(x, jnp.ones(x.shape[0]))[1]

    x = jnp.zeros((2, 3))
    assert float(std_at_one(VESDE(sigma_max=10.0), x)[0]) == pytest.approx(10.0)
    assert float(std_at_one(VESDE(sigma_max=20.0), x)[0]) == pytest.approx(20.0)
    assert len(traces) == 1  # Float hyper-parameters are leaves; N is static.
    assert jax.tree.leaves(VPSDE()) == [0.1, 20.0]
    assert VESDE(N=10).N == 10 and jax.tree.structure(VESDE(N=10)) != jax.tree.structure(VESDE())


@pytest.mark.parametrize("name", list(SDES))
def test_mismatched_time_batch_raises(name):
    sde = SDES[name]
    x = jnp.zeros((4, 2))
    for bad_t in (jnp.zeros(3), jnp.zeros((4, 1)), jnp.zeros(())):
        with pytest.raises(ValueError, match="`t` must have shape"):
            sde.marginal_prob(x, bad_t)
        with pytest.raises(ValueError, match="`t` must have shape"):
            sde.sde(x, bad_t)
        with pytest.raises(ValueError, match="`t` must have shape"):
            sde.discretize(x, bad_t)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_integrated_beta_and_its_inverse(name):
    """B(t) is the integral of beta (trapezoid rule is exact for a linear beta), m(t) = exp(-B/2),
    and the inverse maps B(t) back to t."""
    sde = SDES[name]
    t = jnp.linspace(0.0, sde.T, 201)
    b = sde.integrated_beta(t)
    beta = np.asarray(sde.beta(t), np.float64)
    trapezoid = np.concatenate([[0.0], np.cumsum(0.5 * (beta[1:] + beta[:-1]) * np.diff(t))])
    np.testing.assert_allclose(b, trapezoid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sde.marginal_coefs(t)[0], np.exp(-0.5 * b), rtol=1e-6)
    np.testing.assert_allclose(sde.inverse_integrated_beta(b), t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(SDES))
def test_timestep_index_truncates_onto_the_discrete_levels(name):
    sde = dataclasses.replace(SDES[name], N=11)
    t = jnp.asarray([0.0, 0.05, 0.0999, 0.1, 0.55, 1.0])
    np.testing.assert_array_equal(sde.timestep_index(t), [0, 0, 0, 1, 5, 10])
