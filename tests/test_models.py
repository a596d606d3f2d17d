"""Score networks: full-size parameter counts, option validation, initialization, resampling."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from sde_jax.models import DDPM, NCSNpp, get_model, make_score_fn, resample
from sde_jax.models.layers import materialize
from sde_jax.models.presets import PRESETS, preset, preset_fields
from sde_jax.sde import VESDE, VPSDE

# Reference counts of the paper's networks (PyTorch, all parameters incl. the Fourier projection):
# exact where known exactly, else in units of 10k parameters.
EXACT_COUNTS = {
    "vp/cifar10_ddpmpp_continuous": 61_804_419,
    "subvp/cifar10_ddpmpp_continuous": 61_804_419,
    "ve/cifar10_ncsnpp_continuous": 62_758_915,
}
ROUNDED_COUNTS = {  # millions, 2 decimals
    "ve/cifar10_ncsnpp": 62.69,
    "vp/cifar10_ncsnpp_continuous": 62.69,
    "subvp/cifar10_ncsnpp_continuous": 62.69,
    "vp/cifar10_ddpmpp_deep_continuous": 106.63,
    "ve/cifar10_ncsnpp_deep_continuous": 107.59,
    "vp/cifar10_ncsnpp_deep_continuous": 107.52,
    "subvp/cifar10_ncsnpp_deep_continuous": 107.52,
    "vp/ddpm/cifar10_continuous": 35.22,
    "ve/church_ncsnpp_continuous": 65.57,
    "ve/ffhq_256_ncsnpp_continuous": 65.57,
}


def count_params(model, image_size, channels=3):
    x = jnp.zeros((1, image_size, image_size, channels))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.ones((1,))))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize("key", sorted(EXACT_COUNTS))
def test_full_size_counts_exact(key):
    _, size, _ = preset_fields(key)
    assert count_params(preset(key), size) == EXACT_COUNTS[key]


@pytest.mark.parametrize("key", sorted(ROUNDED_COUNTS))
def test_full_size_counts_rounded(key):
    _, size, _ = preset_fields(key)
    assert round(count_params(preset(key), size) / 1e6, 2) == ROUNDED_COUNTS[key]


def test_presets_build():
    for key, (name, _, fields) in PRESETS.items():
        model = preset(key)
        assert isinstance(model, NCSNpp if name == "ncsnpp" else DDPM), key
        assert model.nf == fields["nf"]
    assert preset("vp/cifar10_ddpmpp_continuous", num_classes=10).num_classes == 10


# --------------------------------------------------------------------------------------------
# Bad input.

SMALL = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


@pytest.mark.parametrize(
    "field,value",
    [
        ("resblock_type", "resnet"),
        ("progressive", "input_skip"),
        ("progressive_input", "output_skip"),
        ("progressive_combine", "mean"),
        ("embedding_type", "learned"),
        ("nonlinearity", "gelu"),
    ],
)
def test_unknown_option_values(field, value):
    with pytest.raises(ValueError, match=field):
        NCSNpp(**SMALL, **{field: value})


@pytest.mark.parametrize("kernel", [(), (1,), ((1, 3), (3, 1)), (1, -1)])
def test_bad_fir_kernel(kernel):
    with pytest.raises(ValueError, match="fir_kernel"):
        NCSNpp(**SMALL, fir_kernel=kernel)


def test_bad_sizes_and_fields():
    with pytest.raises(ValueError, match="ch_mult"):
        NCSNpp(nf=16, ch_mult=())
    with pytest.raises(ValueError, match="nf"):
        DDPM(nf=16)
    with pytest.raises(ValueError, match="nonlinearity"):
        DDPM(nonlinearity="tanh")
    with pytest.raises(ValueError, match="unknown model"):
        get_model("unet")
    with pytest.raises(ValueError, match="channel_mult"):
        get_model("ncsnpp", channel_mult=(1, 2))


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("conv_algorithm", "fft", r"\['direct', 'winograd'\]"),
        ("winograd_min_channels", 0, "positive int"),
        ("materialize_blocks", "yes", "True or False"),
    ],
)
@pytest.mark.parametrize("name", ["ncsnpp", "ddpm"])
def test_bad_compute_fields(name, field, value, allowed):
    fields = dict(SMALL, nf=32) if name == "ddpm" else SMALL
    with pytest.raises(ValueError, match=f"`{field}`.*{allowed}"):
        get_model(name, **fields, **{field: value})


@pytest.mark.parametrize("name", ["ncsnpp", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_compute_fields_change_neither_parameters_nor_outputs(name):
    fields = dict(SMALL, nf=32, ch_mult=(1, 1)) if name == "ddpm" else SMALL
    compute = dict(conv_algorithm="winograd", winograd_min_channels=1, materialize_blocks=True)
    plain, tuned = get_model(name, **fields), get_model(name, **fields, **compute)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    t = jnp.array([10.0, 500.0])
    variables = jax.jit(plain.init)(jax.random.PRNGKey(0), x, t)
    tuned_shapes = jax.eval_shape(lambda: tuned.init(jax.random.PRNGKey(0), x, t))
    assert jax.tree_util.tree_structure(tuned_shapes) == jax.tree_util.tree_structure(variables)
    jaxprs = [str(jax.make_jaxpr(m.apply)(variables, x, t)) for m in (plain, tuned)]
    convs, divs = ([j.count(op) for j in jaxprs] for op in ("conv_general_dilated", " div "))
    assert convs[1] < convs[0] and divs[1] > divs[0]
    want = jax.jit(plain.apply)(variables, x, t)
    got = jax.jit(tuned.apply)(variables, x, t)
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def _init(model, shape):
    x = jnp.zeros(shape)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.ones(shape[:1])))


@pytest.mark.parametrize("cls", [NCSNpp, DDPM])
def test_attention_resolution_must_occur(cls):
    fields = dict(SMALL, nf=32) if cls is DDPM else SMALL
    _init(cls(**fields), (1, 16, 16, 3))  # widths 16, 8: fine
    with pytest.raises(ValueError, match=r"attn_resolutions.*\[4\]"):
        _init(cls(**dict(fields, attn_resolutions=(4,))), (1, 16, 16, 3))


@pytest.mark.parametrize("cls", [NCSNpp, DDPM])
def test_image_size_must_be_divisible(cls):
    fields = (
        dict(SMALL, nf=32, ch_mult=(1, 1, 1)) if cls is DDPM else dict(SMALL, ch_mult=(1, 1, 1))
    )
    with pytest.raises(ValueError, match=r"18x18 is not divisible by the down-sampling factor 4"):
        _init(cls(**dict(fields, attn_resolutions=())), (1, 18, 18, 3))
    with pytest.raises(ValueError, match="labels"):
        cls(**fields).init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)), jnp.ones((3,)))


# --------------------------------------------------------------------------------------------
# Initialization: near-zero output, so the first DSM loss is that of the zero score.


def _small(key, **over):
    name, _, fields = preset_fields(key)
    fields.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), **over)
    return get_model(name, **fields)


def _dsm_loss(sde, model, variables, x0, key, reduce_mean):
    # The paper's continuous DSM loss with lambda = std^2, written out.
    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],), minval=1e-5, maxval=1.0)
    z = jax.random.normal(k_z, x0.shape)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None, None, None] * z
    score = make_score_fn(sde, model)(variables, xt, t)
    sq = ((score * std[:, None, None, None] + z) ** 2).reshape(x0.shape[0], -1)
    return jnp.mean(jnp.mean(sq, -1) if reduce_mean else 0.5 * jnp.sum(sq, -1))


@pytest.mark.parametrize(
    "key,sde,reduce_mean",
    [
        ("vp/cifar10_ddpmpp_continuous", VPSDE(), True),
        ("ve/cifar10_ncsnpp_continuous", VESDE(), False),
    ],
    ids=["vp", "ve"],
)
def test_initial_loss(key, sde, reduce_mean):
    model = _small(key)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 3))
    if model.centered:
        x0 = 2 * x0 - 1
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x0, jnp.ones((16,)))
    loss_fn = jax.jit(lambda v, x, k: _dsm_loss(sde, model, v, x, k, reduce_mean))
    loss = float(loss_fn(variables, x0, jax.random.PRNGKey(2)))
    expected = 1.0 if reduce_mean else 0.5 * x0[0].size
    assert abs(loss / expected - 1) < 0.05, loss


def test_initial_loss_with_project_loss():
    losses = pytest.importorskip("sde_jax.losses")
    model = _small("vp/cifar10_ddpmpp_continuous")
    sde = VPSDE()
    x0 = 2 * jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 3)) - 1
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x0, jnp.ones((16,)))
    loss_fn = losses.make_loss_fn(sde, make_score_fn(sde, model), reduce_mean=True, train=False)
    assert abs(float(jax.jit(loss_fn)(variables, jax.random.PRNGKey(2), x0)) - 1.0) < 0.05


def test_dropout_and_class_labels():
    model = _small("vp/cifar10_ddpmpp_continuous", dropout=0.5, num_classes=10, init_scale=1.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    t = jnp.array([10.0, 500.0])
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, t)
    assert variables["params"]["class_embed"]["embedding"].shape == (11, 64)
    apply = jax.jit(model.apply, static_argnames="train")
    y0, y1 = jnp.array([0, 0]), jnp.array([3, 3])
    a = apply(variables, x, t, y0)
    assert np.array_equal(a, apply(variables, x, t, y0))
    assert not np.allclose(a, apply(variables, x, t, y1))
    assert not np.allclose(a, apply(variables, x, t, None))  # the unconditional token
    rng = {"dropout": jax.random.PRNGKey(5)}
    d1 = apply(variables, x, t, y0, train=True, rngs=rng)
    assert np.array_equal(d1, apply(variables, x, t, y0, train=True, rngs=rng))
    assert not np.allclose(d1, a)


# --------------------------------------------------------------------------------------------
# FIR resampling against a direct implementation of upfirdn (zero insertion, 2-D convolution).


def _upfirdn_ref(x, k1, up, down, pad):
    k = np.outer(k1, k1)
    b, h, w, c = x.shape
    u = np.zeros((b, h * up, w * up, c))
    u[:, ::up, ::up] = x
    u = np.pad(u, ((0, 0), pad, pad, (0, 0)))
    out = np.stack(
        [
            np.stack([signal.convolve2d(u[i, ..., j], k, mode="valid") for j in range(c)], -1)
            for i in range(b)
        ]
    )
    return out[:, ::down, ::down]


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 5), (1, 1)])
def test_fir_resampling(kernel):
    x = np.random.default_rng(0).normal(size=(2, 8, 6, 3))
    k1 = np.asarray(kernel, float) / np.sum(kernel)
    p = len(kernel) - 2
    up = resample.fir_upsample_2d(jnp.asarray(x, jnp.float32), kernel)
    ref = _upfirdn_ref(x, 2 * k1, 2, 1, ((p + 1) // 2 + 1, p // 2))
    np.testing.assert_allclose(up, ref, atol=1e-5)
    down = resample.fir_downsample_2d(jnp.asarray(x, jnp.float32), kernel)
    ref = _upfirdn_ref(x, k1, 1, 2, ((p + 1) // 2, p // 2))
    np.testing.assert_allclose(down, ref, atol=1e-5)


def test_fir_conv_up_is_transposed_conv_then_filter():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
    module = resample.FIRConvUp(6)
    variables = module.init(jax.random.PRNGKey(1), x)
    bias = jax.random.normal(jax.random.PRNGKey(2), (6,))
    variables = {"params": dict(variables["params"], bias=bias)}
    ours = module.apply(variables, x)
    y = jax.lax.conv_transpose(
        x,
        variables["params"]["kernel"],
        (2, 2),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    k1 = np.array([1, 3, 3, 1], float) / 8 * 2
    ref = _upfirdn_ref(np.asarray(y, np.float64), k1, 1, 1, (1, 1)) + np.asarray(bias)
    assert ours.shape == (2, 10, 10, 6)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_fir_conv_down_shape_and_constant():
    x = jnp.ones((1, 8, 8, 2))
    up = resample.fir_upsample_2d(x, (1, 3, 3, 1))
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, atol=1e-6)
    module = resample.FIRConvDown(3)
    variables = module.init(jax.random.PRNGKey(0), x)
    assert module.apply(variables, x).shape == (1, 4, 4, 3)


def test_materialize_is_the_identity_for_values_gradients_and_tangents():
    x = (
        jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 5))
        * 10.0 ** jnp.arange(-3, 2)[None, None, None]
    )
    np.testing.assert_array_equal(jax.jit(materialize)(x), x)
    f = lambda x: jnp.sum(jnp.sin(materialize(x)) * x)
    g = lambda x: jnp.sum(jnp.sin(x) * x)
    # Op by op the gradient is the same bit for bit; compiled, XLA may contract multiply-adds into
    # FMAs differently on either side of the materialized buffer (float32 rounding).
    np.testing.assert_array_equal(jax.grad(f)(x), jax.grad(g)(x))
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(g)(x), rtol=1e-6, atol=1e-7)
    t = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    _, tangent = jax.jvp(materialize, (x,), (t,))
    np.testing.assert_array_equal(tangent, t)
    with pytest.raises(TypeError, match="floating-point"):
        materialize(jnp.arange(3))


def _max_fused_arithmetic(depth: int) -> int:
    """Most adds/multiplies/subtracts in one fused computation of the gradient of a residual
    stream of ``depth`` normalized blocks whose outputs also feed a running sum (as the U-Net's
    skip connections do), each output through :func:`materialize`."""

    def loss(x, w):
        skips = 0.0
        for i in range(depth):
            h = (x - jnp.mean(x, axis=-1, keepdims=True)) * w[i][None]
            x = materialize((x + h) * 0.7)
            skips = skips + 0.5 * x
        return jnp.sum(skips * skips)

    x, w = jnp.ones((64, 128)), jnp.ones((depth, 128))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    bodies = [c for c in re.split(r"\n(?=\S)", hlo) if c.startswith("%fused")]
    return max(len(re.findall(r" (?:add|multiply|subtract)\(", c)) for c in bodies)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="inspects XLA:CPU's fusion decisions")
def test_materialize_stops_xla_from_recomputing_the_residual_stream():
    # Without materialize, XLA:CPU fuses each block's (cheap) output into all of its consumers,
    # so the largest fusion grows by ~14 operations per block (55 at depth 4, 223 at depth 16);
    # with it, only the running sum (one add per block) accumulates.
    assert _max_fused_arithmetic(16) - _max_fused_arithmetic(8) <= 2 * 8
