r"""Inception features of uint8 images: the input's preparation and jitted, batched extraction.

Images reach the FID Inception-v3 (:mod:`sde_jax.metrics.inception`) as the TF-GAN graph feeds it:
grey images repeated to RGB, resized to 299x299 with TensorFlow 1's bilinear resizing
(``align_corners=False``, no half-pixel offset, no antialiasing: output pixel :math:`i` samples
the input at :math:`s_i = i \cdot (H_\text{in} / H_\text{out})`, computed in float32,
interpolating between :math:`\lfloor s_i \rfloor` and :math:`\min(\lfloor s_i \rfloor + 1,
H_\text{in} - 1)`), and pixel values :math:`x \in [0, 255]` mapped to :math:`(x - 128) / 128`.
:class:`FeatureExtractor` runs that and the network in fixed-size jitted batches, on the default
device or split over a device mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sde_jax.metrics.inception import FEATURE_LAYERS, INPUT_SIZE, InceptionV3
from sde_jax.sharding import batch_sharded, global_rows, replicated

Array = jax.Array

# How images reach the network: recorded in statistics files so that statistics computed differently
# are refused.
RESIZE_POLICY = "tf1_bilinear_align_corners_false_299"


def _tf1_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the weight of the high one for each output index."""
    # TF1 (and the reference port) multiply in float32: keep that rounding for the fractions.
    scale = np.float32(in_size / out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def resize_bilinear_tf1(images: Array, size: tuple[int, int]) -> Array:
    r"""TensorFlow 1 ``resize_bilinear`` with ``align_corners=False`` (no half-pixel centers).

    Args:
        images: float ``[N, H, W, C]``.
        size: ``(H_out, W_out)``.

    Returns:
        float ``[N, H_out, W_out, C]``: rows are interpolated along the width first, then along the
        height, as TF1 does (the order matters at the last bit).
    """
    h, w = images.shape[1:3]
    ylo, yhi, dy = _tf1_taps(h, size[0])
    xlo, xhi, dx = _tf1_taps(w, size[1])
    dx = jnp.asarray(dx, images.dtype).reshape(1, 1, size[1], 1)
    dy = jnp.asarray(dy, images.dtype).reshape(1, size[0], 1, 1)

    def along_width(rows):
        left, right = rows[:, :, xlo], rows[:, :, xhi]
        return left + (right - left) * dx

    top, bottom = along_width(images[:, ylo]), along_width(images[:, yhi])
    return top + (bottom - top) * dy


def preprocess(images: Array) -> Array:
    r"""uint8 (or float) pixel values ``[N, H, W, C]`` in ``[0, 255]``, ``C`` 1 or 3, to the network's
    input ``[N, 299, 299, 3]`` in :math:`[-1, 1)`: grey images repeated to RGB, TF1 bilinear resizing
    (skipped at 299x299), then :math:`(x - 128) / 128`."""
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
    return (x - 128.0) / 128.0


def check_images(images: Any, name: str = "images") -> np.ndarray:
    r"""Returns ``images`` as a uint8 ``[N, H, W, C]`` array (``C`` 1 or 3), or raises.

    Only uint8 pixel values are accepted: float images have no unambiguous range (``[0, 1]``,
    ``[-1, 1]`` or ``[0, 255]``), and a wrong guess gives a plausible but wrong FID. Float images in
    ``[0, 1]`` become the paper's pixel values as :math:`\lfloor 255 x \rfloor`
    (:func:`sde_jax.programs.images.to_uint8_floored`).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(
            f"{name} must be uint8 pixel values in [0, 255]; got dtype {images.dtype}. Convert "
            "float images in [0, 1] with sde_jax.programs.images.to_uint8_floored"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must have shape [N, H, W, C] with C = 1 (grey) or 3 (RGB); got {images.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return images


class FeatureExtractor:
    """Inception features of uint8 images, computed in jitted batches.

    Args:
        params: the network's parameters (:func:`sde_jax.metrics.weights.load_inception`).
        mesh: a 1-D mesh with axis ``"data"`` (:func:`sde_jax.sharding.make_mesh`) to split each
            batch over; None: no sharding annotations, the default device computes.
        batch_size: images per jitted call (the last call is padded); must be divisible by the
            number of devices of ``mesh``.
        layers: the outputs to return, a subset of :data:`~sde_jax.metrics.inception.FEATURE_LAYERS`.

    Calling it on uint8 ``[N, H, W, C]`` images returns ``{layer: float32 [N, dim]}``. The network
    is compiled once (its input is always 299x299); the resizing once per input image shape. When
    ``mesh`` spans several processes, every process passes the same images and gets every
    image's features: each transfers and computes only its devices' rows.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        mesh: Mesh | None = None,
        batch_size: int = 100,
        layers: Sequence[str] = ("2048", "logits_unbiased"),
    ):
        layers = tuple(layers)
        unknown = sorted(set(layers) - set(FEATURE_LAYERS))
        if unknown or not layers:
            raise ValueError(f"layers must be a non-empty subset of {FEATURE_LAYERS}; got {layers}")
        with_logits = "fc" in params
        if not with_logits and {"logits", "logits_unbiased"} & set(layers):
            raise ValueError(
                "these Inception weights have no classifier (fc): only the layers "
                f"{FEATURE_LAYERS[:4]} are available; asked for {layers}"
            )
        devices = 1 if mesh is None else mesh.size
        if batch_size <= 0 or batch_size % devices:
            raise ValueError(
                f"the Inception batch size ({batch_size}) must be a positive multiple of the "
                f"number of devices ({devices})"
            )
        self.layers = layers
        self.batch_size = batch_size
        self.mesh = mesh
        model = InceptionV3(with_logits=with_logits)

        def apply(variables, x):
            out = model.apply(variables, x)
            return {k: out[k] for k in layers}

        if mesh is None:
            self._batch = None
            self._params = jax.device_put({"params": dict(params)})
            self._net = jax.jit(apply)
            self._prep = jax.jit(preprocess)
        else:
            self._batch = batch_sharded(mesh)
            self._params = jax.device_put({"params": dict(params)}, replicated(mesh))
            self._net = jax.jit(
                apply, in_shardings=(replicated(mesh), self._batch), out_shardings=self._batch
            )
            self._prep = jax.jit(preprocess, in_shardings=self._batch, out_shardings=self._batch)

    def __call__(self, images: Any) -> dict[str, np.ndarray]:
        images = check_images(images)
        n, bs = images.shape[0], self.batch_size
        chunks: dict[str, list[np.ndarray]] = {k: [] for k in self.layers}
        for start in range(0, n, bs):
            chunk = images[start : start + bs]
            real = chunk.shape[0]
            if real < bs:
                pad = np.zeros((bs - real, *chunk.shape[1:]), np.uint8)
                chunk = np.concatenate([chunk, pad])
            if self.mesh is None:
                out = self._net(self._params, self._prep(jax.device_put(chunk)))
            else:
                out = self._net(self._params, self._prep(global_rows(chunk, self.mesh)))
                out = multihost_utils.process_allgather(out, tiled=True)
            for k in self.layers:
                chunks[k].append(np.asarray(out[k])[:real])
        return {k: np.concatenate(v) for k, v in chunks.items()}
