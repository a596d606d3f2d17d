r"""NCSN++ and DDPM++: the U-Net score networks of the paper (NHWC).

One module expresses both families; the paper's DDPM++ is NCSN++ with ``fir=False``,
``progressive_input='none'`` and the positional embedding (see :mod:`sde_jax.models.presets`).

The network maps an image batch ``x`` ``[B, H, W, C]`` and a conditioning input ``labels``
``[B]`` to an output of the same shape as ``x``. ``labels`` is the noise level :math:`\sigma` for
the Fourier embedding (which embeds :math:`\log\sigma`), and a (possibly fractional) timestep for
the positional embedding, e.g. :math:`999\,t` for continuous VP/sub-VP models;
:func:`sde_jax.models.make_score_fn` forms it from :math:`t`.

Structure, for :math:`L` = ``len(ch_mult)`` levels: an input convolution; per level
``num_res_blocks`` residual blocks (with attention at the widths in ``attn_resolutions``) and a
down-sampling step; a middle of block, attention, block; per level, from the coarsest,
``num_res_blocks + 1`` blocks fed with the skip connections, optional attention and an up-sampling
step; an output normalization and convolution. The optional progressive paths add an image pyramid
on the input side (``progressive_input``) or build the output as a pyramid (``progressive``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models import resample
from sde_jax.models.blocks import Combine, ResnetBlockBigGAN, ResnetBlockDDPM
from sde_jax.models.layers import (
    DEFAULT_WINOGRAD_MIN_CHANNELS,
    AttnBlock,
    GaussianFourierProjection,
    as_tuple,
    check_attn_resolutions,
    check_choice,
    check_compute_options,
    conv3x3,
    conv_options,
    default_init,
    dense,
    get_act,
    group_norm,
    level_resolutions,
    ncsnpp_groups,
    sigma_table,
    timestep_embedding,
)

Array = jax.Array

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
EMBEDDING_TYPES = ("fourier", "positional")


def embed_class_labels(
    temb: Array | None, class_labels: Array | None, num_classes: int, dim: int, batch: int
) -> Array:
    """Adds a learned class embedding to ``temb`` (or returns it alone when ``temb`` is None).

    The table has ``num_classes + 1`` rows: the last one, used when ``class_labels`` is None, is the
    "no label" token of classifier-free guidance.
    """
    if class_labels is None:
        class_labels = jnp.full((batch,), num_classes, jnp.int32)
    if class_labels.shape != (batch,):
        raise ValueError(f"class_labels must have shape [B] = [{batch}]; got {class_labels.shape}")
    emb = nn.Embed(num_classes + 1, dim, embedding_init=default_init(), name="class_embed")(
        class_labels
    )
    return emb if temb is None else temb + emb


class NCSNpp(nn.Module):
    r"""NCSN++ / DDPM++ score network. Defaults: the paper's CIFAR-10 NCSN++ (continuous VE).

    Attributes:
        nf: base channel count; level :math:`i` has ``nf * ch_mult[i]`` channels.
        ch_mult: channel multipliers, one per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: feature-map widths at which self-attention is applied.
        dropout: dropout rate inside residual blocks (active only with ``train=True``).
        resamp_with_conv: learned convolutions in the stand-alone up/down-sampling layers (used with
            ``resblock_type='ddpm'``).
        conditional: condition on the noise level / time; if False ``labels`` is ignored.
        fir: FIR-filtered resampling with ``fir_kernel`` (else nearest neighbour / box filter).
        fir_kernel: 1-D FIR filter, applied separably.
        skip_rescale: divide every residual sum by :math:`\sqrt2`.
        resblock_type: 'ddpm' (stand-alone resampling layers) or 'biggan' (resampling blocks).
        progressive: output path, 'none', 'output_skip' (the output is a sum of upsampled per-level
            predictions) or 'residual'.
        progressive_input: input path, 'none', 'input_skip' (the downsampled image is merged into
            every level) or 'residual'.
        progressive_combine: how 'input_skip' merges: 'sum' or 'cat'.
        init_scale: initialization scale of the last layer of each residual branch and of the
            output layers.
        embedding_type: 'fourier' (of :math:`\log\sigma`) or 'positional' (sinusoidal).
        fourier_scale: standard deviation of the Fourier frequencies.
        scale_by_sigma: divide the output by :math:`\sigma`: ``labels`` itself with the Fourier
            embedding, otherwise the discrete noise level ``sigma_table[labels]``.
        nonlinearity: 'swish', 'relu', 'elu' or 'lrelu'.
        centered: inputs are in [-1, 1]; if False they are in [0, 1] and mapped by :math:`2x - 1`.
        sigma_min: smallest discrete noise level (``scale_by_sigma`` with positional embedding).
        sigma_max: largest discrete noise level (idem).
        num_scales: number of discrete noise levels (idem).
        num_classes: if set, condition also on integer class labels in ``[0, num_classes)``.
        conv_algorithm: 'direct' or 'winograd' (stride-1 3x3 convolutions with at least
            ``winograd_min_channels`` input and output channels; pays on XLA:CPU, see
            :class:`~sde_jax.models.layers.Conv3x3`).
        winograd_min_channels: the fewest channels computed by Winograd.
        materialize_blocks: pass every block's output through
            :func:`~sde_jax.models.layers.materialize` (against XLA:CPU's recomputation).

    The last three fields (:data:`~sde_jax.models.layers.COMPUTE_FIELDS`) choose how the network
    computes, not what: they add no parameter and change the output only by rounding.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: Sequence[float] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    init_scale: float = 0.0
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = True
    nonlinearity: str = "swish"
    centered: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    num_classes: int | None = None
    conv_algorithm: str = "direct"
    winograd_min_channels: int = DEFAULT_WINOGRAD_MIN_CHANNELS
    materialize_blocks: bool = False

    def __post_init__(self):
        for field in ("ch_mult", "attn_resolutions", "fir_kernel"):
            as_tuple(self, field)
        check_compute_options(
            self.conv_algorithm, self.winograd_min_channels, self.materialize_blocks
        )
        check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
        check_choice("progressive", self.progressive, PROGRESSIVE)
        check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        check_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
        check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        get_act(self.nonlinearity)
        resample.normalized_taps(self.fir_kernel)
        if not self.ch_mult or any(int(m) < 1 for m in self.ch_mult):
            raise ValueError(
                f"`ch_mult` must be a non-empty sequence of positive ints; got {self.ch_mult}"
            )
        if self.nf < 4 or self.num_res_blocks < 1:
            raise ValueError(
                f"need `nf` >= 4 and `num_res_blocks` >= 1; got nf={self.nf}, "
                f"num_res_blocks={self.num_res_blocks}"
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"`num_classes` must be None or positive; got {self.num_classes}")
        super().__post_init__()

    def _resblock(self, name: str, features: int | None = None, *, up=False, down=False):
        common = dict(
            features=features,
            act=get_act(self.nonlinearity),
            num_groups=ncsnpp_groups,
            dropout=self.dropout,
            skip_rescale=self.skip_rescale,
            init_scale=self.init_scale,
            materialize_output=self.materialize_blocks,
            name=name,
            **conv_options(self),
        )
        if self.resblock_type == "ddpm":
            return ResnetBlockDDPM(**common)
        return ResnetBlockBigGAN(
            up=up, down=down, fir=self.fir, fir_kernel=self.fir_kernel, **common
        )

    def _attn(self, name: str, channels: int) -> AttnBlock:
        return AttnBlock(
            num_groups=ncsnpp_groups(channels),
            skip_rescale=self.skip_rescale,
            init_scale=self.init_scale,
            materialize_output=self.materialize_blocks,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        x: Array,
        labels: Array,
        class_labels: Array | None = None,
        *,
        train: bool = False,
    ) -> Array:
        """Network output for images ``x`` ``[B, H, W, C]`` and conditioning ``labels`` ``[B]``.

        Args:
            x: image batch, NHWC.
            labels: noise levels (Fourier embedding) or timesteps (positional embedding), ``[B]``.
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

        if self.embedding_type == "fourier":
            temb = GaussianFourierProjection(nf, self.fourier_scale, name="fourier_proj")(
                jnp.log(labels)
            )
        else:
            temb = timestep_embedding(labels, nf)
        if self.conditional:
            temb = dense(nf * 4, name="temb_dense_0")(temb)
            temb = dense(nf * 4, name="temb_dense_1")(act(temb))
        else:
            temb = None
        if self.num_classes is not None:
            temb = embed_class_labels(temb, class_labels, self.num_classes, nf * 4, x.shape[0])

        if not self.centered:
            x = 2 * x - 1.0

        def merge(a: Array, b: Array) -> Array:
            return (a + b) / np.sqrt(2.0) if self.skip_rescale else a + b

        # Down path.
        input_pyramid = x
        hs = [conv3x3(nf, name="conv_in", **conv_options(self))(x)]
        for level in range(num_levels):
            for i in range(self.num_res_blocks):
                h = self._resblock(f"down_{level}_res_{i}", nf * self.ch_mult[level])(
                    hs[-1], temb, train=train
                )
                if resolutions[level] in self.attn_resolutions:
                    h = self._attn(f"down_{level}_attn_{i}", h.shape[-1])(h)
                hs.append(h)
            if level == num_levels - 1:
                continue
            if self.resblock_type == "ddpm":
                h = resample.Downsample(
                    with_conv=self.resamp_with_conv,
                    fir=self.fir,
                    fir_kernel=self.fir_kernel,
                    name=f"down_{level}_resample",
                )(hs[-1])
            else:
                h = self._resblock(f"down_{level}_resample", down=True)(hs[-1], temb, train=train)
            if self.progressive_input == "input_skip":
                input_pyramid = resample.Downsample(fir=self.fir, fir_kernel=self.fir_kernel)(
                    input_pyramid
                )
                h = Combine(self.progressive_combine, name=f"down_{level}_combine")(
                    input_pyramid, h
                )
            elif self.progressive_input == "residual":
                input_pyramid = resample.Downsample(
                    features=h.shape[-1],
                    with_conv=True,
                    fir=self.fir,
                    fir_kernel=self.fir_kernel,
                    name=f"down_{level}_pyramid",
                )(input_pyramid)
                input_pyramid = h = merge(input_pyramid, h)
            hs.append(h)

        # Middle.
        h = hs[-1]
        h = self._resblock("mid_res_0")(h, temb, train=train)
        h = self._attn("mid_attn", h.shape[-1])(h)
        h = self._resblock("mid_res_1")(h, temb, train=train)

        # Up path.
        pyramid = None
        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                h = self._resblock(f"up_{level}_res_{i}", nf * self.ch_mult[level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train=train
                )
            if resolutions[level] in self.attn_resolutions:
                h = self._attn(f"up_{level}_attn", h.shape[-1])(h)

            if self.progressive != "none":
                ch = h.shape[-1]
                if self.progressive == "residual" and level != num_levels - 1:
                    pyramid = resample.Upsample(
                        features=ch,
                        with_conv=True,
                        fir=self.fir,
                        fir_kernel=self.fir_kernel,
                        name=f"up_{level}_pyramid",
                        **conv_options(self),
                    )(pyramid)
                    pyramid = h = merge(pyramid, h)
                else:
                    out_ch, init = (
                        (channels, self.init_scale)
                        if self.progressive == "output_skip"
                        else (ch, 1.0)
                    )
                    p = act(group_norm(ncsnpp_groups(ch), name=f"up_{level}_pyramid_norm")(h))
                    p = conv3x3(
                        out_ch,
                        init_scale=init,
                        name=f"up_{level}_pyramid_conv",
                        **conv_options(self),
                    )(p)
                    if pyramid is None:
                        pyramid = p
                    else:
                        pyramid = resample.Upsample(fir=self.fir, fir_kernel=self.fir_kernel)(
                            pyramid
                        )
                        pyramid = pyramid + p

            if level != 0:
                if self.resblock_type == "ddpm":
                    h = resample.Upsample(
                        with_conv=self.resamp_with_conv,
                        fir=self.fir,
                        fir_kernel=self.fir_kernel,
                        name=f"up_{level}_resample",
                        **conv_options(self),
                    )(h)
                else:
                    h = self._resblock(f"up_{level}_resample", up=True)(h, temb, train=train)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = act(group_norm(ncsnpp_groups(h.shape[-1]), name="norm_out")(h))
            h = conv3x3(
                channels, init_scale=self.init_scale, name="conv_out", **conv_options(self)
            )(h)

        if self.scale_by_sigma:
            if self.embedding_type == "fourier":
                sigmas = labels
            else:
                table = sigma_table(self.sigma_min, self.sigma_max, self.num_scales)
                sigmas = jnp.asarray(table)[labels.astype(jnp.int32)]
            h = h / sigmas[:, None, None, None]
        return h
