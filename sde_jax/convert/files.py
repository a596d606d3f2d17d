"""Reading released score_sde_pytorch checkpoints, and the converted-checkpoint directory.

A converted directory (read back with :func:`load_converted`) holds:

- ``model.json``: ``{"format": 1, "model": {"name": "ncsnpp" | "ddpm", "fields": {...}},
  "sde": {"name": "vesde" | "vpsde" | "subvpsde", ...its constants..., "N": int},
  "continuous": bool, "image_shape": [H, W, C], "step": int, "source": {...}}``;
  ``sde_jax.models.get_model(name, **fields)`` rebuilds the module.
- ``checkpoint/``: an Orbax (``PyTreeCheckpointer``) checkpoint of
  ``{"params": ..., "ema_params": ..., "step": int}``; ``{"params": params}`` and
  ``{"params": ema_params}`` are variables for ``model.apply``. The EMA weights are the ones the
  paper samples and evaluates with.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.convert.layout import (
    BUFFERS,
    image_shape_from_config,
    model_fields,
    model_from_config,
    parameter_table,
    sde_from_config,
    section,
    to_flax_array,
)
from sde_jax.models import DDPM, NCSNpp, get_model
from sde_jax.models.layers import sigma_table

FORMAT_VERSION = 1


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
        config: the paper's config of the network (dict or ``ConfigDict``), or one of this
            project's.

    Returns:
        ``(model, {"params": params})``, float32 parameters; ``model.apply(variables, x_nhwc,
        labels)`` is the network output in eval mode.

    Raises:
        ValueError: naming the parameters that are missing, unexpected or of the wrong shape.
    """
    model = model_from_config(config)
    table = parameter_table(model, image_shape_from_config(config))
    sd = {k: _to_numpy(v) for k, v in _strip_module_prefix(state_dict).items()}
    buffers = {k: sd.pop(k) for k in BUFFERS if k in sd}
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
        node = params
        for key in entry.flax_path[:-1]:
            node = node.setdefault(key, {})
        node[entry.flax_path[-1]] = jnp.asarray(to_flax_array(sd[name], entry.transform))
    return model, {"params": params}


def read_checkpoint(path: str | pathlib.Path) -> dict:
    """Reads a released score_sde_pytorch ``.pth`` checkpoint into numpy arrays (needs PyTorch:
    ``pip install sde_jax[torch]``).

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
        "continuous": bool(section(config, "training").get("continuous", True)),
        "image_shape": list(image_shape_from_config(config)),
        "step": int(step),
        "source": dict(source or {}),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    tree = {"params": dict(params), "ema_params": dict(ema_params), "step": int(step)}
    ocp.PyTreeCheckpointer().save(out / "checkpoint", tree, force=True)
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
    """A config from a ``.py`` file defining ``get_config()`` or a ``.json`` file (a config, or a
    fixture JSON with a ``config`` entry)."""
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
