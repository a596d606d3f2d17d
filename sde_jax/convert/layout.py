"""Where each parameter of the released PyTorch networks lives in this project's Flax networks.

The configs (the paper's and this project's) give the network; :func:`parameter_table` then maps
every PyTorch parameter name to its Flax path, shape and array transform, in PyTorch's parameter
order (which is also the order of the EMA's shadow parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models import COMPUTE_FIELDS, DDPM, NCSNpp, get_model

# Transforms from a PyTorch array to the Flax layout.
IDENTITY = "identity"
CONV = "conv"  # OIHW -> HWIO
LINEAR = "linear"  # [out, in] -> [in, out]

# Per kind of PyTorch module: (Flax path inside the module, PyTorch name inside the module,
# transform), in the PyTorch registration order (which fixes the order of the EMA parameters).
_GN = [(("scale",), "weight", IDENTITY), (("bias",), "bias", IDENTITY)]
_CONV_RULES = [(("kernel",), "weight", CONV), (("bias",), "bias", IDENTITY)]
_LINEAR_RULES = [(("kernel",), "weight", LINEAR), (("bias",), "bias", IDENTITY)]


def _sub(prefix_flax: str, prefix_torch: str, rules):
    return [((prefix_flax, *path), f"{prefix_torch}.{name}", t) for path, name, t in rules]


def _nin(prefix_flax: str, prefix_torch: str):
    return [
        ((prefix_flax, "kernel"), f"{prefix_torch}.W", IDENTITY),
        ((prefix_flax, "bias"), f"{prefix_torch}.b", IDENTITY),
    ]


_RULES = {
    "fourier": [(("W",), "W", IDENTITY)],
    "linear": _LINEAR_RULES,
    "conv": _CONV_RULES,
    "groupnorm": _GN,
    "res_biggan": _sub("norm_0", "GroupNorm_0", _GN)
    + _sub("conv_0", "Conv_0", _CONV_RULES)
    + _sub("temb_proj", "Dense_0", _LINEAR_RULES)
    + _sub("norm_1", "GroupNorm_1", _GN)
    + _sub("conv_1", "Conv_1", _CONV_RULES)
    + _sub("skip", "Conv_2", _CONV_RULES),
    "res_ddpm": _sub("norm_0", "GroupNorm_0", _GN)
    + _sub("conv_0", "Conv_0", _CONV_RULES)
    + _sub("temb_proj", "Dense_0", _LINEAR_RULES)
    + _sub("norm_1", "GroupNorm_1", _GN)
    + _sub("conv_1", "Conv_1", _CONV_RULES)
    + _nin("skip", "NIN_0"),
    "attn": _sub("norm", "GroupNorm_0", _GN)
    + _nin("q", "NIN_0")
    + _nin("k", "NIN_1")
    + _nin("v", "NIN_2")
    + _nin("out", "NIN_3"),
    "resample": [
        *_sub("conv", "Conv_0", _CONV_RULES),
        (("fir_conv", "kernel"), "Conv2d_0.weight", CONV),
        (("fir_conv", "bias"), "Conv2d_0.bias", IDENTITY),
    ],
    "combine": _sub("conv", "Conv_0", _CONV_RULES),
}

# PyTorch parameters that are not trained (and so have no EMA copy).
_FROZEN_KINDS = ("fourier",)
# PyTorch buffers of the networks: not parameters, checked against the config when present.
BUFFERS = ("sigmas",)


# --------------------------------------------------------------------------------------------
# Configs.


def section(config: Any, name: str) -> dict:
    """The config's section ``name`` as a plain dict."""
    try:
        sec = config[name]
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"config has no `{name}` section") from None
    return sec.to_dict() if hasattr(sec, "to_dict") else dict(sec)


# The fields of the paper's `config.model` that make up each network.
NCSNPP_FIELDS = (
    "nf",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "resamp_with_conv",
    "conditional",
    "fir",
    "fir_kernel",
    "skip_rescale",
    "resblock_type",
    "progressive",
    "progressive_input",
    "progressive_combine",
    "init_scale",
    "embedding_type",
    "fourier_scale",
    "scale_by_sigma",
    "nonlinearity",
    "sigma_min",
    "sigma_max",
    "num_scales",
)
DDPM_FIELDS = (
    "nf",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "resamp_with_conv",
    "conditional",
    "scale_by_sigma",
    "nonlinearity",
    "sigma_min",
    "sigma_max",
    "num_scales",
)
_LOWERCASE = (
    "resblock_type",
    "progressive",
    "progressive_input",
    "progressive_combine",
    "embedding_type",
    "nonlinearity",
)


def is_project_config(config: Any) -> bool:
    """Whether ``config`` is one of this project's (it has a ``sde`` section), not the paper's."""
    try:
        return "sde" in config
    except TypeError:
        return False


def _model_from_project_config(config: Any) -> NCSNpp | DDPM:
    mc, sde, data = section(config, "model"), section(config, "sde"), section(config, "data")
    if "name" not in mc:
        raise ValueError("config has no `model.name`")
    name = mc.pop("name")
    mc.pop("ema_rate", None)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in mc.items()}
    for field in ("sigma_min", "sigma_max", "num_scales"):
        if field in sde:
            fields[field] = sde[field]
    fields["centered"] = bool(data.get("centered", False))
    return get_model(name, **fields)


def model_from_config(config: Any) -> NCSNpp | DDPM:
    """The network of a config: one of the paper's (``config.model.name`` 'ncsnpp' or 'ddpm' with
    the original field names), or one of this project's (``configs/*.py``: a ``config.sde``
    section, and ``config.model`` holding ``name``, ``ema_rate`` and the module fields).

    Raises:
        ValueError: for an unknown model name, a missing field, or options this implementation does
            not provide (``normalization`` other than GroupNorm, ``attention_type`` other than ddpm,
            ``conv_size`` other than 3).
    """
    if is_project_config(config):
        return _model_from_project_config(config)
    mc = section(config, "model")
    data = section(config, "data")
    name = str(mc.get("name", "")).lower()
    if name not in ("ncsnpp", "ddpm"):
        raise ValueError(
            f"unsupported `model.name` {mc.get('name')!r}; expected 'ncsnpp' or 'ddpm'"
        )
    for field, supported in (
        ("normalization", "groupnorm"),
        ("attention_type", "ddpm"),
        ("conv_size", 3),
    ):
        value = mc.get(field, supported)
        if (value.lower() if isinstance(value, str) else value) != supported:
            raise ValueError(f"unsupported `model.{field}` {value!r}; only {supported!r} exists")
    names = NCSNPP_FIELDS if name == "ncsnpp" else DDPM_FIELDS
    fields = {}
    for field in names:
        if field not in mc:
            if field == "fourier_scale" and mc.get("embedding_type", "fourier") != "fourier":
                continue
            raise ValueError(f"config has no `model.{field}`, needed by the {name} network")
        value = mc[field]
        if field in _LOWERCASE:
            value = str(value).lower()
        elif isinstance(value, list):
            value = tuple(value)
        fields[field] = value
    if "centered" not in data:
        raise ValueError("config has no `data.centered`")
    fields["centered"] = bool(data["centered"])
    return get_model(name, **fields)


def image_shape_from_config(config: Any) -> tuple[int, int, int]:
    """``(H, W, C)`` of the config's data."""
    data = section(config, "data")
    size, channels = int(data["image_size"]), int(data.get("num_channels", 3))
    return size, size, channels


def sde_from_config(config: Any) -> dict:
    """The config's SDE as ``{"name": ..., constants..., "N": ...}`` (the paper's field names)."""
    if is_project_config(config):
        training, mc = {}, section(config, "sde")
        name = str(mc.get("name", "")).lower()
    else:
        training, mc = section(config, "training"), section(config, "model")
        name = str(training.get("sde", "")).lower()
    if name == "vesde":
        return dict(
            name=name,
            sigma_min=float(mc["sigma_min"]),
            sigma_max=float(mc["sigma_max"]),
            N=int(mc["num_scales"]),
        )
    if name in ("vpsde", "subvpsde"):
        return dict(
            name=name,
            beta_min=float(mc["beta_min"]),
            beta_max=float(mc["beta_max"]),
            N=int(mc["num_scales"]),
        )
    raise ValueError(f"unknown SDE {name!r}; expected 'vesde', 'vpsde' or 'subvpsde'")


def model_fields(model: nn.Module) -> dict:
    """The fields that define the network (not :data:`~sde_jax.models.COMPUTE_FIELDS`, which
    only choose how it computes), as JSON-serializable values."""
    out = {}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name", *COMPUTE_FIELDS):
            continue
        value = getattr(model, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# --------------------------------------------------------------------------------------------
# The PyTorch module list.


def _torch_layout(model: NCSNpp | DDPM, resolutions: list[int]) -> Iterator[tuple[str, str]]:
    """Yields ``(flax_name, kind)`` for each entry of the PyTorch ``all_modules`` list, in order.

    The list holds every layer with parameters, and the stand-alone resampling layers even without
    (their Flax counterparts then have no parameters); parameter-free helpers of the progressive
    paths are outside the list.
    """
    is_ddpm = isinstance(model, DDPM)
    stand_alone = is_ddpm or model.resblock_type == "ddpm"
    res = "res_ddpm" if stand_alone else "res_biggan"
    resample_kind = "resample" if stand_alone else res
    progressive = "none" if is_ddpm else model.progressive
    progressive_input = "none" if is_ddpm else model.progressive_input
    levels = len(model.ch_mult)
    if not is_ddpm and model.embedding_type == "fourier":
        yield "fourier_proj", "fourier"
    if model.conditional:
        yield "temb_dense_0", "linear"
        yield "temb_dense_1", "linear"
    yield "conv_in", "conv"
    for level in range(levels):
        for i in range(model.num_res_blocks):
            yield f"down_{level}_res_{i}", res
            if resolutions[level] in model.attn_resolutions:
                yield f"down_{level}_attn_{i}", "attn"
        if level != levels - 1:
            yield f"down_{level}_resample", resample_kind
            if progressive_input == "input_skip":
                yield f"down_{level}_combine", "combine"
            elif progressive_input == "residual":
                yield f"down_{level}_pyramid", "resample"
    yield "mid_res_0", res
    yield "mid_attn", "attn"
    yield "mid_res_1", res
    for level in reversed(range(levels)):
        for i in range(model.num_res_blocks + 1):
            yield f"up_{level}_res_{i}", res
        if resolutions[level] in model.attn_resolutions:
            yield f"up_{level}_attn", "attn"
        if progressive == "residual" and level != levels - 1:
            yield f"up_{level}_pyramid", "resample"
        elif progressive != "none":
            yield f"up_{level}_pyramid_norm", "groupnorm"
            yield f"up_{level}_pyramid_conv", "conv"
        if level != 0:
            yield f"up_{level}_resample", resample_kind
    if progressive != "output_skip":
        yield "norm_out", "groupnorm"
        yield "conv_out", "conv"


@dataclasses.dataclass(frozen=True)
class ParameterEntry:
    """Where one PyTorch parameter goes.

    Attributes:
        flax_path: its path in the Flax parameters; None for a PyTorch parameter the network does
            not use.
        transform: :data:`IDENTITY`, :data:`CONV` or :data:`LINEAR`.
        torch_shape: its shape in PyTorch.
        frozen: not trained (no EMA copy).
    """

    flax_path: tuple[str, ...] | None
    transform: str
    torch_shape: tuple[int, ...]
    frozen: bool


def _flatten(tree: Mapping, prefix=()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _to_torch_shape(shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    if transform == CONV:
        h, w, i, o = shape
        return (o, i, h, w)
    if transform == LINEAR:
        return tuple(reversed(shape))
    return tuple(shape)


def to_flax_array(value: np.ndarray, transform: str) -> np.ndarray:
    """A PyTorch parameter in the Flax layout, float32 and contiguous."""
    value = value.astype(np.float32)
    if transform == CONV:
        value = value.transpose(2, 3, 1, 0)
    elif transform == LINEAR:
        value = value.T
    return np.ascontiguousarray(value)


def _abstract_params(model: nn.Module, image_shape: tuple[int, int, int]) -> dict:
    x = jnp.zeros((1, *image_shape), jnp.float32)
    labels = jnp.ones((1,), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels))
    return variables["params"]


def parameter_table(
    model: NCSNpp | DDPM, image_shape: tuple[int, int, int]
) -> dict[str, ParameterEntry]:
    """Maps every PyTorch parameter name of ``model`` (without ``module.``) to where it lives in
    the Flax parameters, in the PyTorch parameter order."""
    if model.num_classes is not None:
        raise ValueError("the PyTorch networks have no class conditioning; use num_classes=None")
    params = _abstract_params(model, image_shape)
    leaves = _flatten(params)
    table: dict[str, ParameterEntry] = {}
    covered = set()
    index = 0
    resolutions = [image_shape[1] // 2**i for i in range(len(model.ch_mult))]
    for flax_name, kind in _torch_layout(model, resolutions):
        for path, torch_name, transform in _RULES[kind]:
            full = (flax_name, *path)
            if full not in leaves:
                if kind.startswith("res_") and path[0] == "temb_proj" and not model.conditional:
                    # PyTorch blocks of an unconditional network keep their (unused) embedding
                    # projection; it is checked and dropped, and keeps its place in the EMA order.
                    out_ch = leaves[(flax_name, "conv_0", "kernel")].shape[-1]
                    shape = (out_ch, 4 * model.nf) if path[-1] == "kernel" else (out_ch,)
                    table[f"all_modules.{index}.{torch_name}"] = ParameterEntry(
                        None, transform, shape, False
                    )
                continue
            shape = _to_torch_shape(leaves[full].shape, transform)
            table[f"all_modules.{index}.{torch_name}"] = ParameterEntry(
                full, transform, shape, kind in _FROZEN_KINDS
            )
            covered.add(full)
        index += 1
    uncovered = sorted("/".join(p) for p in set(leaves) - covered)
    if uncovered:  # pragma: no cover - a bug in the table above
        raise RuntimeError(f"no PyTorch name for Flax parameters {uncovered}")
    return table
