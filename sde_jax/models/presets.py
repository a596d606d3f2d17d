"""The paper's full-size networks, keyed by the path of their config in the original code.

``PRESETS[key]`` is ``(model_name, image_size, fields)``; :func:`preset` builds the module, e.g.
``preset("ve/cifar10_ncsnpp_continuous")``. Several configs share a network (e.g. the VP and sub-VP
DDPM++); their entries are equal. Only the network is described here: the SDE, training and sampling
settings belong to the configs.

Field values are those of the original configs; ``dropout`` is the training value (it has no effect
in evaluation).
"""

from __future__ import annotations

import flax.linen as nn

from sde_jax.models.registry import get_model

# CIFAR-10 networks at 32x32.
_DDPMPP = dict(
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=4,
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    fir=False,
    fir_kernel=(1, 3, 3, 1),
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="none",
    progressive_combine="sum",
    init_scale=0.0,
    embedding_type="positional",
    fourier_scale=16.0,
    scale_by_sigma=False,
    nonlinearity="swish",
    centered=True,
    sigma_min=0.01,
    sigma_max=50.0,
    num_scales=1000,
)
_NCSNPP_VE = dict(
    _DDPMPP,
    fir=True,
    progressive_input="residual",
    embedding_type="fourier",
    scale_by_sigma=True,
    centered=False,
)
# NCSN++ trained with the VP / sub-VP SDEs: positional embedding, centered data, no 1/sigma.
_NCSNPP_VP = dict(_NCSNPP_VE, embedding_type="positional", scale_by_sigma=False, centered=True)
_DDPM = dict(
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    scale_by_sigma=False,
    nonlinearity="swish",
    centered=True,
    sigma_min=0.01,
    sigma_max=50.0,
    num_scales=1000,
)
# 256x256 NCSN++ (LSUN, CelebA-HQ, FFHQ): progressive input and output paths, no dropout.
_NCSNPP_256 = dict(
    _NCSNPP_VE,
    ch_mult=(1, 1, 2, 2, 2, 2, 2),
    num_res_blocks=2,
    dropout=0.0,
    progressive="output_skip",
    progressive_input="input_skip",
    num_scales=2000,
)
# 1024x1024 NCSN++ (CelebA-HQ, FFHQ).
_NCSNPP_1024 = dict(
    _NCSNPP_256,
    nf=16,
    ch_mult=(1, 2, 4, 8, 16, 32, 32, 32),
    num_res_blocks=1,
    sigma_max=1348.0,
)
_DDPM_256 = dict(_DDPM, ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0)

PRESETS: dict[str, tuple[str, int, dict]] = {
    "vp/cifar10_ddpmpp": ("ncsnpp", 32, _DDPMPP),
    "vp/cifar10_ddpmpp_continuous": ("ncsnpp", 32, _DDPMPP),
    "subvp/cifar10_ddpmpp_continuous": ("ncsnpp", 32, _DDPMPP),
    "vp/cifar10_ddpmpp_deep_continuous": ("ncsnpp", 32, dict(_DDPMPP, num_res_blocks=8)),
    "subvp/cifar10_ddpmpp_deep_continuous": ("ncsnpp", 32, dict(_DDPMPP, num_res_blocks=8)),
    "ve/cifar10_ncsnpp_continuous": ("ncsnpp", 32, _NCSNPP_VE),
    "ve/cifar10_ncsnpp_deep_continuous": ("ncsnpp", 32, dict(_NCSNPP_VE, num_res_blocks=8)),
    "ve/cifar10_ncsnpp": ("ncsnpp", 32, dict(_NCSNPP_VE, embedding_type="positional")),
    "vp/cifar10_ncsnpp": ("ncsnpp", 32, _NCSNPP_VP),
    "vp/cifar10_ncsnpp_continuous": ("ncsnpp", 32, _NCSNPP_VP),
    "subvp/cifar10_ncsnpp_continuous": ("ncsnpp", 32, _NCSNPP_VP),
    "vp/cifar10_ncsnpp_deep_continuous": ("ncsnpp", 32, dict(_NCSNPP_VP, num_res_blocks=8)),
    "subvp/cifar10_ncsnpp_deep_continuous": ("ncsnpp", 32, dict(_NCSNPP_VP, num_res_blocks=8)),
    "vp/ddpm/cifar10": ("ddpm", 32, _DDPM),
    "vp/ddpm/cifar10_continuous": ("ddpm", 32, _DDPM),
    "subvp/cifar10_ddpm_continuous": ("ddpm", 32, _DDPM),
    "vp/ddpm/cifar10_unconditional": ("ddpm", 32, dict(_DDPM, conditional=False)),
    "ve/cifar10_ddpm": ("ddpm", 32, dict(_DDPM, scale_by_sigma=True, centered=False)),
    "ve/celeba_ncsnpp": (
        "ncsnpp",
        64,
        dict(_NCSNPP_VE, embedding_type="positional", sigma_max=90.0),
    ),
    "ve/bedroom_ncsnpp_continuous": ("ncsnpp", 256, dict(_NCSNPP_256, sigma_max=378.0)),
    "ve/church_ncsnpp_continuous": ("ncsnpp", 256, dict(_NCSNPP_256, sigma_max=380.0)),
    "ve/celebahq_256_ncsnpp_continuous": ("ncsnpp", 256, dict(_NCSNPP_256, sigma_max=348.0)),
    "ve/ffhq_256_ncsnpp_continuous": ("ncsnpp", 256, dict(_NCSNPP_256, sigma_max=348.0)),
    "ve/celebahq_ncsnpp_continuous": ("ncsnpp", 1024, _NCSNPP_1024),
    "ve/ffhq_ncsnpp_continuous": ("ncsnpp", 1024, _NCSNPP_1024),
    "vp/ddpm/bedroom": ("ddpm", 256, _DDPM_256),
    "vp/ddpm/church": ("ddpm", 256, _DDPM_256),
    "vp/ddpm/celebahq": ("ddpm", 256, _DDPM_256),
}


def preset_fields(key: str) -> tuple[str, int, dict]:
    """``(model_name, image_size, fields)`` of the network of config ``key`` (a copy)."""
    try:
        name, size, fields = PRESETS[key]
    except KeyError:
        raise ValueError(f"unknown preset {key!r}; known presets: {sorted(PRESETS)}") from None
    return name, size, dict(fields)


def preset(key: str, **overrides) -> nn.Module:
    """The network of config ``key``, with fields replaced by ``overrides``."""
    name, _, fields = preset_fields(key)
    fields.update(overrides)
    return get_model(name, **fields)
