"""Winograd F(2x2, 3x3) convolutions against the direct ``lax`` convolution, with error bounds from
the arithmetic: values, both gradients, forward-mode derivatives, and a whole reference network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import fixture, rel_error, state_dict

from sde_jax.convert import load_score_sde_pytorch
from sde_jax.models import layers, winograd

EPS = float(jnp.finfo(jnp.float32).eps)


def direct(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def bound(terms, magnitude):
    r"""Forward error bound of a sum of ``terms`` products: :math:`\gamma_n \sum |a||b|` with
    :math:`\gamma_n \approx n\,\epsilon`, times 16 for the transforms (each of :math:`B, G, A` at most
    doubles a magnitude per axis) and 2 for the reference's own rounding."""
    return 32 * terms * EPS * magnitude


SHAPES = [(2, 8, 8, 3, 5), (1, 4, 6, 16, 8), (3, 2, 2, 4, 4), (2, 16, 16, 32, 24)]


def _data(shape, seed=0):
    b, h, w, c, d = shape
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (b, h, w, c))
    kernel = jax.random.normal(k[1], (3, 3, c, d)) / np.sqrt(9 * c)
    g = jax.random.normal(k[2], (b, h, w, d))
    return x, kernel, g, k[3]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_match_the_direct_convolution(shape):
    x, kernel, _, _ = _data(shape)
    got = jax.jit(winograd.conv3x3)(x, kernel)
    want = direct(x, kernel)
    tol = bound(9 * shape[3], direct(jnp.abs(x), jnp.abs(kernel)))
    assert got.shape == want.shape
    assert bool(jnp.all(jnp.abs(got - want) <= tol)), float(jnp.max(jnp.abs(got - want) - tol))
    # The bound is loose; the typical error is that of a different summation order.
    assert rel_error(got, want) < 1e-5


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_the_direct_convolution(shape):
    b, h, w, _, d = shape
    x, kernel, g, _ = _data(shape, seed=1)
    dx, dk = jax.jit(lambda x, k: jax.vjp(winograd.conv3x3, x, k)[1](g))(x, kernel)
    want_dx, want_dk = jax.vjp(direct, x, kernel)[1](g)
    abs_dx, abs_dk = jax.vjp(direct, jnp.abs(x), jnp.abs(kernel))[1](jnp.abs(g))
    # dx sums 9 D products per element; the kernel gradient sums B H W products per element.
    assert bool(jnp.all(jnp.abs(dx - want_dx) <= bound(9 * d, abs_dx)))
    assert bool(jnp.all(jnp.abs(dk - want_dk) <= bound(b * h * w, abs_dk)))
    assert rel_error(dx, want_dx) < 1e-5 and rel_error(dk, want_dk) < 1e-5


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_forward_mode_derivative_matches(shape):
    x, kernel, _, key = _data(shape, seed=2)
    tx, tk = jax.random.normal(key, x.shape), jax.random.normal(key, kernel.shape)
    _, got = jax.jit(lambda *a: jax.jvp(winograd.conv3x3, a[:2], a[2:]))(x, kernel, tx, tk)
    _, want = jax.jvp(direct, (x, kernel), (tx, tk))
    mag = direct(jnp.abs(tx), jnp.abs(kernel)) + direct(jnp.abs(x), jnp.abs(tk))
    assert bool(jnp.all(jnp.abs(got - want) <= bound(9 * shape[3], mag)))


def test_odd_sizes_and_wrong_kernels_are_refused():
    with pytest.raises(ValueError, match="even height and width; got 5x4"):
        winograd.conv3x3(jnp.zeros((1, 5, 4, 2)), jnp.zeros((3, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"\[3, 3, 2, D\] kernel"):
        winograd.conv3x3(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 4, 2)))


def _direct_convs(fn, *args):
    """How many direct convolutions the traced program of ``fn`` contains."""
    # A fresh function each time: JAX caches traces by function identity.
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args)).count("conv_general_dilated")


@pytest.mark.parametrize(
    "channels, height, winograd_expected",
    [(128, 8, True), (64, 8, False), (128, 7, False)],
)
def test_conv3x3_module_uses_winograd_where_it_pays(channels, height, winograd_expected):
    conv = layers.conv3x3(channels, conv_algorithm="winograd")
    x = jax.random.normal(jax.random.key(0), (2, height, 8, channels))
    variables = conv.init(jax.random.key(1), x)
    assert (_direct_convs(conv.apply, variables, x) == 0) == winograd_expected
    want = direct(x, variables["params"]["kernel"]) + variables["params"]["bias"][None, None, None]
    assert rel_error(conv.apply(variables, x), want) < 1e-5


def test_reference_network_with_winograd_in_every_convolution():
    """The parity fixture's small DDPM++ (16-32 channels) runs every stride-1 3x3 convolution by
    Winograd when the channel threshold is lowered, and still meets the 1e-5 parity tolerance."""
    info, arrays = fixture("ddpmpp_small_vp")
    direct_model, variables = load_score_sde_pytorch(state_dict("ddpmpp_small_vp"), info["config"])
    model = direct_model.clone(conv_algorithm="winograd", winograd_min_channels=1)
    x, labels = jnp.asarray(arrays["x_nhwc"]), jnp.asarray(arrays["labels"])

    def apply(v, x, y):
        return model.apply(v, x, y)

    assert _direct_convs(direct_model.apply, variables, x, labels) > 0
    assert _direct_convs(apply, variables, x, labels) == 0
    out = jax.jit(lambda v, x, y: apply(v, x, y))(variables, x, labels)
    assert rel_error(out, arrays["out_nhwc"]) < 1e-5
