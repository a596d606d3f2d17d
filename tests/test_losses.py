"""Score-matching losses at the exact score, against their closed-form minimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussians import image_gaussian_full
from scipy import integrate

from sde_jax.losses import likelihood_weight_antiderivative, make_loss_fn, sample_importance_time
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
EPS = 1e-5


def _np_coefs(name, t):
    """Mean coefficient, std and likelihood weight g^2 / s^2 in float64."""
    if name == "ve":
        sigma = 0.01 * (50.0 / 0.01) ** t
        return np.ones_like(t), sigma, 2 * np.log(50.0 / 0.01) * np.ones_like(t)
    b = 0.1 * t + 0.5 * 19.9 * t**2
    beta = 0.1 + 19.9 * t
    m = np.exp(-0.5 * b)
    if name == "vp":
        s2 = -np.expm1(-b)
        return m, np.sqrt(s2), beta / s2
    s = -np.expm1(-b)
    return m, s, beta * -np.expm1(-2 * b) / s**2


def _min_loss_at(name, t, eigvals, reduce_mean, likelihood):
    """E ||s z_score + z||^2 at the exact score = sum_i m^2 l_i / (m^2 l_i + s^2), reduced."""
    m, s, w = _np_coefs(name, np.atleast_1d(t))
    per_dim = (m[:, None] ** 2 * eigvals) / (m[:, None] ** 2 * eigvals + s[:, None] ** 2)
    red = per_dim.mean(-1) if reduce_mean else 0.5 * per_dim.sum(-1)
    return red * (w if likelihood else 1.0)


def _exact_score_fn(gm, sde):
    return lambda params, x, t, train, key: gm.score(sde, x, t)


def _loss_samples(loss_fn, n_calls, batch_fn):
    keys = jax.random.split(jax.random.key(0), n_calls)

    @jax.jit
    def one(key):
        k_data, k_loss = jax.random.split(key)
        return loss_fn(None, k_loss, batch_fn(k_data))

    return np.asarray(jax.lax.map(one, keys), np.float64)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("reduce_mean", [False, True])
def test_continuous_loss_at_exact_score_is_closed_form_minimum(name, reduce_mean):
    gm = image_gaussian_full()
    sde = SDES[name]
    eig = np.asarray(gm.eigvals[0], np.float64)
    expected = integrate.quad(
        lambda t: _min_loss_at(name, t, eig, reduce_mean, False)[0], EPS, 1.0, limit=200
    )[0] / (1.0 - EPS)
    loss_fn = make_loss_fn(sde, _exact_score_fn(gm, sde), reduce_mean=reduce_mean, eps=EPS)
    losses = _loss_samples(loss_fn, 64, lambda k: gm.sample(k, 512))
    se = losses.std(ddof=1) / np.sqrt(len(losses))
    assert abs(losses.mean() - expected) < 4 * se, (losses.mean(), expected, se)


@pytest.mark.parametrize("name", list(SDES))
def test_importance_sampling_keeps_expectation_and_lowers_variance(name):
    gm = image_gaussian_full()
    sde = SDES[name]
    eig = np.asarray(gm.eigvals[0], np.float64)
    expected = integrate.quad(
        lambda t: _min_loss_at(name, t, eig, False, True)[0], EPS, 1.0, limit=500, points=[1e-3]
    )[0] / (1.0 - EPS)
    score_fn = _exact_score_fn(gm, sde)
    results = {}
    for is_on in (False, True):
        loss_fn = make_loss_fn(
            sde, score_fn, likelihood_weighting=True, importance_weighting=is_on, eps=EPS
        )
        # Batches of one example, so the spread is that of the per-example estimator.
        losses = _loss_samples(loss_fn, 20000, lambda k: gm.sample(k, 1))
        se = losses.std(ddof=1) / np.sqrt(len(losses))
        assert abs(losses.mean() - expected) < 4 * se, (is_on, losses.mean(), expected, se)
        results[is_on] = losses.var(ddof=1)
    ratio = results[False] / results[True]
    print(f"{name}: per-example variance, uniform / importance-sampled t = {ratio:.1f}")
    if name == "ve":
        # g^2 / s^2 is constant for VE, so importance sampling is uniform sampling.
        assert 0.8 < ratio < 1.25
    else:
        assert ratio > 10.0


@pytest.mark.parametrize("name", list(SDES))
def test_importance_times_follow_the_likelihood_weight(name):
    sde = SDES[name]
    t, z = sample_importance_time(jax.random.key(1), sde, 20000, EPS)
    grid = np.geomspace(EPS, 1.0, 20001)
    w = _np_coefs(name, grid)[2]
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(grid))])
    np.testing.assert_allclose(float(z), cdf[-1], rtol=1e-3)
    empirical = np.searchsorted(np.sort(np.asarray(t, np.float64)), grid) / len(t)
    ks = np.max(np.abs(empirical - cdf / cdf[-1]))
    assert ks < 1.63 / np.sqrt(len(t)), ks  # Kolmogorov–Smirnov at the 1% level.
    f = likelihood_weight_antiderivative(sde, jnp.asarray([0.2, 0.6]))
    np.testing.assert_allclose(
        float(f[1] - f[0]), np.interp(0.6, grid, cdf) - np.interp(0.2, grid, cdf), rtol=1e-4
    )


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_discrete_losses_at_exact_score(name):
    gm = image_gaussian_full()
    sde = SDES[name]
    n = sde.N
    idx = np.arange(n)
    if name == "ve":
        m, s = np.ones(n), np.asarray(sde.discrete_sigmas, np.float64)
    else:
        m = np.asarray(sde.sqrt_alphas_cumprod, np.float64)
        s = np.asarray(sde.sqrt_1m_alphas_cumprod, np.float64)
    eig = np.asarray(gm.eigvals[0], np.float64)
    expected = np.mean(
        0.5 * np.sum(m[:, None] ** 2 * eig / (m[:, None] ** 2 * eig + s[:, None] ** 2), -1)
    )
    m_j, s_j = jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32)

    def score_fn(params, x, t, train, key):
        # The exact score of the discrete marginal at noise level i = t (N - 1).
        i = jnp.round(t * (n - 1)).astype(jnp.int32)
        logp = lambda y: jnp.sum(gm.component_log_probs(y, m_j[i], s_j[i] ** 2)[:, 0])
        return jax.grad(logp)(x)

    loss_fn = make_loss_fn(sde, score_fn, continuous=False)
    losses = _loss_samples(loss_fn, 64, lambda k: gm.sample(k, 512))
    se = losses.std(ddof=1) / np.sqrt(len(losses))
    assert abs(losses.mean() - expected) < 4 * se, (losses.mean(), expected, se)
    del idx


def test_loss_is_differentiable_and_zero_params_give_known_value():
    """With a score model s = -x * a / std, the loss and its gradient are finite and analytic."""
    sde = VPSDE()
    score_fn = lambda a, x, t, train, key: -a * x / sde.marginal_coefs(t)[1][:, None]
    loss_fn = make_loss_fn(sde, score_fn, reduce_mean=True)
    batch = jax.random.normal(jax.random.key(0), (256, 4))
    # a = 0: the loss is E z^2 = 1 per dimension.
    assert float(loss_fn(0.0, jax.random.key(1), batch)) == pytest.approx(1.0, abs=0.05)
    g = jax.grad(loss_fn)(0.0, jax.random.key(1), batch)
    assert np.isfinite(float(g)) and float(g) < 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sde=SubVPSDE(), continuous=False), "continuous=False"),
        (dict(sde=VESDE(), continuous=False, likelihood_weighting=True), "likelihood_weighting"),
        (dict(sde=VPSDE(), continuous=False, likelihood_weighting=True), "likelihood_weighting"),
        (dict(sde=VPSDE(), importance_weighting=True), "importance_weighting"),
        (dict(sde=VPSDE(), eps=0.0), "`eps`"),
        (dict(sde="vp"), "`sde` must be"),
    ],
)
def test_unsupported_combinations_raise(kwargs, match):
    sde = kwargs.pop("sde")
    with pytest.raises(ValueError, match=match):
        make_loss_fn(sde, lambda *a, **k: None, **kwargs)
