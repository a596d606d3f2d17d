r"""Convert the paper's released PyTorch (score_sde_pytorch) checkpoints to this project's models.

Python API:

- :func:`model_from_config` builds the :class:`~sde_jax.models.NCSNpp` or
  :class:`~sde_jax.models.DDPM` described by one of the paper's configs (a dict or ``ConfigDict``
  with the original field names: ``config.model.*``, ``config.data.*``, ``config.training.*``).
- :func:`load_score_sde_pytorch` turns a PyTorch ``state_dict`` (names -> arrays) into
  ``(model, variables)``; ``model.apply(variables, x_nhwc, labels)`` is the network output in eval
  mode. Loading is strict: missing or unexpected names and wrong shapes raise ``ValueError``.
- :func:`read_checkpoint` reads a released ``.pth`` (needs PyTorch: ``pip install sde_jax[torch]``)
  and :func:`checkpoint_state_dict` extracts the model or the EMA weights from it.

Command line::

    python -m sde_jax.convert --checkpoint checkpoint_26.pth \
        --config configs/ve/cifar10_ncsnpp_continuous.py --out converted/cifar10_ncsnpp_ve

``--config`` is a Python file defining ``get_config()`` (one of this project's ``configs/*.py``, or
one of the paper's configs) or a JSON file (a config, or a fixture JSON with a ``config`` entry).

Output format (read back with :func:`load_converted`), a directory with:

- ``model.json``: ``{"format": 1, "model": {"name": "ncsnpp" | "ddpm", "fields": {...}},
  "sde": {"name": "vesde" | "vpsde" | "subvpsde", ...its constants..., "N": int},
  "continuous": bool, "image_shape": [H, W, C], "step": int, "source": {...}}``;
  ``sde_jax.models.get_model(name, **fields)`` rebuilds the module.
- ``checkpoint/``: an Orbax (``PyTreeCheckpointer``) checkpoint of
  ``{"params": ..., "ema_params": ..., "step": int}``; ``{"params": params}`` and
  ``{"params": ema_params}`` are variables for ``model.apply``. The EMA weights are the ones the
  paper samples and evaluates with.

With one of this project's configs as ``--config``, the directory is also a run workdir
(:func:`save_as_run`): ``python main.py --mode=sample --config=configs/ve_cifar10.py
--workdir=converted/cifar10_ncsnpp_ve`` samples with the converted EMA weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models import DDPM, NCSNpp, get_model
from sde_jax.models.layers import sigma_table

FORMAT_VERSION = 1

# Transforms from a PyTorch array to the Flax layout.
_IDENTITY = "identity"
_CONV = "conv"  # OIHW -> HWIO
_LINEAR = "linear"  # [out, in] -> [in, out]

# Per kind of PyTorch module: (Flax path inside the module, PyTorch name inside the module,
# transform), in the PyTorch registration order (which fixes the order of the EMA parameters).
_GN = [(("scale",), "weight", _IDENTITY), (("bias",), "bias", _IDENTITY)]
_CONV_RULES = [(("kernel",), "weight", _CONV), (("bias",), "bias", _IDENTITY)]
_LINEAR_RULES = [(("kernel",), "weight", _LINEAR), (("bias",), "bias", _IDENTITY)]


def _sub(prefix_flax: str, prefix_torch: str, rules):
    return [((prefix_flax, *path), f"{prefix_torch}.{name}", t) for path, name, t in rules]


def _nin(prefix_flax: str, prefix_torch: str):
    return [
        ((prefix_flax, "kernel"), f"{prefix_torch}.W", _IDENTITY),
        ((prefix_flax, "bias"), f"{prefix_torch}.b", _IDENTITY),
    ]


_RULES = {
    "fourier": [(("W",), "W", _IDENTITY)],
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
        (("fir_conv", "kernel"), "Conv2d_0.weight", _CONV),
        (("fir_conv", "bias"), "Conv2d_0.bias", _IDENTITY),
    ],
    "combine": _sub("conv", "Conv_0", _CONV_RULES),
}

# PyTorch parameters that are not trained (and so have no EMA copy).
_FROZEN_KINDS = ("fourier",)
# PyTorch buffers of the networks: not parameters, checked against the config when present.
_BUFFERS = ("sigmas",)


# --------------------------------------------------------------------------------------------
# Configs.


def _section(config: Any, name: str) -> dict:
    try:
        sec = config[name]
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"config has no `{name}` section") from None
    return sec.to_dict() if hasattr(sec, "to_dict") else dict(sec)


_NCSNPP_FIELDS = (
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
_DDPM_FIELDS = (
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


def _is_project_config(config: Any) -> bool:
    try:
        return "sde" in config
    except TypeError:
        return False


def _model_from_project_config(config: Any) -> NCSNpp | DDPM:
    mc, sde, data = _section(config, "model"), _section(config, "sde"), _section(config, "data")
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
    if _is_project_config(config):
        return _model_from_project_config(config)
    mc = _section(config, "model")
    data = _section(config, "data")
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
    names = _NCSNPP_FIELDS if name == "ncsnpp" else _DDPM_FIELDS
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
    data = _section(config, "data")
    size, channels = int(data["image_size"]), int(data.get("num_channels", 3))
    return size, size, channels


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
class _Entry:
    flax_path: tuple[str, ...] | None  # None: a PyTorch parameter the network does not use
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
    if transform == _CONV:
        h, w, i, o = shape
        return (o, i, h, w)
    if transform == _LINEAR:
        return tuple(reversed(shape))
    return tuple(shape)


def _abstract_params(model: nn.Module, image_shape: tuple[int, int, int]) -> dict:
    x = jnp.zeros((1, *image_shape), jnp.float32)
    labels = jnp.ones((1,), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels))
    return variables["params"]


def parameter_table(model: NCSNpp | DDPM, image_shape: tuple[int, int, int]) -> dict[str, _Entry]:
    """Maps every PyTorch parameter name of ``model`` (without ``module.``) to where it lives in
    the Flax parameters, in the PyTorch parameter order."""
    if model.num_classes is not None:
        raise ValueError("the PyTorch networks have no class conditioning; use num_classes=None")
    params = _abstract_params(model, image_shape)
    leaves = _flatten(params)
    table: dict[str, _Entry] = {}
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
                    table[f"all_modules.{index}.{torch_name}"] = _Entry(
                        None, transform, shape, False
                    )
                continue
            shape = _to_torch_shape(leaves[full].shape, transform)
            table[f"all_modules.{index}.{torch_name}"] = _Entry(
                full, transform, shape, kind in _FROZEN_KINDS
            )
            covered.add(full)
        index += 1
    uncovered = sorted("/".join(p) for p in set(leaves) - covered)
    if uncovered:  # pragma: no cover - a bug in the table above
        raise RuntimeError(f"no PyTorch name for Flax parameters {uncovered}")
    return table


# --------------------------------------------------------------------------------------------
# Loading.


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_buffers(buffers: dict[str, np.ndarray], model: NCSNpp | DDPM) -> None:
    if "sigmas" not in buffers:
        return
    sig = buffers["sigmas"]
    expected = sigma_table(model.sigma_min, model.sigma_max, model.num_scales)
    if sig.shape != expected.shape or not np.allclose(sig, expected, rtol=1e-4):
        raise ValueError(
            f"buffer `sigmas` (shape {sig.shape}) does not match the config's noise levels "
            f"(sigma_max={model.sigma_max}, sigma_min={model.sigma_min}, "
            f"num_scales={model.num_scales}): the checkpoint was trained with another config"
        )


def load_score_sde_pytorch(
    state_dict: Mapping[str, Any], config: Any
) -> tuple[NCSNpp | DDPM, dict]:
    """Converts a score_sde_pytorch ``state_dict`` for the network of ``config``.

    Args:
        state_dict: PyTorch parameter names (with or without the ``module.`` prefix of
            DataParallel) to arrays or tensors, as ``model.state_dict()`` or the ``'model'`` entry
            of a released checkpoint; see :func:`checkpoint_state_dict` for the EMA weights.
        config: the paper's config of the network (dict or ``ConfigDict``).

    Returns:
        ``(model, {"params": params})``, float32 parameters.

    Raises:
        ValueError: naming the parameters that are missing, unexpected or of the wrong shape.
    """
    model = model_from_config(config)
    table = parameter_table(model, image_shape_from_config(config))
    sd = {k: _to_numpy(v) for k, v in _strip_module_prefix(state_dict).items()}
    buffers = {k: sd.pop(k) for k in _BUFFERS if k in sd}
    _check_buffers(buffers, model)

    missing = [k for k in table if k not in sd]
    unexpected = [k for k in sd if k not in table]
    problems = []
    if missing:
        problems.append(f"missing parameters {missing}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected}")
    for name, entry in table.items():
        if name in sd and tuple(sd[name].shape) != entry.torch_shape:
            problems.append(
                f"parameter {name!r} has shape {tuple(sd[name].shape)}, expected "
                f"{entry.torch_shape}"
            )
    if problems:
        raise ValueError(
            f"state_dict does not match the {type(model).__name__} of this config: "
            + "; ".join(problems)
        )

    params: dict = {}
    for name, entry in table.items():
        if entry.flax_path is None:
            continue
        value = sd[name].astype(np.float32)
        if entry.transform == _CONV:
            value = value.transpose(2, 3, 1, 0)
        elif entry.transform == _LINEAR:
            value = value.T
        node = params
        for key in entry.flax_path[:-1]:
            node = node.setdefault(key, {})
        node[entry.flax_path[-1]] = jnp.asarray(np.ascontiguousarray(value))
    return model, {"params": params}


def read_checkpoint(path: str | pathlib.Path) -> dict:
    """Reads a released score_sde_pytorch ``.pth`` checkpoint into numpy arrays (needs PyTorch).

    Returns:
        ``{"model": {name: array}, "ema": {"shadow_params": [array, ...], ...}, "step": int}``
        (the optimizer state is dropped).
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .pth checkpoints needs PyTorch: pip install 'sde_jax[torch]'"
        ) from err
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "ema"):
        if key not in ckpt:
            raise ValueError(f"{path} is not a score_sde_pytorch checkpoint: no {key!r} entry")
    ema = dict(ckpt["ema"])
    ema["shadow_params"] = [_to_numpy(p) for p in ema.get("shadow_params", [])]
    return {
        "model": {k: _to_numpy(v) for k, v in ckpt["model"].items()},
        "ema": ema,
        "step": int(ckpt.get("step", 0)),
    }


def checkpoint_state_dict(checkpoint: Mapping, config: Any, *, ema: bool = True) -> dict:
    """The model (``ema=False``) or EMA (``ema=True``) weights of a checkpoint as a state_dict.

    The EMA keeps one ``shadow_params`` entry per trainable parameter, in parameter order; the
    frozen Fourier frequencies have none and are taken from the model weights.

    Args:
        checkpoint: as returned by :func:`read_checkpoint`.
        config: the paper's config of the network.
        ema: take the EMA weights.

    Raises:
        ValueError: if the number or the shapes of the EMA parameters do not match the network.
    """
    sd = _strip_module_prefix(checkpoint["model"])
    if not ema:
        return sd
    model = model_from_config(config)
    table = parameter_table(model, image_shape_from_config(config))
    trainable = [name for name, entry in table.items() if not entry.frozen]
    shadow = checkpoint["ema"]["shadow_params"]
    if len(shadow) != len(trainable):
        raise ValueError(
            f"EMA has {len(shadow)} shadow parameters but the network of this config has "
            f"{len(trainable)} trainable parameters"
        )
    out = dict(sd)
    for name, value in zip(trainable, shadow, strict=True):
        value = _to_numpy(value)
        if tuple(value.shape) != table[name].torch_shape:
            raise ValueError(
                f"EMA shadow parameter for {name!r} has shape {tuple(value.shape)}, expected "
                f"{table[name].torch_shape}"
            )
        out[name] = value
    return out


def load_pth(path: str | pathlib.Path, config: Any, *, ema: bool = True):
    """Reads a ``.pth`` checkpoint and converts its EMA (default) or model weights."""
    ckpt = read_checkpoint(path)
    return load_score_sde_pytorch(checkpoint_state_dict(ckpt, config, ema=ema), config)


# --------------------------------------------------------------------------------------------
# The converted-checkpoint directory.


def model_fields(model: nn.Module) -> dict:
    """The module's typed fields as JSON-serializable values."""
    out = {}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name"):
            continue
        value = getattr(model, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def sde_from_config(config: Any) -> dict:
    """The config's SDE as ``{"name": ..., constants..., "N": ...}`` (the paper's field names)."""
    if _is_project_config(config):
        training, mc = {}, _section(config, "sde")
        name = str(mc.get("name", "")).lower()
    else:
        training, mc = _section(config, "training"), _section(config, "model")
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


def save_converted(
    out_dir: str | pathlib.Path,
    model: nn.Module,
    params: Mapping,
    ema_params: Mapping,
    *,
    config: Any,
    step: int = 0,
    source: Mapping | None = None,
) -> pathlib.Path:
    """Writes ``model.json`` and the Orbax ``checkpoint/`` (see the module docstring)."""
    import orbax.checkpoint as ocp

    out = pathlib.Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "model": {"name": type(model).__name__.lower(), "fields": model_fields(model)},
        "sde": sde_from_config(config),
        "continuous": bool(_section(config, "training").get("continuous", True)),
        "image_shape": list(image_shape_from_config(config)),
        "step": int(step),
        "source": dict(source or {}),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    tree = {"params": dict(params), "ema_params": dict(ema_params), "step": int(step)}
    ocp.PyTreeCheckpointer().save(out / "checkpoint", tree, force=True)
    return out


def save_as_run(
    out_dir: str | pathlib.Path, config: Any, params: Mapping, ema_params: Mapping, step: int
) -> pathlib.Path:
    """Writes converted weights as a run workdir of this project's program.

    ``config`` is one of this project's configs (``configs/*.py``). The directory then holds the
    run signature and a snapshot at ``step`` (with a fresh optimizer state), so
    ``python main.py --mode=sample --config=<config> --workdir=<out_dir>`` (or ``--mode=eval``)
    uses the converted EMA weights, and ``--mode=train`` fine-tunes from them.
    """
    import jax.numpy as jnp

    from sde_jax.checkpoint import Checkpoints, check_signature
    from sde_jax.config import Experiment
    from sde_jax.train import TrainState, make_optimizer

    out = pathlib.Path(out_dir).absolute()
    exp = Experiment.from_config(config)
    check_signature(str(out), exp.signature())
    params, ema_params = dict(params), dict(ema_params)
    state = TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        ema_params=ema_params,
        opt_state=make_optimizer(exp.optim).init(params),
    )
    ckpts = Checkpoints(str(out))
    ckpts.save(int(step), state, {"data": None}, snapshot=True)
    ckpts.close()
    return out


def load_converted(out_dir: str | pathlib.Path) -> tuple[nn.Module, dict, dict]:
    """Reads a directory written by :func:`save_converted`.

    Returns:
        ``(model, {"params", "ema_params", "step"}, meta)`` with ``meta`` the parsed ``model.json``;
        the parameters are numpy arrays.
    """
    import orbax.checkpoint as ocp

    out = pathlib.Path(out_dir).absolute()
    meta = json.loads((out / "model.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{out}: unsupported format {meta.get('format')!r}")
    model = get_model(meta["model"]["name"], **meta["model"]["fields"])
    ckptr = ocp.PyTreeCheckpointer()
    # Restore every leaf as a host numpy array, which needs no device or sharding information.
    abstract = ckptr.metadata(out / "checkpoint")
    abstract = getattr(abstract, "item_metadata", abstract)
    abstract = getattr(abstract, "tree", abstract)
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract
    )
    tree = ckptr.restore(out / "checkpoint", restore_args=restore_args)
    tree["step"] = int(tree["step"])
    return model, tree, meta


def load_config_file(path: str | pathlib.Path) -> Any:
    """A config from a ``.py`` file defining ``get_config()`` or a ``.json`` file."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data["config"] if "config" in data and "model" not in data else data
    if path.suffix != ".py":
        raise ValueError(f"--config must be a .py or .json file; got {path}")
    spec = importlib.util.spec_from_file_location(f"_sde_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    return module.get_config()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sde_jax.convert",
        description="Convert a score_sde_pytorch checkpoint (.pth) to an sde_jax checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="released .pth checkpoint")
    parser.add_argument("--config", required=True, help="the paper's config (.py or .json)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)

    config = load_config_file(args.config)
    ckpt = read_checkpoint(args.checkpoint)
    model, variables = load_score_sde_pytorch(
        checkpoint_state_dict(ckpt, config, ema=False), config
    )
    _, ema_variables = load_score_sde_pytorch(checkpoint_state_dict(ckpt, config, ema=True), config)
    out = save_converted(
        args.out,
        model,
        variables["params"],
        ema_variables["params"],
        config=config,
        step=ckpt["step"],
        source={"checkpoint": str(args.checkpoint), "config": str(args.config)},
    )
    if _is_project_config(config):
        save_as_run(args.out, config, variables["params"], ema_variables["params"], ckpt["step"])
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"wrote {out} ({type(model).__name__}, {n:,} parameters, step {ckpt['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
