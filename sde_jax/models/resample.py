r"""Up- and down-sampling by two, with and without FIR filters, in pure JAX (NHWC).

The FIR resamplers are StyleGAN2's ``upfirdn``: zero-insertion upsampling, zero padding, convolution
with a separable, normalized filter :math:`k \otimes k / (\sum k)^2` and decimation. The filter is a
fixed depthwise operator, so it is written here as a weighted sum of shifted slices of the input,
one spatial axis at a time: no convolution primitive is involved, the cost is a few elementwise
passes, and its transpose (the backward pass) is as cheap as the forward.

The learned "upsample then 3x3 convolution" is written as explicit zero insertion followed by an
ordinary convolution rather than a transposed convolution: on CPU, XLA's kernel gradient of a
transposed (input-dilated) convolution is orders of magnitude slower than that of a plain one.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models.layers import (
    DEFAULT_WINOGRAD_MIN_CHANNELS,
    conv3x3,
    conv_options,
    default_init,
)

Array = jax.Array


def normalized_taps(kernel: Sequence[float]) -> np.ndarray:
    """The 1-D FIR filter ``kernel / sum(kernel)`` (float64), validated."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 1 or k.shape[0] < 2 or not np.isfinite(k).all() or k.sum() == 0:
        raise ValueError(
            f"`fir_kernel` must be a 1-D sequence of at least 2 finite numbers with a nonzero sum; "
            f"got {list(np.atleast_1d(kernel))}"
        )
    return k / k.sum()


def zero_insert(x: Array, axis: int, factor: int = 2) -> Array:
    """Inserts ``factor - 1`` zeros after every element of ``x`` along ``axis``."""
    if factor == 1:
        return x
    parts = [x] + [jnp.zeros_like(x)] * (factor - 1)
    y = jnp.stack(parts, axis=axis + 1)
    shape = list(x.shape)
    shape[axis] *= factor
    return y.reshape(shape)


def upfirdn_1d(
    x: Array, taps: np.ndarray, axis: int, *, up: int = 1, down: int = 1, pad=(0, 0)
) -> Array:
    r"""``upfirdn`` along one axis: zero-insert ``up``, pad, convolve with ``taps``, keep every
    ``down``-th sample.

    With :math:`u` the zero-inserted and padded input, :math:`y[n] = \sum_j \tilde k[j]\,u[n\,
    \text{down} + j]`, where :math:`\tilde k` is ``taps`` reversed (a true convolution).
    """
    x = zero_insert(x, axis, up)
    widths = [(0, 0)] * x.ndim
    widths[axis] = tuple(pad)
    x = jnp.pad(x, widths)
    k = len(taps)
    n_out = (x.shape[axis] - k) // down + 1
    flipped = taps[::-1]
    out = None
    for j in range(k):
        if flipped[j] == 0:
            continue
        term = jax.lax.slice_in_dim(x, j, j + down * (n_out - 1) + 1, stride=down, axis=axis)
        term = term * np.float32(flipped[j])
        out = term if out is None else out + term
    return out


def upfirdn_2d(x: Array, taps: np.ndarray, *, up: int = 1, down: int = 1, pad=(0, 0)) -> Array:
    """Separable ``upfirdn`` over the two spatial axes of an NHWC batch."""
    for axis in (1, 2):
        x = upfirdn_1d(x, taps, axis, up=up, down=down, pad=pad)
    return x


def fir_upsample_2d(x: Array, kernel: Sequence[float], factor: int = 2) -> Array:
    """FIR upsampling, ``[B, H, W, C] -> [B, 2H, 2W, C]``; constant images keep their value."""
    taps = normalized_taps(kernel) * factor
    p = len(taps) - factor
    return upfirdn_2d(x, taps, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: Array, kernel: Sequence[float], factor: int = 2) -> Array:
    """FIR downsampling, ``[B, H, W, C] -> [B, H/2, W/2, C]``."""
    taps = normalized_taps(kernel)
    p = len(taps) - factor
    return upfirdn_2d(x, taps, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling over non-overlapping ``factor x factor`` windows."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def _conv(x: Array, kernel: Array, stride: int, padding) -> Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class FIRConvUp(nn.Module):
    r"""Learned 3x3 convolution fused with FIR upsampling (StyleGAN2's ``upsample_conv_2d``).

    Equal to a stride-2 transposed convolution followed by the FIR filter, then the bias; computed
    as zero insertion, a plain VALID convolution and the FIR filter (see the module docstring).

    Attributes:
        features: output channels.
        kernel: 1-D FIR filter.
    """

    features: int
    kernel: Sequence[float] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        factor, ksize = 2, 3
        w = self.param("kernel", default_init(), (ksize, ksize, x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        taps = normalized_taps(self.kernel) * factor
        x = zero_insert(zero_insert(x, 1, factor), 2, factor)
        # A transposed convolution sees ksize - 1 zeros before the first input pixel and after the
        # last one; zero insertion already appended factor - 1 of the trailing ones.
        x = _conv(x, w, 1, ((ksize - 1, ksize - factor), (ksize - 1, ksize - factor)))
        p = (len(taps) - factor) - (ksize - 1)
        x = upfirdn_2d(x, taps, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        # The bias comes after the filter, whose gain would otherwise scale it.
        return x + b[None, None, None, :]


class FIRConvDown(nn.Module):
    r"""FIR filter fused with a learned stride-2 3x3 convolution (StyleGAN2's
    ``conv_downsample_2d``).

    Attributes:
        features: output channels.
        kernel: 1-D FIR filter.
    """

    features: int
    kernel: Sequence[float] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        factor, ksize = 2, 3
        w = self.param("kernel", default_init(), (ksize, ksize, x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        taps = normalized_taps(self.kernel)
        p = (len(taps) - factor) + (ksize - 1)
        x = upfirdn_2d(x, taps, pad=((p + 1) // 2, p // 2))
        return _conv(x, w, factor, "VALID") + b[None, None, None, :]


class Upsample(nn.Module):
    """Upsampling by two: nearest neighbour or FIR, optionally with a learned 3x3 convolution.

    Without FIR the convolution follows nearest-neighbour upsampling; with FIR it is fused as in
    :class:`FIRConvUp`.

    Attributes:
        features: output channels when ``with_conv`` (otherwise the input's are kept).
        with_conv: add the learned convolution.
        fir: use the FIR filter ``fir_kernel`` rather than nearest neighbour.
        fir_kernel: 1-D FIR filter.
        conv_algorithm: of the convolution without FIR (:class:`~sde_jax.models.layers.Conv3x3`).
        winograd_min_channels: idem.
    """

    features: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    conv_algorithm: str = "direct"
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = self.features or x.shape[-1]
        if self.fir:
            if self.with_conv:
                return FIRConvUp(features, self.fir_kernel, name="fir_conv")(x)
            return fir_upsample_2d(x, self.fir_kernel)
        h = naive_upsample_2d(x)
        if self.with_conv:
            h = conv3x3(features, name="conv", **conv_options(self))(h)
        return h


class Downsample(nn.Module):
    """Downsampling by two: average pooling or FIR, optionally with a learned strided convolution.

    Without FIR the convolution has stride 2 and pads one pixel at the bottom and right only (as
    TensorFlow's 'SAME' padding does for even sizes); with FIR it is fused as in
    :class:`FIRConvDown`.

    Attributes:
        features: output channels when ``with_conv`` (otherwise the input's are kept).
        with_conv: use a learned convolution rather than a fixed filter.
        fir: use the FIR filter ``fir_kernel`` rather than a 2x2 box filter.
        fir_kernel: 1-D FIR filter.
    """

    features: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = self.features or x.shape[-1]
        if self.fir:
            if self.with_conv:
                return FIRConvDown(features, self.fir_kernel, name="fir_conv")(x)
            return fir_downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            return conv3x3(features, stride=2, padding=((0, 1), (0, 1)), name="conv")(x)
        return naive_downsample_2d(x)
