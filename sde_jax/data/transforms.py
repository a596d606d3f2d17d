"""Per-image preprocessing on the host (numpy and PIL), and the scalers between data and model.

Images stay ``uint8`` through cropping and resizing, so that every pixel is one of 256 levels and
uniform dequantization (which spreads each level over its bin) gives a proper density for bits/dim.
The resizing rules follow the original code: CelebA is centre-cropped to 140x140 and shrunk; LSUN at
256 px and image folders are centre-cropped to a square and resized with antialiased bicubic
interpolation; LSUN at 128 px (and below) is shrunk so the short side fits, then centre-cropped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image

from sde_jax.data.config import DataConfig

CELEBA_CROP = 140


def center_crop(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """The centred ``[height, width, C]`` window of an ``[H, W, C]`` image (as ``tf.image`` would)."""
    width = height if width is None else width
    h, w = image.shape[:2]
    if height > h or width > w:
        raise ValueError(f"Cannot crop {height}x{width} out of a {h}x{w} image.")
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


def _resize(image: np.ndarray, height: int, width: int, method: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    # PIL filters widen with the scale factor when shrinking, i.e. they are antialiased like
    # tf.image.resize(..., antialias=True) in the original code.
    gray = image.shape[-1] == 1
    pil = PIL.Image.fromarray(image[..., 0] if gray else image)
    out = np.asarray(pil.resize((width, height), method))
    return out[..., None] if gray else out


def resize_small(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes ``[H, W, C]`` (bilinear, antialiased) so that its shorter side is ``size``."""
    h, w = image.shape[:2]
    ratio = size / min(h, w)
    return _resize(image, round(h * ratio), round(w * ratio), PIL.Image.Resampling.BILINEAR)


def crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crops ``[H, W, C]`` to a square and resizes it to ``[size, size, C]`` (bicubic)."""
    side = min(image.shape[:2])
    return _resize(center_crop(image, side), size, size, PIL.Image.Resampling.BICUBIC)


def resize_image(image: np.ndarray, size: int, rule: str) -> np.ndarray:
    """Applies a data set's resizing rule (see ``DatasetSpec.resize``) to a ``uint8 [H, W, C]`` image.

    Returns:
        ``uint8 [size, size, C]``.
    """
    if rule == "none":
        out = image
    elif rule == "celeba":
        out = resize_small(center_crop(image, CELEBA_CROP), size)
    elif rule == "lsun" and size <= 128:
        out = center_crop(resize_small(image, size), size)
    elif rule in ("lsun", "crop_resize"):
        out = crop_resize(image, size)
    else:
        raise ValueError(f"Unknown resizing rule {rule!r}.")
    if out.shape[:2] != (size, size):
        raise ValueError(f"Expected a {size}x{size} image; got {out.shape[0]}x{out.shape[1]}.")
    return out


def to_unit_interval(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool,
    dequantize: bool,
    levels: int = 256,
) -> np.ndarray:
    r"""Turns a ``uint8 [H, W, C]`` image into ``float32`` data in ``[0, 1]``.

    Data of ``L`` levels is stored as :math:`v = \operatorname{round}(255 k / (L - 1))`,
    :math:`k \in \{0, \dots, L - 1\}`. Without dequantization the result is :math:`v / 255`
    (that is, :math:`k / (L - 1)`). Uniform dequantization spreads level :math:`k` over its own bin
    of width :math:`1/L`: :math:`(k + u) / L`, :math:`u \sim U[0, 1)` per pixel, which is the
    usual :math:`(255 x + u) / 256` for 8-bit data and makes the density of the result the
    probability of the levels times :math:`L^D` (what bits/dim assumes,
    :func:`sde_jax.likelihood.bits_per_dim` with ``num_bins=L``).

    Args:
        image: ``uint8 [H, W, C]``.
        rng: the randomness of this example (flip and dequantization noise).
        flip: whether to flip left-right with probability 1/2.
        dequantize: whether to dequantize uniformly.
        levels: the number of levels ``L`` of the data (2 to 256).

    Returns:
        ``float32 [H, W, C]``.
    """
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    x = image.astype(np.float32)
    if dequantize:
        k = x if levels == 256 else level_indices(x / np.float32(255.0), levels)
        return (k + rng.random(x.shape, dtype=np.float32)) / np.float32(levels)
    return x / np.float32(255.0)


def level_indices(x01, levels: int):
    """The level index ``k`` in ``0..levels-1`` of undequantized data ``x01 = k / (levels - 1)``
    (numpy or JAX, float)."""
    return (x01 * (levels - 1) + 0.5) // 1


def to_levels(x01, levels: int, *, dequantized: bool):
    r"""Samples in ``[0, 1]`` of a model of ``levels``-level data, put on the data's levels
    :math:`k / (L - 1)`: the inverse of :func:`to_unit_interval`'s scaling.

    A model trained on dequantized data is a density of :math:`(k + u) / L`, so a sample
    :math:`x` belongs to level :math:`k = \lfloor L x \rfloor`; read as :math:`k / (L - 1)`
    directly, it would be off by up to :math:`1/(2L)` and scaled by :math:`(L - 1)/L` (for the
    17-level digits, 3% of the range and 6% of the spread). A model of undequantized data
    :math:`k / (L - 1)` gets the nearest level. Values outside ``[0, 1]`` go to the nearest end.

    Args:
        x01: float samples (numpy or JAX), the model's output mapped to ``[0, 1]``.
        levels: the number of levels ``L`` of the data (2 to 256).
        dequantized: whether the model was trained on uniformly dequantized data.

    Returns:
        float, the same shape: level indices divided by :math:`L - 1`.
    """
    k = (x01 * levels) // 1 if dequantized else level_indices(x01, levels)
    return k.clip(0, levels - 1) / (levels - 1)


def data_scaler(cfg: DataConfig) -> Callable:
    """Maps data in ``[0, 1]`` to the model's scale: ``[-1, 1]`` if ``cfg.centered``, else unchanged.

    Pure and elementwise, so it works on numpy and JAX arrays alike (and inside ``jit``).
    """
    if cfg.centered:
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def inverse_scaler(cfg: DataConfig) -> Callable:
    """The inverse of ``data_scaler``: maps the model's scale back to ``[0, 1]``."""
    if cfg.centered:
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x
