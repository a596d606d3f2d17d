"""make_score_fn: the network label and the output-to-score conversion of each SDE."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.models import make_score_fn, network_labels
from sde_jax.sde import VESDE, VPSDE, SubVPSDE

T = jnp.array([1e-5, 0.25, 0.5, 1.0])
X = jnp.zeros((4, 2, 2, 1))


class Echo(nn.Module):
    """Returns its label (plus a learned zero) at every pixel; counts dropout rngs seen."""

    @nn.compact
    def __call__(self, x, labels, class_labels=None, *, train=False):
        bias = self.param("bias", nn.initializers.zeros, ())
        out = jnp.broadcast_to(labels.astype(jnp.float32)[:, None, None, None], x.shape) + bias
        if class_labels is not None:
            out = out + class_labels.astype(jnp.float32)[:, None, None, None]
        if train:
            out = out + jax.random.uniform(self.make_rng("dropout"), ())
        return out


MODEL = Echo()
VARIABLES = MODEL.init(jax.random.PRNGKey(0), X, T)


def score(sde, continuous=True, **kw):
    return make_score_fn(sde, MODEL, continuous=continuous)(VARIABLES, X, T, **kw)


def test_ve_continuous():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    sigma = 0.01 * (50.0 / 0.01) ** T
    out = score(sde)
    np.testing.assert_allclose(out[:, 0, 0, 0], sigma, rtol=1e-5)  # network label, output as is


def test_ve_discrete():
    sde = VESDE(N=1000)
    labels, factor = network_labels(sde, X, T, continuous=False)
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, np.round((1.0 - np.asarray(T)) * 999).astype(int))
    assert labels[0] == 999 and labels[-1] == 0  # label 0 is the largest noise level
    np.testing.assert_array_equal(factor, 1.0)
    np.testing.assert_allclose(score(sde, continuous=False)[:, 0, 0, 0], labels)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_vp_continuous(sde):
    _, std = sde.marginal_prob(X, T)
    out = score(sde)
    np.testing.assert_allclose(out[:, 0, 0, 0], -999.0 * T / std, rtol=1e-5)


def test_subvp_discrete_uses_continuous_convention():
    sde = SubVPSDE()
    np.testing.assert_array_equal(score(sde, continuous=False), score(sde))


def test_vp_discrete():
    sde = VPSDE(N=1000)
    labels, factor = network_labels(sde, X, T, continuous=False)
    np.testing.assert_allclose(labels, 999.0 * T, rtol=1e-6)  # fractional timesteps
    idx = (np.asarray(T) * 999).astype(int)
    np.testing.assert_allclose(
        factor, -1.0 / np.asarray(sde.sqrt_1m_alphas_cumprod)[idx], rtol=1e-6
    )
    out = score(sde, continuous=False)
    np.testing.assert_allclose(out[:, 0, 0, 0], labels * factor, rtol=1e-6)


def test_train_key_class_labels_and_jit():
    sde = VPSDE()
    fn = jax.jit(make_score_fn(sde, MODEL), static_argnames="train")
    base = fn(VARIABLES, X, T)
    noisy = fn(VARIABLES, X, T, train=True, key=jax.random.PRNGKey(1))
    assert not np.allclose(base, noisy)
    np.testing.assert_array_equal(noisy, fn(VARIABLES, X, T, train=True, key=jax.random.PRNGKey(1)))
    y = jnp.array([1, 2, 3, 4])
    _, std = sde.marginal_prob(X, T)
    with_y = fn(VARIABLES, X, T, class_labels=y)
    np.testing.assert_allclose(
        with_y - base, -(y / std)[:, None, None, None] * jnp.ones_like(X), rtol=1e-5
    )


def test_bad_inputs():
    with pytest.raises(ValueError, match="VESDE, VPSDE or SubVPSDE"):
        make_score_fn(object(), MODEL)
    with pytest.raises(ValueError, match="shape"):
        make_score_fn(VPSDE(), MODEL)(VARIABLES, X, T[:2])


def test_discrete_vp_level_of_grid_times_is_exact():
    """t = i / (N - 1), the times the discrete DDPM loss uses, select noise level i for every i."""
    from sde_jax.models.score_fn import network_labels

    sde = VPSDE()
    i = jnp.arange(sde.N)
    t = i.astype(jnp.float32) / (sde.N - 1)
    _, factor = network_labels(sde, jnp.zeros((sde.N, 1)), t, continuous=False)
    np.testing.assert_allclose(-1.0 / factor, sde.sqrt_1m_alphas_cumprod[i], rtol=1e-6)
    # The paper's sampler grid still truncates: t = eps gives label 0.999 and level 0.
    _, factor = network_labels(sde, jnp.zeros((1, 1)), jnp.array([1e-3]), continuous=False)
    np.testing.assert_allclose(-1.0 / factor, sde.sqrt_1m_alphas_cumprod[:1])
