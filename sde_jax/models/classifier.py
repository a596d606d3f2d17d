r"""The noise-conditional classifier of class-conditional sampling (paper Section 5, Appendix I).

A Wide-ResNet (Zagoruyko & Komodakis 2016) whose residual blocks also receive a Gaussian Fourier
embedding of :math:`\log\sigma`, the noise level of its input, as the paper's CIFAR-10 classifier
does. It is trained on perturbed data :math:`x_t = m(t)\,x_0 + s(t)\,z` to predict the label, so
:math:`\log p_t(y \mid x)` is available at every :math:`t` for the guided score of eq. (14).

:func:`make_classifier_log_prob` fixes the conventions shared by training and sampling: the network
sees :math:`x_t / \sqrt{m(t)^2 + s(t)^2}` (unit scale for every SDE, VE included) and
:math:`\sigma = s(t)`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models.layers import GaussianFourierProjection, get_act
from sde_jax.sde import SDE, batch_broadcast, check_time

Array = jax.Array


def _groups(channels: int) -> int:
    return min(32, max(1, channels // 4))


class WideResBlock(nn.Module):
    """A pre-activation wide residual block with the noise embedding added after its first
    convolution."""

    features: int
    stride: int
    dropout: float
    act: Callable[[Array], Array]

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool) -> Array:
        h = self.act(nn.GroupNorm(_groups(x.shape[-1]))(x))
        shortcut = x
        if x.shape[-1] != self.features or self.stride != 1:
            shortcut = nn.Conv(self.features, (1, 1), strides=self.stride, name="shortcut")(h)
        h = nn.Conv(self.features, (3, 3), strides=self.stride, padding=1)(h)
        h = h + nn.Dense(self.features)(self.act(temb))[:, None, None, :]
        h = self.act(nn.GroupNorm(_groups(self.features))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), padding=1)(h)
        return shortcut + h


class NoiseConditionalWRN(nn.Module):
    """Time-dependent Wide-ResNet classifier.

    Attributes:
        num_classes: number of classes (logits).
        width: channels of the first stage before widening (16 in WRN-28-10).
        widen_factor: the WRN widening factor ``k`` (10 in WRN-28-10).
        blocks_per_stage: residual blocks per stage (4 in WRN-28-10, depth = 6 n + 4).
        num_stages: stages; stage ``i`` has ``width * widen_factor * 2**i`` channels and all but
            the first halve the resolution.
        embedding_size: Fourier frequencies of the :math:`\\log\\sigma` embedding.
        fourier_scale: standard deviation of those frequencies.
        dropout: dropout rate inside the blocks.
        nonlinearity: activation name (see :func:`sde_jax.models.layers.get_act`).
    """

    num_classes: int
    width: int = 16
    widen_factor: int = 10
    blocks_per_stage: int = 4
    num_stages: int = 3
    embedding_size: int = 128
    fourier_scale: float = 16.0
    dropout: float = 0.0
    nonlinearity: str = "swish"

    def __post_init__(self):
        for f in ("num_classes", "width", "widen_factor", "blocks_per_stage", "num_stages"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(f"`{f}` must be a positive int; got {getattr(self, f)!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, sigma: Array, train: bool = False) -> Array:
        """Logits ``[B, num_classes]`` for inputs ``x`` ``[B, H, W, C]`` at noise levels ``sigma``
        ``[B]``."""
        check_time(x, sigma)
        act = get_act(self.nonlinearity)
        temb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(jnp.log(sigma))
        temb = nn.Dense(4 * self.embedding_size)(temb)
        temb = nn.Dense(4 * self.embedding_size)(act(temb))
        h = nn.Conv(self.width, (3, 3), padding=1)(x)
        for stage in range(self.num_stages):
            features = self.width * self.widen_factor * 2**stage
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                h = WideResBlock(features, stride, self.dropout, act)(h, temb, train)
        h = act(nn.GroupNorm(_groups(h.shape[-1]))(h))
        return nn.Dense(self.num_classes)(jnp.mean(h, axis=(1, 2)))


def classifier_inputs(sde: SDE, x: Array, t: Array) -> tuple[Array, Array]:
    r"""The network inputs for :math:`x_t` at times ``t``: :math:`x_t / \sqrt{m^2 + s^2}` and
    :math:`\sigma = s(t)`."""
    m, s = sde.marginal_coefs(t)
    return x / batch_broadcast(jnp.sqrt(m**2 + s**2), x), s


def make_classifier_log_prob(sde: SDE, model: NoiseConditionalWRN):
    """``log_prob(params, x, t, labels) -> [B]``, the classifier's :math:`\\log p_t(y \\mid x)`;
    ``functools.partial(log_prob, params)`` is the ``log_prob_fn`` of
    :func:`sde_jax.controllable.classifier_guidance`."""

    def log_prob(params, x, t, labels, *, train=False, key=None):
        inputs, sigma = classifier_inputs(sde, x, t)
        rngs = {"dropout": key} if key is not None else None
        logits = model.apply({"params": params}, inputs, sigma, train=train, rngs=rngs)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]

    return log_prob
