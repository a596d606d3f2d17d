r"""The DDPM U-Net (Ho et al., 2020), the paper's baseline architecture (NHWC).

Same skeleton as :class:`sde_jax.models.NCSNpp` with ``resblock_type='ddpm'``, but with 32-group
normalization everywhere, no rescaled skip connections, plain nearest-neighbour / strided-conv
resampling, and the positional embedding of ``labels`` (a possibly fractional timestep).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models import resample
from sde_jax.models.blocks import ResnetBlockDDPM
from sde_jax.models.layers import (
    DEFAULT_WINOGRAD_MIN_CHANNELS,
    AttnBlock,
    as_tuple,
    check_attn_resolutions,
    check_compute_options,
    conv3x3,
    conv_options,
    dense,
    get_act,
    group_norm,
    level_resolutions,
    sigma_table,
    timestep_embedding,
)
from sde_jax.models.ncsnpp import embed_class_labels

Array = jax.Array

DDPM_GROUPS = 32


def _ddpm_groups(channels: int) -> int:
    return DDPM_GROUPS


class DDPM(nn.Module):
    r"""DDPM score network. Defaults: the paper's CIFAR-10 DDPM (VP).

    Attributes:
        nf: base channel count; level :math:`i` has ``nf * ch_mult[i]`` channels (multiples of 32).
        ch_mult: channel multipliers, one per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: feature-map widths at which self-attention is applied.
        dropout: dropout rate inside residual blocks (active only with ``train=True``).
        resamp_with_conv: learned convolutions in the up/down-sampling layers.
        conditional: condition on the timestep; if False ``labels`` is ignored.
        scale_by_sigma: divide the output by the discrete noise level ``sigma_table[labels]``
            (the SMLD-trained DDPM of the paper).
        nonlinearity: 'swish', 'relu', 'elu' or 'lrelu'.
        centered: inputs are in [-1, 1]; if False they are in [0, 1] and mapped by :math:`2x - 1`.
        sigma_min: smallest discrete noise level (``scale_by_sigma`` only).
        sigma_max: largest discrete noise level (idem).
        num_scales: number of discrete noise levels (idem).
        num_classes: if set, condition also on integer class labels in ``[0, num_classes)``.
        conv_algorithm: 'direct' or 'winograd' (as :class:`~sde_jax.models.NCSNpp`'s).
        winograd_min_channels: the fewest channels computed by Winograd.
        materialize_blocks: pass every block's output through
            :func:`~sde_jax.models.layers.materialize`.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    scale_by_sigma: bool = False
    nonlinearity: str = "swish"
    centered: bool = True
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    num_classes: int | None = None
    conv_algorithm: str = "direct"
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS
    materialize_blocks: bool = False

    def __post_init__(self):
        for field in ("ch_mult", "attn_resolutions"):
            as_tuple(self, field)
        check_compute_options(
            self.conv_algorithm, self.winograd_min_channels, self.materialize_blocks
        )
        get_act(self.nonlinearity)
        if not self.ch_mult or any(int(m) < 1 for m in self.ch_mult):
            raise ValueError(
                f"`ch_mult` must be a non-empty sequence of positive ints; got {self.ch_mult}"
            )
        bad = [self.nf * m for m in self.ch_mult if (self.nf * m) % DDPM_GROUPS]
        if self.nf % DDPM_GROUPS or bad:
            raise ValueError(
                f"`nf` * `ch_mult` must be multiples of {DDPM_GROUPS} (the groups of "
                f"the DDPM normalizations); got nf={self.nf}, ch_mult={self.ch_mult}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"`num_res_blocks` must be >= 1; got {self.num_res_blocks}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"`num_classes` must be None or positive; got {self.num_classes}")
        super().__post_init__()

    def _resblock(self, name: str, features: int | None = None) -> ResnetBlockDDPM:
        return ResnetBlockDDPM(
            features=features,
            act=get_act(self.nonlinearity),
            num_groups=_ddpm_groups,
            dropout=self.dropout,
            skip_rescale=False,
            init_scale=0.0,
            materialize_output=self.materialize_blocks,
            name=name,
            **conv_options(self),
        )

    def _attn(self, name: str) -> AttnBlock:
        return AttnBlock(DDPM_GROUPS, materialize_output=self.materialize_blocks, name=name)

    @nn.compact
    def __call__(
        self,
        x: Array,
        labels: Array,
        class_labels: Array | None = None,
        *,
        train: bool = False,
    ) -> Array:
        """Network output for images ``x`` ``[B, H, W, C]`` and timesteps ``labels`` ``[B]``.

        Args:
            x: image batch, NHWC.
            labels: timesteps, ``[B]`` (integers in ``[0, num_scales)`` when ``scale_by_sigma``).
            class_labels: integer class labels ``[B]`` when ``num_classes`` is set; None selects
                the unconditional token.
            train: enable dropout (needs a ``'dropout'`` PRNG stream).

        Returns:
            ``[B, H, W, C]``.
        """
        act = get_act(self.nonlinearity)
        nf, num_levels = self.nf, len(self.ch_mult)
        resolutions = level_resolutions(x.shape, num_levels)
        check_attn_resolutions(self.attn_resolutions, resolutions)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape [B] = [{x.shape[0]}]; got {labels.shape}")
        channels = x.shape[-1]

        temb = None
        if self.conditional:
            temb = dense(nf * 4, name="temb_dense_0")(timestep_embedding(labels, nf))
            temb = dense(nf * 4, name="temb_dense_1")(act(temb))
        if self.num_classes is not None:
            temb = embed_class_labels(temb, class_labels, self.num_classes, nf * 4, x.shape[0])

        h = x if self.centered else 2 * x - 1.0

        hs = [conv3x3(nf, name="conv_in", **conv_options(self))(h)]
        for level in range(num_levels):
            for i in range(self.num_res_blocks):
                h = self._resblock(f"down_{level}_res_{i}", nf * self.ch_mult[level])(
                    hs[-1], temb, train=train
                )
                if resolutions[level] in self.attn_resolutions:
                    h = self._attn(f"down_{level}_attn_{i}")(h)
                hs.append(h)
            if level != num_levels - 1:
                hs.append(
                    resample.Downsample(
                        with_conv=self.resamp_with_conv, name=f"down_{level}_resample"
                    )(hs[-1])
                )

        h = hs[-1]
        h = self._resblock("mid_res_0")(h, temb, train=train)
        h = self._attn("mid_attn")(h)
        h = self._resblock("mid_res_1")(h, temb, train=train)

        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                h = self._resblock(f"up_{level}_res_{i}", nf * self.ch_mult[level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train=train
                )
            if resolutions[level] in self.attn_resolutions:
                h = self._attn(f"up_{level}_attn")(h)
            if level != 0:
                h = resample.Upsample(
                    with_conv=self.resamp_with_conv,
                    name=f"up_{level}_resample",
                    **conv_options(self),
                )(h)

        h = act(group_norm(DDPM_GROUPS, name="norm_out")(h))
        h = conv3x3(channels, init_scale=0.0, name="conv_out", **conv_options(self))(h)

        if self.scale_by_sigma:
            table = sigma_table(self.sigma_min, self.sigma_max, self.num_scales)
            h = h / jnp.asarray(table)[labels.astype(jnp.int32)][:, None, None, None]
        return h
