r"""Images a run writes: uint8 quantization, grids, PNG files (without an image library).

Two roundings of images in :math:`[0, 1]` to 8 bits, each used where it belongs:
:func:`to_uint8_rounded` (:math:`\operatorname{round}(255x)`, the inverse of how 8-bit data was
scaled; grids and saved samples) and :func:`to_uint8_floored` (:math:`\lfloor 255x \rfloor`, how
the paper's evaluation quantizes samples before the FID Inception network).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Any

import numpy as np


def to_uint8_rounded(images01: Any) -> np.ndarray:
    """Images in [0, 1] to uint8 by rounding, as 8-bit data was scaled (values outside clipped)."""
    return np.clip(np.round(np.asarray(images01, np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_uint8_floored(images01: Any, *, clip: bool = False) -> np.ndarray:
    r"""Float images in ``[0, 1]`` to uint8 as the paper's evaluation quantizes its samples:
    :math:`\lfloor 255 x \rfloor` (``np.clip(x * 255, 0, 255).astype(np.uint8)``).

    Args:
        images01: float array in ``[0, 1]``.
        clip: clip values outside ``[0, 1]`` (as the paper does with its samples) instead of
            raising.

    Raises:
        TypeError: the images are not floating point.
        ValueError: non-finite values, or (without ``clip``) values outside ``[0, 1]``.
    """
    x = np.asarray(images01)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"to_uint8_floored expects float images in [0, 1]; got dtype {x.dtype}")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"images contain {bad} non-finite (NaN or inf) values")
    if not clip and x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(
            f"images must be in [0, 1]; got values in [{x.min():.4g}, {x.max():.4g}] (images in "
            "[-1, 1] or [0, 255] need rescaling; pass clip=True to clip samples as the paper does)"
        )
    return np.clip(x.astype(np.float64) * 255.0, 0.0, 255.0).astype(np.uint8)


def image_grid(images: np.ndarray, ncol: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images in [0, 1] into one ``[rows*(H+p)+p, cols*(W+p)+p, C]`` uint8
    image with ``padding`` pixels of white between tiles."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [N, H, W, C]; got shape {images.shape}")
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full(
        (nrow * (h + padding) + padding, ncol * (w + padding) + padding, c), 255, np.uint8
    )
    pixels = to_uint8_rounded(images)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = pixels[k]
    return grid


def write_png(path: str, image: np.ndarray) -> None:
    """Writes a ``[H, W]`` or ``[H, W, 1|3|4]`` uint8 image as an 8-bit PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"`image` must be uint8; got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        color_type, channels = (2, 3) if image.shape[-1] == 3 else (6, 4)
    else:
        raise ValueError(f"`image` must be [H, W] or [H, W, 1|3|4]; got {image.shape}")
    h, w = image.shape[:2]
    rows = image.reshape(h, w * channels)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png + chunk(b"IEND", b""))
    os.replace(tmp, path)


def enlarge(images: np.ndarray) -> np.ndarray:
    """Images ``[N, H, W, C]`` smaller than 32 pixels enlarged (nearest neighbour) so that an 8x8
    digit is visible in a grid."""
    scale = max(1, -(-32 // images.shape[1]))
    return images.repeat(scale, axis=1).repeat(scale, axis=2)


def save_grid(path: str, images01: np.ndarray, max_images: int = 100, ncol: int | None = None):
    """Writes up to ``max_images`` images in [0, 1] as one PNG grid (small images enlarged)."""
    write_png(path, image_grid(enlarge(np.asarray(images01)[:max_images]), ncol=ncol))
