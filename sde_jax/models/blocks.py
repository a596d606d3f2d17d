r"""Residual blocks of the score networks (NHWC).

Every block computes :math:`x' + F(x, e)` (divided by :math:`\sqrt2` when ``skip_rescale``), where
:math:`e` is the conditioning embedding, added as a per-channel bias after the first convolution,
and :math:`x'` is the input, projected when the channel count or the resolution changes. With
``materialize_output`` the sum goes through :func:`~sde_jax.models.layers.materialize`, so that
XLA:CPU computes the residual stream (and its gradient) once instead of inside every consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

from sde_jax.models import resample
from sde_jax.models.layers import (
    DEFAULT_WINOGRAD_MIN_CHANNELS,
    conv1x1,
    conv3x3,
    conv_options,
    dense,
    group_norm,
    materialize,
)

Array = jax.Array


def _add_embedding(h: Array, temb: Array | None, act, features: int) -> Array:
    if temb is None:
        return h
    bias = dense(features, name="temb_proj")(act(temb))
    return h + bias[:, None, None, :]


def _residual_sum(block: nn.Module, x: Array, h: Array) -> Array:
    out = (x + h) / np.sqrt(2.0) if block.skip_rescale else x + h
    return materialize(out) if block.materialize_output else out


class ResnetBlockDDPM(nn.Module):
    """The residual block of DDPM++ (``resblock_type='ddpm'``) and, with ``num_groups=32``,
    ``skip_rescale=False`` and ``init_scale=0``, of the DDPM baseline.

    Attributes:
        features: output channels (``None``: same as the input).
        act: nonlinearity.
        num_groups: groups of the two normalizations, as a function of their channel count.
        dropout: dropout rate before the second convolution.
        skip_rescale: divide the residual sum by :math:`\\sqrt2`.
        init_scale: initialization scale of the second convolution.
        conv_algorithm: of the 3x3 convolutions (:class:`~sde_jax.models.layers.Conv3x3`).
        winograd_min_channels: idem.
        materialize_output: pass the output through :func:`~sde_jax.models.layers.materialize`.
    """

    features: int | None
    act: Callable[[Array], Array]
    num_groups: Callable[[int], int]
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    conv_algorithm: str = "direct"
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS
    materialize_output: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, *, train: bool = False) -> Array:
        in_ch = x.shape[-1]
        out_ch = self.features or in_ch
        h = self.act(group_norm(self.num_groups(in_ch), name="norm_0")(x))
        h = conv3x3(out_ch, name="conv_0", **conv_options(self))(h)
        h = _add_embedding(h, temb, self.act, out_ch)
        h = self.act(group_norm(self.num_groups(out_ch), name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, init_scale=self.init_scale, name="conv_1", **conv_options(self))(h)
        if in_ch != out_ch:
            x = dense(out_ch, init_scale=0.1, name="skip")(x)
        return _residual_sum(self, x, h)


class ResnetBlockBigGAN(nn.Module):
    """The BigGAN-style residual block of NCSN++/DDPM++ (``resblock_type='biggan'``), which can
    also resample by two (both branches are resampled before their convolutions).

    Attributes:
        features: output channels (``None``: same as the input).
        act: nonlinearity.
        num_groups: groups of the two normalizations, as a function of their channel count.
        up: upsample by two.
        down: downsample by two.
        dropout: dropout rate before the second convolution.
        fir: resample with the FIR filter ``fir_kernel`` (otherwise nearest / box filter).
        fir_kernel: 1-D FIR filter.
        skip_rescale: divide the residual sum by :math:`\\sqrt2`.
        init_scale: initialization scale of the second convolution.
        conv_algorithm: of the 3x3 convolutions (:class:`~sde_jax.models.layers.Conv3x3`).
        winograd_min_channels: idem.
        materialize_output: pass the output through :func:`~sde_jax.models.layers.materialize`.
    """

    features: int | None
    act: Callable[[Array], Array]
    num_groups: Callable[[int], int]
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    conv_algorithm: str = "direct"
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS
    materialize_output: bool = False

    def _resample(self, x: Array) -> Array:
        if self.up:
            if self.fir:
                return resample.fir_upsample_2d(x, self.fir_kernel)
            return resample.naive_upsample_2d(x)
        if self.down:
            if self.fir:
                return resample.fir_downsample_2d(x, self.fir_kernel)
            return resample.naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, *, train: bool = False) -> Array:
        in_ch = x.shape[-1]
        out_ch = self.features or in_ch
        h = self.act(group_norm(self.num_groups(in_ch), name="norm_0")(x))
        h = self._resample(h)
        x = self._resample(x)
        h = conv3x3(out_ch, name="conv_0", **conv_options(self))(h)
        h = _add_embedding(h, temb, self.act, out_ch)
        h = self.act(group_norm(self.num_groups(out_ch), name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, init_scale=self.init_scale, name="conv_1", **conv_options(self))(h)
        if in_ch != out_ch or self.up or self.down:
            x = conv1x1(out_ch, name="skip")(x)
        return _residual_sum(self, x, h)


class Combine(nn.Module):
    """Merges a progressive-input image into the feature map: 1x1 convolution of ``x`` to the
    channels of ``y``, then a sum or a channel concatenation (``method`` 'sum' or 'cat')."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv1x1(y.shape[-1], name="conv")(x)
        if self.method == "cat":
            return jax.numpy.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"unknown `progressive_combine` {self.method!r}; expected 'sum' or 'cat'")
