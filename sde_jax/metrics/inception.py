r"""The FID Inception-v3 network in Flax.

This is the 2015-12-05 TensorFlow Inception graph that TF-GAN (and so the paper's FID, IS and KID)
uses, in the layout of its public PyTorch port (``weights-inception-2015-12-05-6726825d.pth``). It
differs from the torchvision Inception-v3 in ways that change the features:

- the input is resized to 299x299 with TensorFlow 1's bilinear resizing (``align_corners=False``,
  no half-pixel offset, no antialiasing): output pixel :math:`i` samples the input at
  :math:`s_i = i \cdot (H_\text{in} / H_\text{out})` (computed in float32), interpolating between
  :math:`\lfloor s_i \rfloor` and :math:`\min(\lfloor s_i \rfloor + 1, H_\text{in} - 1)`;
- pixel values :math:`x \in [0, 255]` are mapped to :math:`(x - 128) / 128`;
- batch normalization has :math:`\epsilon = 10^{-3}`;
- the average pools inside the Inception blocks do not count the zero padding;
- the last block (``Mixed_7c``) pools its fourth branch with a max pool, not an average pool;
- the classifier has 1008 outputs.

The first two are the input's preparation, :func:`sde_jax.metrics.features.preprocess`; the network
here takes its output.

Outputs (all float32): ``"64"``, ``"192"``, ``"768"`` (globally averaged intermediate features),
``"2048"`` (pool_3, the features of FID and KID), ``"logits_unbiased"`` (pool_3 times the classifier
weights, without the bias: the logits of the Inception Score) and ``"logits"`` (with the bias).

Parameters live in the ``params`` collection only, batch-norm statistics included (the network is
never trained here): per convolution ``kernel`` (HWIO), ``scale``, ``bias``, ``mean``, ``var``, and
``fc`` with ``kernel`` ``[2048, 1008]`` and ``bias``. :mod:`sde_jax.metrics.weights` builds them.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

INPUT_SIZE = 299
BN_EPS = 1e-3
FEATURE_LAYERS = ("64", "192", "768", "2048", "logits_unbiased", "logits")
FEATURE_DIMS = {
    "64": 64,
    "192": 192,
    "768": 768,
    "2048": 2048,
    "logits_unbiased": 1008,
    "logits": 1008,
}
NETWORK = "inception-2015-12-05"


# The convolutions in the order of the PyTorch port's state dict (and of the TorchScript export of
# the same graph, whose names differ): converters match weights by these names or by position.
_BRANCHES = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3", "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
          "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3",
          "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
          "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}  # fmt: skip
_BLOCKS = (
    ("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
    ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
    ("Mixed_7c", "E"),
)  # fmt: skip
CONV_LAYERS: tuple[tuple[str, ...], ...] = (
    *[(name,) for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                           "Conv2d_4a_3x3")],
    *[(block, branch) for block, kind in _BLOCKS for branch in _BRANCHES[kind]],
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The network.


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (inference statistics, eps 1e-3), ReLU.

    The batch norm is folded into the kernel and a bias before the convolution: one multiply over
    the weights instead of one over the activations.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features)
        )
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        inv = scale * lax.rsqrt(var + BN_EPS)
        ph, pw = self.padding
        y = lax.conv_general_dilated(
            x,
            kernel * inv.reshape(1, 1, 1, -1),
            (self.strides, self.strides),
            ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=self.precision,
        )
        return nn.relu(y + (bias - mean * inv).reshape(1, 1, 1, -1))


def _avg_pool_same(x: Array) -> Array:
    # TF's 3x3 'SAME' average pool divides by the number of real (unpadded) inputs.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_valid(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """35x35 block (``Mixed_5b``-``Mixed_5d``): 1x1, 5x5, double 3x3 and pooled branches."""

    pool_features: int
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``)."""

    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorized 7x7 convolutions (``Mixed_6b``-``Mixed_6e``)."""

    channels_7x7: int
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        c7 = self.channels_7x7
        row, col = dict(padding=(0, 3)), dict(padding=(3, 0))
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), **row, name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), **col, name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), **col, name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), **row, name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), **col, name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), **row, name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``)."""

    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches (``Mixed_7b``, ``Mixed_7c``); ``max_pool`` selects
    the pooling of the fourth branch (the TF graph max-pools in ``Mixed_7c``)."""

    max_pool: bool = False
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(ConvBN, precision=self.precision)
        row, col = dict(padding=(0, 1)), dict(padding=(1, 0))
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                conv(384, (1, 3), **row, name="branch3x3_2a")(b3),
                conv(384, (3, 1), **col, name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                conv(384, (1, 3), **row, name="branch3x3dbl_3a")(bd),
                conv(384, (3, 1), **col, name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_same(x)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def _global_mean(x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


class InceptionV3(nn.Module):
    """The FID Inception-v3 on preprocessed input (:func:`sde_jax.metrics.features.preprocess`).

    Attributes:
        with_logits: whether the network has its classifier (``fc``); without it (weights that ship
            only the feature extractor) the ``logits*`` outputs are absent.
        precision: of every convolution and matrix product; ``HIGHEST`` keeps float32 accuracy on
            accelerators that would otherwise use reduced-precision (TF32/bfloat16) passes.
    """

    with_logits: bool = True
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        """``x`` ``[N, 299, 299, 3]`` -> ``{layer: float32 [N, dim]}`` for :data:`FEATURE_LAYERS`."""
        p = self.precision
        conv = functools.partial(ConvBN, precision=p)
        out = {}
        x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # 149x149
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_valid(x)  # 73x73
        out["64"] = _global_mean(x)
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71
        x = _max_pool_valid(x)  # 35x35
        out["192"] = _global_mean(x)
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)  # 17x17
        x = InceptionC(128, precision=p, name="Mixed_6b")(x)
        x = InceptionC(160, precision=p, name="Mixed_6c")(x)
        x = InceptionC(160, precision=p, name="Mixed_6d")(x)
        x = InceptionC(192, precision=p, name="Mixed_6e")(x)
        out["768"] = _global_mean(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)  # 8x8
        x = InceptionE(precision=p, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
        pool3 = _global_mean(x)
        out["2048"] = pool3
        if self.with_logits:
            out["logits_unbiased"], out["logits"] = _Classifier(precision=p, name="fc")(pool3)
        return out


class _Classifier(nn.Module):
    """The 1008-way classifier; returns the logits without and with the bias."""

    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, pool3: Array) -> tuple[Array, Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2048, 1008))
        bias = self.param("bias", nn.initializers.zeros, (1008,))
        unbiased = jnp.dot(pool3, kernel, precision=self.precision)
        return unbiased, unbiased + bias[None, :]
