"""Controllable generation against closed forms: exact Gaussian conditionals and mixture posteriors.

Inpainting and colorization observe a linear function :math:`Ax` of Gaussian data
:math:`\\mathcal N(\\mu, \\Sigma)`; the exact conditional is Gaussian with mean
:math:`\\mu + \\Sigma A^\\top (A\\Sigma A^\\top)^{-1}(y - A\\mu)` and covariance
:math:`\\Sigma - \\Sigma A^\\top (A\\Sigma A^\\top)^{-1} A\\Sigma`. Class-conditional sampling uses a 2-D
mixture whose classes are its components, so :math:`p_t(y \\mid x)` is the exact posterior of the
component. Acceptance bounds come from the spread of the same statistics between exact sample sets.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussians import energy_distance
from hlo import loop_bodies_and_host_ops

from sde_jax.closed_form import GaussianMixture
from sde_jax.controllable import (
    classifier_free_guidance,
    classifier_guidance,
    decoupling_matrix,
    gray_scale,
    guided_ode_sample,
    guided_pc_sample,
    masked,
    pc_colorize,
    pc_inpaint,
)
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

SHAPE = (4, 4, 3)
D = int(np.prod(SHAPE))
N_SAMPLES = 1000
NULL_REPS = 20
# A coarse grid keeps the default tests short; the final Langevin steps at t = eps make the
# completions exact regardless (see `pc_masked_sample`), and the slow tests use the full grid.
FAST_SDES = {"vp": VPSDE(N=100), "subvp": SubVPSDE(N=100), "ve": VESDE(N=100)}
FULL_SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
FINAL_STEPS = 300


@functools.cache
def _gaussian():
    """A 4x4x3 Gaussian with a full covariance (eigenvalues 0.05..2 in a random basis)."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    cov = (q * np.geomspace(0.05, 2.0, D)) @ q.T
    mean = 0.5 * np.sin(np.arange(D))
    gm = GaussianMixture.gaussian(mean, cov, SHAPE)
    x_obs = np.asarray(gm.sample(jax.random.key(7), 1), np.float64)[0].reshape(-1)
    return gm, mean, cov, x_obs


def _linear_conditional(mean, cov, a, y):
    """Mean and covariance of x | Ax = y for x ~ N(mean, cov)."""
    gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T)
    return mean + gain @ (y - a @ mean), cov - gain @ a @ cov


def _stats(x, mean, cov, reference):
    x = np.asarray(x, np.float64)
    return np.array(
        [
            energy_distance(jnp.asarray(x), jnp.asarray(reference)),
            np.linalg.norm(x.mean(0) - mean),
            np.linalg.norm(np.cov(x.T) - cov),
        ]
    )


def _null_bound(mean, cov, seed):
    """Reference exact samples and the bound: null mean + 4 null standard deviations."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(mean)))

    def exact():
        return mean + rng.normal(size=(N_SAMPLES, len(mean))) @ chol.T

    reference = exact()
    null = np.stack([_stats(exact(), mean, cov, reference) for _ in range(NULL_REPS)])
    return reference, null.mean(0) + 4 * null.std(0, ddof=1)


def _assert_exact(samples, mean, cov, seed):
    reference, bound = _null_bound(mean, cov, seed)
    stats = _stats(samples, mean, cov, reference)
    for name, s, b in zip(
        ("energy distance", "|mean error|", "|cov error|_F"), stats, bound, strict=True
    ):
        assert s <= b, f"{name} {s:.5f} exceeds the exact-sample spread bound {b:.5f}"
    return stats, bound


def _lower_half_mask():
    mask = np.ones(SHAPE, np.float32)
    mask[2:] = 0.0  # The lower two rows, every channel, are generated.
    return mask


def _inpaint_conditional():
    gm, mean, cov, x_obs = _gaussian()
    known = _lower_half_mask().reshape(-1) == 1
    a = np.eye(D)[known]
    c_mean, c_cov = _linear_conditional(mean, cov, a, x_obs[known])
    return gm, x_obs, known, c_mean[~known], c_cov[np.ix_(~known, ~known)]


def _run_inpaint(sde, key, **kwargs):
    gm, x_obs, known, c_mean, c_cov = _inpaint_conditional()
    data = jnp.broadcast_to(jnp.asarray(x_obs.reshape(SHAPE), jnp.float32), (N_SAMPLES, *SHAPE))
    x, nfe = pc_inpaint(key, gm.score_fn(sde), sde, data, _lower_half_mask(), **kwargs)
    x = np.asarray(x).reshape(N_SAMPLES, D)
    return x, nfe, x_obs, known, c_mean, c_cov


def _colorize_conditional():
    """The exact conditional of the two color channels (decoupled space) given the gray image."""
    gm, mean, cov, x_obs = _gaussian()
    pix = SHAPE[0] * SHAPE[1]
    a = np.kron(np.eye(pix), np.full((1, 3), 1.0 / 3.0))  # Gray = channel mean, [16, 48].
    c_mean, c_cov = _linear_conditional(mean, cov, a, a @ x_obs)
    # Coordinates of the two decoupled color channels of every pixel, [32, 48].
    m = decoupling_matrix(3).astype(np.float64)
    p = np.kron(np.eye(pix), m[:, 1:].T)
    return gm, x_obs, a, m, p @ c_mean, p @ c_cov @ p.T


@pytest.mark.parametrize("sde_name", list(FAST_SDES))
def test_inpainting_and_colorization_follow_exact_gaussian_conditionals(sde_name):
    """Inpainting the lower half and colorizing a gray image of a 48-d Gaussian: the observed
    coordinates are returned exactly, the others follow the exact Gaussian conditional. (Both
    tasks run the same compiled program, so one test per SDE compiles once.)"""
    sde = FAST_SDES[sde_name]
    x, nfe, x_obs, known, c_mean, c_cov = _run_inpaint(
        sde, jax.random.key(1), final_corrector_steps=FINAL_STEPS
    )
    np.testing.assert_array_equal(x[:, known], np.broadcast_to(x_obs[known], x[:, known].shape))
    _assert_exact(x[:, ~known], c_mean, c_cov, seed=11)
    assert int(nfe) == 2 * sde.N + FINAL_STEPS

    gm, x_obs, a, m, c_mean, c_cov = _colorize_conditional()
    gray = jnp.broadcast_to(
        jnp.asarray((a @ x_obs).reshape(4, 4, 1), jnp.float32), (N_SAMPLES, 4, 4, 1)
    )
    x, _ = pc_colorize(
        jax.random.key(2), gm.score_fn(sde), sde, gray, 3, final_corrector_steps=FINAL_STEPS
    )
    np.testing.assert_allclose(gray_scale(x), gray, atol=1e-5)
    colors = (np.asarray(x, np.float64) @ m)[..., 1:].reshape(N_SAMPLES, -1)
    _assert_exact(colors, c_mean, c_cov, seed=12)


def test_decoupling_matrix_is_orthogonal_with_gray_first():
    for c in (2, 3, 4):
        m = decoupling_matrix(c).astype(np.float64)
        np.testing.assert_allclose(m.T @ m, np.eye(c), atol=1e-6)
        np.testing.assert_allclose(m[:, 0], np.full(c, 1 / np.sqrt(c)), atol=1e-7)


# The final steps relax the bias the grid leaves: from the predictor-only start (mean error ~1.4)
# 300 steps left it just above the bounds (measured: energy distance 0.0110 vs 0.0109, VE mean error
# 0.160 vs 0.147); the widest conditional direction relaxes over ~200 Langevin steps at snr 0.16, so
# that start needs ~1000, while the Langevin-corrected grid (mean error ~0.27) needs 300.
@pytest.mark.slow
@pytest.mark.parametrize("sde_name", list(FULL_SDES))
@pytest.mark.parametrize("corrector, final_steps", [("none", 1000), ("langevin", 300)])
def test_inpainting_full_grid_matches_exact(sde_name, corrector, final_steps):
    x, *_, known, c_mean, c_cov = _run_inpaint(
        FULL_SDES[sde_name],
        jax.random.key(3),
        corrector=corrector,
        final_corrector_steps=final_steps,
    )
    _assert_exact(x[:, ~known], c_mean, c_cov, seed=13)


@pytest.mark.slow
def test_replacement_without_final_steps_is_biased():
    """The paper's replacement alone (predictor only, VP) misses the conditional mean by far: the
    documented reason for `final_corrector_steps` (measured: error 25x the exact-sample spread)."""
    x, *_, known, c_mean, c_cov = _run_inpaint(FULL_SDES["vp"], jax.random.key(4), corrector="none")
    _, bound = _null_bound(c_mean, c_cov, seed=14)
    assert np.linalg.norm(x[:, ~known].mean(0) - c_mean) > 5 * bound[1]


# ---------------------------------------------------------------------------------------------
# Class-conditional sampling on a 2-D mixture whose classes are its components.

WEIGHTS = np.array([0.4, 0.6])
MEANS = np.array([[-1.0, 0.0], [1.0, 0.5]])
COVS = np.array([[[0.5, 0.2], [0.2, 0.4]], [[0.4, -0.1], [-0.1, 0.3]]])


@functools.cache
def _mixture():
    gm = GaussianMixture.from_covariances(WEIGHTS, MEANS, COVS)
    parts = [GaussianMixture.gaussian(MEANS[k], COVS[k]) for k in range(2)]
    return gm, parts


def _log_posterior(sde, x, t, labels):
    """Exact log p_t(y | x) from the components' marginals."""
    gm, _ = _mixture()
    if sde is None:
        m, s = jnp.ones(x.shape[0]), jnp.zeros(x.shape[0])
    else:
        m, s = sde.marginal_coefs(t)
    joint = gm.component_log_probs(x, m, s**2) + gm.log_weights[None]
    log_post = joint - jax.nn.logsumexp(joint, axis=-1, keepdims=True)
    return jnp.take_along_axis(log_post, labels[:, None], axis=-1)[:, 0]


@functools.cache
def _guided(sde_name, kind):
    sde = FULL_SDES[sde_name]
    gm, parts = _mixture()
    if kind == "classifier":
        return classifier_guidance(gm.score_fn(sde), functools.partial(_log_posterior, sde))

    def cond_score(x, t, labels):
        scores = jnp.stack([p.score(sde, x, t) for p in parts] + [gm.score(sde, x, t)])
        index = jnp.where(labels < 0, len(parts), labels)
        return jnp.take_along_axis(scores, index[None, :, None], axis=0)[0]

    return classifier_free_guidance(cond_score)


@pytest.mark.parametrize("sde_name", list(FULL_SDES))
def test_classifier_guidance_scale_one_samples_the_class(sde_name):
    """lambda = 1: the guided score is the score of p_t(x | y), the component itself."""
    sde = FULL_SDES[sde_name]
    for label in (0, 1):
        x, nfe = guided_pc_sample(
            jax.random.key(5), _guided(sde_name, "classifier"), sde, (N_SAMPLES, 2), label, 1.0,
            num_classes=2,
        )  # fmt: skip
        _assert_exact(x, MEANS[label], COVS[label], seed=20 + label)
        assert int(nfe) == 2 * sde.N


@pytest.mark.parametrize("sde_name", ["vp", pytest.param("subvp", marks=pytest.mark.slow), "ve"])
def test_guided_probability_flow_samples_the_class(sde_name):
    label = 0
    x, nfe = guided_ode_sample(
        jax.random.key(6), _guided(sde_name, "classifier"), FULL_SDES[sde_name], (N_SAMPLES, 2),
        label, 1.0, rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    _assert_exact(x, MEANS[label], COVS[label], seed=20 + label)
    assert 10 < int(nfe) < 1000


def test_guidance_scale_sharpens_the_class():
    """lambda = 0 is the unconditional mixture (mean posterior of class y = w_y), lambda = 1 the
    class (mean posterior = its exact expectation under the component), and lambda = 4 moves the
    samples further into the class: a higher mean posterior and a narrower spread along the line
    between the two means."""
    sde_name, label = "vp", 1
    sde = FULL_SDES[sde_name]
    guided = _guided(sde_name, "classifier")
    labels = jnp.full((N_SAMPLES,), label)
    post, spread = {}, {}
    axis = (MEANS[1] - MEANS[0]) / np.linalg.norm(MEANS[1] - MEANS[0])
    for scale in (0.0, 1.0, 4.0):
        x, _ = guided_pc_sample(jax.random.key(7), guided, sde, (N_SAMPLES, 2), label, scale)
        p = np.exp(np.asarray(_log_posterior(None, x, None, labels), np.float64))
        post[scale] = (p.mean(), p.std(ddof=1) / np.sqrt(N_SAMPLES))
        spread[scale] = float(np.std(np.asarray(x) @ axis, ddof=1))
    _, parts = _mixture()
    exact = parts[label].sample(jax.random.key(8), 20 * N_SAMPLES)
    p_exact = np.exp(np.asarray(_log_posterior(None, exact, None, jnp.full((len(exact),), label))))
    assert abs(post[0.0][0] - WEIGHTS[label]) < 4 * post[0.0][1]
    assert abs(post[1.0][0] - p_exact.mean()) < 4 * post[1.0][1]
    assert post[4.0][0] > post[1.0][0] + 4 * post[4.0][1] + 4 * post[1.0][1]
    component_spread = float(np.sqrt(axis @ COVS[label] @ axis))
    assert (
        spread[4.0] < spread[1.0] and abs(spread[1.0] - component_spread) < 0.1 * component_spread
    )


def test_classifier_free_guidance_equals_classifier_guidance_with_scale_one_plus_w():
    """With exact scores, (1 + w) s(x|y) - w s(x) = s(x) + (1 + w) grad log p(y|x)."""
    sde = FULL_SDES["subvp"]
    x = jax.random.normal(jax.random.key(9), (64, 2)) * 1.5
    t = jax.random.uniform(jax.random.key(10), (64,), minval=1e-3, maxval=1.0)
    labels = jnp.arange(64) % 2
    cfg_fn, clf_fn = jax.jit(_guided("subvp", "cfg")), jax.jit(_guided("subvp", "classifier"))
    for w in (0.0, 0.5, 3.0):
        cfg = cfg_fn(x, t, labels, w)
        clf = clf_fn(x, t, labels, 1.0 + w)
        np.testing.assert_allclose(cfg, clf, rtol=2e-4, atol=2e-4)
    del sde


@pytest.mark.parametrize("sde_name", ["vp", pytest.param("ve", marks=pytest.mark.slow)])
def test_classifier_free_guidance_w_zero_samples_the_class(sde_name):
    label = 1
    x, _ = guided_pc_sample(
        jax.random.key(11), _guided(sde_name, "cfg"), FULL_SDES[sde_name], (N_SAMPLES, 2), label,
        0.0, num_classes=2,
    )  # fmt: skip
    _assert_exact(x, MEANS[label], COVS[label], seed=21)


# ---------------------------------------------------------------------------------------------
# Compilation, loops and bad input.


def test_masked_sampler_loop_runs_on_device():
    sde = VPSDE(N=10)
    gm, *_ = _gaussian()
    lowered = masked._pc_masked.lower(
        jax.random.key(0),
        sde,
        jnp.zeros((4, *SHAPE)),
        jnp.asarray(_lower_half_mask()[None]),
        jnp.eye(3),
        0.16,
        1e-3,
        score_fn=gm.score_fn(sde),
        predictor="reverse_diffusion",
        corrector="langevin",
        n_steps=1,
        probability_flow=False,
        final_corrector_steps=5,
    )
    n_loops, host_ops = loop_bodies_and_host_ops(lowered.compile().as_text())
    assert n_loops >= 2 and host_ops == []


def test_guided_sampler_does_not_recompile_for_labels_or_scales():
    sde = VPSDE(N=20)
    traces = []
    base = _guided("vp", "classifier")

    def counted(x, t, labels, scale):
        traces.append(None)
        return base(x, t, labels, scale)

    a, _ = guided_pc_sample(jax.random.key(0), counted, sde, (8, 2), 0, 1.0)
    n = len(traces)
    b, _ = guided_pc_sample(jax.random.key(0), counted, sde, (8, 2), 1, 2.0)
    assert len(traces) == n > 0 and not np.allclose(a, b)


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.ones((4, 4)), r"`mask` must have shape"),
        (np.ones((2, 4, 4, 3)), r"`mask` must have shape"),
        (np.full((4, 4, 3), 0.5), r"`mask` must be binary"),
    ],
)
def test_inpaint_bad_mask(mask, match):
    sde = VPSDE(N=10)
    gm, *_ = _gaussian()
    with pytest.raises(ValueError, match=match):
        pc_inpaint(jax.random.key(0), gm.score_fn(sde), sde, jnp.zeros((3, *SHAPE)), mask)


def test_inpaint_accepts_a_per_pixel_mask():
    sde = VESDE(N=20)
    gm, *_ = _gaussian()
    data = jnp.ones((3, *SHAPE))
    x, _ = pc_inpaint(jax.random.key(0), gm.score_fn(sde), sde, data, _lower_half_mask()[..., :1])
    np.testing.assert_array_equal(x[:, :2], data[:, :2])
    assert not np.allclose(x[:, 2:], 1.0)


def test_colorize_single_channel_raises():
    sde = VPSDE(N=10)
    with pytest.raises(ValueError, match=r"colorization needs color data.*num_channels=1"):
        pc_colorize(jax.random.key(0), lambda x, t: -x, sde, jnp.zeros((2, 4, 4, 1)), 1)


@pytest.mark.parametrize(
    "labels, match",
    [(2, r"`class_labels` must lie in \[0, 2\)"), (-1, r"must lie in"), (0.5, r"must be an int")],
)
def test_guided_bad_labels(labels, match):
    sde = VPSDE(N=10)
    with pytest.raises(ValueError, match=match):
        guided_pc_sample(
            jax.random.key(0), _guided("vp", "classifier"), sde, (4, 2), labels, 1.0, num_classes=2
        )


def test_predictor_none_is_rejected():
    sde = VPSDE(N=10)
    gm, *_ = _gaussian()
    with pytest.raises(ValueError, match=r"`predictor` must not be 'none'"):
        pc_inpaint(
            jax.random.key(0), gm.score_fn(sde), sde, jnp.zeros((2, *SHAPE)), _lower_half_mask(),
            predictor="none",
        )  # fmt: skip
