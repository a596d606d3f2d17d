r"""Elementary layers shared by the score networks (NHWC layout throughout).

Initialization follows the DDPM convention used by the paper's networks: every convolution and dense
kernel is drawn from a fan-average uniform variance-scaling distribution, biases are zero, and the
last layer of each residual branch is scaled by ``init_scale`` (``0`` means "almost zero", so that
each block starts as the identity and the whole network starts near zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sde_jax.models import winograd

Array = jax.Array

NONLINEARITIES: dict[str, Callable[[Array], Array]] = {
    "swish": nn.swish,
    "relu": nn.relu,
    "elu": nn.elu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}


def get_act(name: str) -> Callable[[Array], Array]:
    """Returns the nonlinearity called ``name`` (``swish``, ``relu``, ``elu`` or ``lrelu``)."""
    try:
        return NONLINEARITIES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown `nonlinearity` {name!r}; expected one of {sorted(NONLINEARITIES)}"
        ) from None


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """Fan-average uniform variance scaling; a zero ``scale`` becomes ``1e-10``.

    A tiny positive scale rather than an exact zero keeps the kernels distinct from each other (they
    stay random), while making the layer's output negligible at initialization.
    """
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def _kernel_and_bias(module: nn.Module, size: int, in_features: int) -> tuple[Array, Array]:
    """The parameters of a ``size`` x ``size`` convolution module with ``features`` and
    ``init_scale`` fields, named and shaped as ``nn.Conv``'s (so the checkpoint converter's names
    hold): ``kernel [size, size, in_features, features]`` and a zero-initialized ``bias``."""
    kernel = module.param(
        "kernel", default_init(module.init_scale), (size, size, in_features, module.features)
    )
    bias = module.param("bias", nn.initializers.zeros, (module.features,))
    return kernel, bias


CONV_ALGORITHMS = ("direct", "winograd")
# From about 128 channels on both sides Winograd pays on XLA:CPU (module docstring of winograd.py).
DEFAULT_WINOGRAD_MIN_CHANNELS = 128
# Network fields that choose how the network computes, not what: they add no parameter and change
# the output only by rounding, so checkpoints and run signatures leave them out.
COMPUTE_FIELDS = ("conv_algorithm", "winograd_min_channels", "materialize_blocks")


def check_compute_options(
    conv_algorithm: str, winograd_min_channels: int, materialize_blocks: bool
) -> None:
    """Raises ``ValueError`` naming the field of :data:`COMPUTE_FIELDS` whose value is invalid."""
    check_choice("conv_algorithm", conv_algorithm, CONV_ALGORITHMS)
    if (
        not isinstance(winograd_min_channels, int)
        or isinstance(winograd_min_channels, bool)
        or winograd_min_channels < 1
    ):
        raise ValueError(
            f"`winograd_min_channels` must be a positive int; got {winograd_min_channels!r}"
        )
    if not isinstance(materialize_blocks, bool):
        raise ValueError(f"`materialize_blocks` must be True or False; got {materialize_blocks!r}")


def conv_options(module: nn.Module) -> dict:
    """The ``conv_algorithm`` and ``winograd_min_channels`` fields of ``module``, as keyword
    arguments of :func:`conv3x3`, for modules that pass them on to their convolutions."""
    return dict(
        conv_algorithm=module.conv_algorithm, winograd_min_channels=module.winograd_min_channels
    )


class Conv3x3(nn.Module):
    """A 3x3 convolution with bias (parameters ``kernel [3, 3, C_in, C_out]`` and ``bias``, as
    ``nn.Conv``'s).

    With ``conv_algorithm='winograd'``, stride-1 convolutions with one pixel of padding on each side
    run by Winograd's :math:`F(2 \\times 2, 3 \\times 3)` (:mod:`sde_jax.models.winograd`) when the
    feature map's height and width are even and both channel counts are at least
    ``winograd_min_channels``: 4/9 of the multiply-adds, and a kernel gradient that XLA:CPU
    computes about twice as fast as its direct one. Everything else, and everything with
    ``'direct'`` (the choice for backends whose libraries pick their own algorithms), is
    ``lax.conv_general_dilated``. The price of Winograd is memory: a training step keeps the
    transformed input (4x the convolution's input) for the kernel gradient.

    Attributes:
        features: output channels.
        stride: the stride in both directions.
        padding: ``((top, bottom), (left, right))`` zero padding.
        init_scale: initialization scale.
        conv_algorithm: 'direct' or 'winograd'.
        winograd_min_channels: the fewest input and output channels computed by Winograd.
    """

    features: int
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
    init_scale: float = 1.0
    conv_algorithm: str = "direct"
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS

    def __post_init__(self):
        check_choice("conv_algorithm", self.conv_algorithm, CONV_ALGORITHMS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel, bias = _kernel_and_bias(self, 3, x.shape[-1])
        padding = tuple(tuple(int(p) for p in side) for side in self.padding)
        if self.stride == 1 and padding == ((1, 1), (1, 1)) and self._winograd_applies(x, kernel):
            y = winograd.conv3x3(x, kernel)
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                (self.stride, self.stride),
                padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return y + bias[None, None, None, :]

    def _winograd_applies(self, x: Array, kernel: Array) -> bool:
        _, height, width, _ = x.shape
        return (
            self.conv_algorithm == "winograd"
            and height % 2 == 0
            and width % 2 == 0
            and min(kernel.shape[2], kernel.shape[3]) >= self.winograd_min_channels
        )


def conv3x3(
    features: int,
    *,
    stride: int = 1,
    init_scale: float = 1.0,
    padding="SAME_1",
    conv_algorithm: str = "direct",
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS,
    name=None,
) -> Conv3x3:
    """A 3x3 convolution with one pixel of zero padding on each side (the default)."""
    pad = ((1, 1), (1, 1)) if padding == "SAME_1" else padding
    return Conv3x3(
        features,
        stride,
        pad,
        init_scale,
        conv_algorithm=conv_algorithm,
        winograd_min_channels=winograd_min_channels,
        name=name,
    )


class Conv1x1(nn.Module):
    """A 1x1 convolution (kernel ``[1, 1, C_in, C_out]``) computed as a matrix product.

    XLA's CPU kernel gradient of a 1x1 convolution transposes the activations and is several times
    slower than the equivalent matrix product, whose gradient is another matrix product.

    Attributes:
        features: output channels.
        init_scale: initialization scale.
    """

    features: int
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel, bias = _kernel_and_bias(self, 1, x.shape[-1])
        y = jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
        return y + bias[None, None, None, :]


def conv1x1(features: int, *, init_scale: float = 1.0, name=None) -> Conv1x1:
    """A 1x1 convolution."""
    return Conv1x1(features, init_scale, name=name)


def dense(features: int, *, init_scale: float = 1.0, name=None) -> nn.Dense:
    """A dense layer (also used as the channel-mixing "network in network" of attention blocks)."""
    return nn.Dense(
        features,
        kernel_init=default_init(init_scale),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def group_norm(num_groups: int, name=None) -> nn.GroupNorm:
    """Group normalization with the networks' epsilon of ``1e-6``.

    The two-pass variance is used: the one-pass ``E[x^2] - E[x]^2`` loses digits on activations with
    a large mean, which would break float32 parity with the reference networks.
    """
    return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, use_fast_variance=False, name=name)


def materialize(x: Array) -> Array:
    r"""Returns ``x`` unchanged, but as a buffer that XLA computes once.

    XLA:CPU fuses cheap element-wise producers (adds, multiplies) into each of their consumers,
    recomputing them there. Along the residual stream of a U-Net a block's output feeds the next
    block's normalization statistics, its normalized input, its skip path and a skip connection
    of the up path, and the recomputed chains compound from block to block: without this, the
    DDPM++ training step recomputes whole levels of the forward pass and of the gradient inside
    single fusions (about 0.57 s of a 4.7 s step on one core). XLA:CPU counts a floating-point division as
    expensive and does not duplicate it, so dividing by a one that it cannot constant-fold makes
    the value a materialized buffer read by its consumers; by the chain rule the tangent and the
    cotangent of ``x`` are divided by the same one and are materialized too.

    The one is :math:`0 \cdot x_{0,\dots,0} + 1`: XLA does not fold a floating-point product
    with zero (which is not zero for an infinite or NaN factor) nor a division by it. For finite
    activations it is exactly one, and :math:`x / 1 = x` exactly in IEEE arithmetic (the
    compiled program around it may still round differently: XLA contracts multiply-adds into
    FMAs on either side of a materialized buffer, not across it); were :math:`x_{0,\dots,0}` infinite or NaN,
    the whole batch would come out NaN, as the training loss would anyway. (With a batch-sharded
    ``x`` this reads one element across devices, a scalar's worth of communication.)

    Measured on XLA:CPU only, where the networks apply it to their block outputs with
    ``materialize_blocks=True``; elsewhere the scalar read would cost a collective per block on a
    batch-sharded ``x``, for a fusion problem not seen there.

    Args:
        x: a floating-point array of any shape.

    Returns:
        ``x``, same shape and dtype.

    Raises:
        TypeError: if ``x`` is not floating point (an integer division would change its type).
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"materialize needs a floating-point array; got dtype {x.dtype}")
    # A scalar: with a per-example one ([B, 1, ..., 1]) XLA 0.10 still duplicated the producers.
    # And not 0 * isnan(...), which XLA rewrites into a select between equal constants.
    one = jax.lax.stop_gradient(0 * x[(0,) * x.ndim] + 1)
    return x / one


def ncsnpp_groups(channels: int) -> int:
    """Number of groups NCSN++ uses for ``channels`` channels: :math:`\\min(C / 4, 32)`."""
    return min(channels // 4, 32)


def timestep_embedding(timesteps: Array, dim: int, max_positions: int = 10_000) -> Array:
    r"""Sinusoidal embedding of (possibly fractional) timesteps, shape ``[B] -> [B, dim]``.

    .. math:: e = [\sin(t\,\omega_0), \dots, \sin(t\,\omega_{h-1}), \cos(t\,\omega_0), \dots],
        \quad \omega_k = P^{-k / (h - 1)},\ h = \lfloor dim / 2 \rfloor,\ P = \text{max\_positions},

    zero-padded by one column when ``dim`` is odd.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape [B]; got {timesteps.shape}")
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(np.log(max_positions) / (half - 1)))
    angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierProjection(nn.Module):
    r"""Random Fourier features of a scalar: :math:`[\sin(2\pi x W), \cos(2\pi x W)]`.

    ``W ~ N(0, scale^2)`` of size ``embedding_size`` is stored as a parameter (so checkpoints carry
    it) but receives no gradient.

    Attributes:
        embedding_size: number of frequencies; the output has twice as many features.
        scale: standard deviation of the frequencies.
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        w = jax.lax.stop_gradient(w)
        proj = x[:, None] * w[None, :] * (2 * np.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class AttnBlock(nn.Module):
    r"""Single-head self-attention over all pixels, with a residual connection.

    ``out = x + proj(softmax(q k^T / sqrt(C)) v)``, divided by :math:`\sqrt2` when
    ``skip_rescale``; ``q, k, v`` are per-pixel linear maps of the group-normalized input.

    Attributes:
        num_groups: groups of the input normalization.
        skip_rescale: divide the residual sum by :math:`\sqrt2`.
        init_scale: initialization scale of the output projection.
        materialize_output: pass the output through :func:`materialize`.
    """

    num_groups: int
    skip_rescale: bool = False
    init_scale: float = 0.0
    materialize_output: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, height, width, c = x.shape
        h = group_norm(self.num_groups, name="norm")(x)
        q = dense(c, init_scale=0.1, name="q")(h)
        k = dense(c, init_scale=0.1, name="k")(h)
        v = dense(c, init_scale=0.1, name="v")(h)
        logits = jnp.einsum("bhwc,bijc->bhwij", q, k) * (c**-0.5)
        weights = jax.nn.softmax(logits.reshape(b, height, width, height * width), axis=-1)
        weights = weights.reshape(b, height, width, height, width)
        h = jnp.einsum("bhwij,bijc->bhwc", weights, v)
        h = dense(c, init_scale=self.init_scale, name="out")(h)
        out = (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h
        return materialize(out) if self.materialize_output else out


def as_tuple(module: nn.Module, field: str) -> None:
    """Stores a sequence field of a (frozen) module as a tuple, so that the module hashes."""
    value = getattr(module, field)
    if not isinstance(value, tuple):
        object.__setattr__(module, field, tuple(value))


def check_choice(field: str, value: str, choices: Sequence[str]) -> None:
    """Raises ``ValueError`` naming ``field`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown `{field}` {value!r}; expected one of {list(choices)}")


def level_resolutions(x_shape: Sequence[int], num_levels: int) -> list[int]:
    """Feature-map widths of the ``num_levels`` levels of a U-Net for an NHWC input shape.

    Raises:
        ValueError: if the image is not 4-D or its size is not divisible by the total down-sampling
            factor :math:`2^{L-1}`.
    """
    if len(x_shape) != 4:
        raise ValueError(f"expected an NHWC batch [B, H, W, C]; got shape {tuple(x_shape)}")
    factor = 2 ** (num_levels - 1)
    _, height, width, _ = x_shape
    if height % factor or width % factor:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the down-sampling factor {factor} "
            f"of the {num_levels} levels of `ch_mult`"
        )
    return [width // 2**i for i in range(num_levels)]


def check_attn_resolutions(attn_resolutions: Sequence[int], resolutions: Sequence[int]) -> None:
    """Raises ``ValueError`` if an attention resolution is not one of the levels' widths."""
    missing = sorted(set(attn_resolutions) - set(resolutions))
    if missing:
        raise ValueError(
            f"`attn_resolutions` {list(attn_resolutions)} contains {missing}, which does not "
            f"occur; "
            f"the feature-map widths of this network at this image size are {list(resolutions)}"
        )


def sigma_table(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
    r"""The discrete SMLD noise levels indexed by integer labels, from :math:`\sigma_{\max}` down to
    :math:`\sigma_{\min}` (geometric), float32 ``[num_scales]``."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)).astype(np.float32)
