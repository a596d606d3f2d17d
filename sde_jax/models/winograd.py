r"""3x3 convolutions by Winograd's minimal filtering algorithm :math:`F(2 \times 2, 3 \times 3)`.

A stride-1 3x3 convolution (cross-correlation, as in every deep-learning framework) with one pixel
of zero padding computes each 2x2 tile of its output from a 4x4 tile :math:`d` of the padded input
(tiles overlap by two pixels) and the kernel :math:`g` as (Lavin & Gray, CVPR 2016)

.. math::
    Y = A^\top \big[ (G\, g\, G^\top) \odot (B^\top d\, B) \big] A,
    \quad
    B^\top = \begin{pmatrix} 1&0&-1&0\\ 0&1&1&0\\ 0&-1&1&0\\ 0&1&0&-1 \end{pmatrix},\
    G = \begin{pmatrix} 1&0&0\\ \tfrac12&\tfrac12&\tfrac12\\ \tfrac12&-\tfrac12&\tfrac12\\ 0&0&1
    \end{pmatrix},\
    A^\top = \begin{pmatrix} 1&1&1&0\\ 0&1&-1&-1 \end{pmatrix}.

Summed over input channels, the element-wise product becomes 16 independent matrix products
:math:`V_k U_k` with :math:`V_k \in \mathbb{R}^{T \times C}` (the transformed input over the
:math:`T = B \cdot H/2 \cdot W/2` tiles) and :math:`U_k \in \mathbb{R}^{C \times D}` (the transformed
kernel): :math:`16 / 36 = 4/9` of the multiply-adds of the direct method, plus linear transforms that
cost a few passes over memory.

Every transform is a linear map written with ``jax.numpy``, so JAX differentiates through them and
the derivatives are Winograd-form too: the input gradient is the transposed transforms around the
16 products with :math:`U_k^\top`, the kernel gradient 16 products :math:`V_k^\top \bar M_k` (the
largest saving: XLA:CPU's direct kernel gradient is its least efficient convolution), and
forward-mode derivatives (the likelihood's divergence) follow the same path.

Numerics: the coefficients are :math:`0, \pm 1, \pm\tfrac12`, so the transforms round only in their
additions; in float32 the result differs from the direct convolution by about :math:`10^{-6}`
relative to its largest value (tested), the size of the difference between two summation orders.

On one core of a 2-core AMD EPYC with XLA:CPU (``benchmarks/model_step.py``, batch 8): a 32x32,
256-to-256-channel convolution takes 30 ms against 47 ms for ``lax.conv_general_dilated``, and its
input and kernel gradients together 65 ms against 131 ms. With 64 channels or fewer the transforms
cost as much as the products save.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _bt(r0: Array, r1: Array, r2: Array, r3: Array) -> list[Array]:
    """:math:`B^\\top` applied along one axis, given the four input phases along that axis."""
    return [r0 - r2, r1 + r2, r2 - r1, r1 - r3]


def _phases(p: Array, axis: int, n: int) -> list[Array]:
    """Rows ``a, a + 2, ..., a + 2(n - 1)`` of ``p`` along ``axis``, for ``a = 0..3``."""

    def rows(a):
        index = [slice(None)] * p.ndim
        index[axis] = slice(a, a + 2 * n, 2)
        return p[tuple(index)]

    return [rows(a) for a in range(4)]


def input_transform(x: Array) -> Array:
    """:math:`B^\\top d B` of every 4x4 tile of the zero-padded input.

    Args:
        x: ``[B, H, W, C]`` with even ``H`` and ``W``.

    Returns:
        ``[16, B * H/2 * W/2, C]``: entry ``(4 i + j, tile, c)`` is element ``(i, j)`` of the
        transformed tile.
    """
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = _bt(*_phases(padded, 1, h // 2))  # 4 x [B, H/2, W + 2, C]
    tiles = [v for r in rows for v in _bt(*_phases(r, 2, w // 2))]  # 16 x [B, H/2, W/2, C]
    return jnp.stack(tiles).reshape(16, b * (h // 2) * (w // 2), c)


def _g(a0: Array, a1: Array, a2: Array) -> list[Array]:
    """:math:`G` applied along one axis, given the kernel's three taps along that axis."""
    return [a0, 0.5 * (a0 + a1 + a2), 0.5 * (a0 - a1 + a2), a2]


def kernel_transform(kernel: Array) -> Array:
    """:math:`G g G^\\top`: ``[3, 3, C, D]`` (HWIO) to ``[16, C, D]``."""
    rows = _g(kernel[0], kernel[1], kernel[2])  # 4 x [3, C, D]
    return jnp.stack([u for r in rows for u in _g(r[0], r[1], r[2])])


def output_transform(m: Array, shape: tuple[int, int, int]) -> Array:
    """:math:`A^\\top M A` of every tile, reassembled: ``[16, T, D]`` to ``[B, H, W, D]``."""
    b, h, w = shape
    d = m.shape[-1]
    m = m.reshape(4, 4, b, h // 2, w // 2, d)
    rows = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # 2 x [4, B, H/2, W/2, D]
    y = jnp.stack([jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], -2) for r in rows], 2)
    return y.reshape(b, h, w, d)  # [B, H/2, 2, W/2, 2, D] -> [B, H, W, D]


def conv3x3(x: Array, kernel: Array) -> Array:
    """A stride-1 3x3 convolution with one pixel of zero padding, by :math:`F(2 \\times 2, 3 \\times 3)`.

    Equal (up to rounding) to ``lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"))``.

    Args:
        x: ``[B, H, W, C]``, ``H`` and ``W`` even.
        kernel: ``[3, 3, C, D]``.

    Returns:
        ``[B, H, W, D]``.

    Raises:
        ValueError: for odd ``H`` or ``W``, a kernel that is not 3x3, or mismatched channels.
    """
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Winograd F(2x2, 3x3) needs an even height and width; got {h}x{w}")
    if kernel.shape[:3] != (3, 3, c):
        raise ValueError(
            f"expected a [3, 3, {c}, D] kernel for {c} input channels; got {kernel.shape}"
        )
    m = lax.dot_general(
        input_transform(x), kernel_transform(kernel), (((2,), (1,)), ((0,), (0,)))
    )  # [16, T, D]
    return output_transform(m, (b, h, w))
