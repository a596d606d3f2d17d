"""The configured sampler of a run over every device, and sampling in rounds.

Samples are produced in rounds (:func:`sample_round`, the one loop every mode that samples uses),
each round one compiled program whose batch axis is split over the device mesh; round ``r``'s key
is ``fold_in(key, r)``, so the samples do not depend on how many devices produced them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from sde_jax.data import inverse_scaler, to_levels
from sde_jax.models import make_score_fn
from sde_jax.programs.config import SamplingConfig
from sde_jax.programs.distributed import gather
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.workdir import write_json
from sde_jax.sampling import method_options, sample
from sde_jax.sde import SDE
from sde_jax.sharding import batch_sharded, check_batch_size, replicated

Array = jax.Array


# Sampler options that config.sampling sets through a field of another name.
_FIELD_OF_OPTION = {
    "n_steps": "n_steps_each",
    "denoise": "noise_removal",
    "solver": "ode_solver",
    "controller": "ode_controller",
}
# Field values that mean "the sampler's own default": the option is not passed.
_UNSET = {"schedule": "", "s_max": 0.0}
# The options of the ODE sampler's other step-size controller, which it refuses.
_OTHER_CONTROLLER = {"pid": ("num_steps", "rho"), "fixed": ("rtol", "atol")}


def sampler_options(cfg: SamplingConfig) -> dict[str, Any]:
    """The options of ``sde_jax.sampling.sample`` for ``cfg.method``: those the method takes
    (:func:`sde_jax.sampling.method_options`) that a field of ``cfg`` sets, except fields left at
    "the method's default" (empty ``schedule``, zero ``s_max``)."""
    skip = _OTHER_CONTROLLER[cfg.ode_controller] if cfg.method == "ode" else ()
    options = {}
    for name in method_options(cfg.method):
        field = _FIELD_OF_OPTION.get(name, name)
        if name in skip or not hasattr(cfg, field):
            continue
        value = getattr(cfg, field)
        if name not in _UNSET or value != _UNSET[name]:
            options[name] = value
    return options


# The sampler options that fitted levels replace.
_REPLACED_BY_LEVELS = ("num_steps", "schedule", "rho", "s_max", "eps")


def make_sample_fn(
    cfg: SamplingConfig,
    sde: SDE,
    model: nn.Module,
    shape: tuple[int, ...],
    mesh: Mesh,
    *,
    continuous: bool = True,
    fitted: dict[str, Any] | None = None,
) -> Callable[[Any, Array], tuple[Array, Array]]:
    """The jitted ``sample_fn(params, key) -> (samples [B, H, W, C], nfe)`` of the configured
    sampler (:func:`sde_jax.sampling.sample` with ``cfg.method`` and :func:`sampler_options`), in
    the model's data scaling, with the batch split over ``mesh``. ``fitted``: levels fitted to the
    model (``levels``, ``query_levels``; :mod:`sde_jax.programs.fitted_levels`), which replace the
    schedule's options."""
    score = make_score_fn(sde, model, continuous=continuous)
    options = sampler_options(cfg)
    if fitted is not None:
        options = {k: v for k, v in options.items() if k not in _REPLACED_BY_LEVELS} | fitted

    def run(params, key):
        score_fn = lambda x, t: score({"params": params}, x, t)
        return sample(key, score_fn, sde, shape, method=cfg.method, **options)

    return jax.jit(
        run,
        in_shardings=(replicated(mesh), replicated(mesh)),
        out_shardings=(batch_sharded(mesh), replicated(mesh)),
    )


def experiment_sample_fn(
    exp: Experiment, model: nn.Module, mesh: Mesh, fitted: dict[str, Any] | None = None
) -> Callable:
    """:func:`make_sample_fn` for ``exp``'s sampler, SDE and image shape, ``sampling.batch_size``
    samples per call."""
    check_batch_size(exp.sampling.batch_size, mesh, "config.sampling.batch_size")
    shape = (exp.sampling.batch_size, *exp.image_shape)
    return make_sample_fn(
        exp.sampling, exp.sde.build(), model, shape, mesh, continuous=exp.training.continuous,
        fitted=fitted,
    )  # fmt: skip


def sample_round(fn: Callable, params: Any, key: Array, r: int, *args) -> tuple[np.ndarray, int]:
    """Round ``r`` of a sampling run: ``fn(params, fold_in(key, r), *args) -> (samples, nfe)``,
    the samples brought to the host.

    Every mode samples in rounds through this function, so round ``r`` of a run draws the same
    samples whatever the device count. Raises ``FloatingPointError`` naming the round if a sample
    is not finite.
    """
    x, nfe = fn(params, jax.random.fold_in(key, r), *args)
    # Every process gets the whole round (each holds only its rows of the batch).
    x = gather(x)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise FloatingPointError(f"sampling round {r}: {bad} non-finite values in the samples")
    return x, int(nfe)


def generate(
    exp: Experiment, sample_fn: Callable, params: Any, key: Array, num_samples: int
) -> tuple[np.ndarray, int]:
    """``num_samples`` images in [0, 1] ``[N, H, W, C]`` from rounds of ``sample_fn``, and the NFE
    per sample."""
    rounds = [
        sample_round(sample_fn, params, key, r)
        for r in range(-(-num_samples // exp.sampling.batch_size))
    ]
    images = to_images(exp, np.concatenate([x for x, _ in rounds]))
    return images[:num_samples], rounds[-1][1]


def to_images(exp: Experiment, x: Any) -> np.ndarray:
    """Samples in the model's scale as images in [0, 1] on the data's levels
    (:func:`sde_jax.data.to_levels`): what grids and saved samples show."""
    x01 = inverse_scaler(exp.data)(np.asarray(x))  # to_levels sends values outside to the ends.
    return to_levels(x01, exp.data.num_levels, dequantized=exp.data.uniform_dequantization)


SETTINGS_RECORD = "settings.json"


def output_settings(exp: Experiment, step: int) -> dict[str, Any]:
    """What the samples of ``--mode=sample`` depend on, recorded beside them."""
    settings = {"step": step, "seed": exp.seed, "sampling": dataclasses.asdict(exp.sampling)}
    return json.loads(json.dumps(settings))


def check_output_dir(out_dir: str, settings: dict[str, Any]) -> None:
    """Raises ``FileExistsError`` if ``out_dir`` already holds samples made with other settings
    (or with unrecorded ones), which a new run would overwrite; the same settings reproduce the
    same samples, so rewriting them is allowed."""
    if not os.path.exists(os.path.join(out_dir, "samples.npz")):
        return
    saved = None
    record = os.path.join(out_dir, SETTINGS_RECORD)
    if os.path.exists(record):
        with open(record) as f:
            saved = json.load(f)
    if saved == settings:
        return
    if saved is None:
        what = "unrecorded settings"
    else:
        old, new = saved.get("sampling", {}), settings["sampling"]
        changed = sorted(k for k in new if old.get(k) != new[k])
        what = (
            "other settings ("
            + ", ".join(f"sampling.{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
            + ")"
        )
    raise FileExistsError(
        f"{out_dir} already holds samples made with {what}; move or delete it to sample again"
    )


def write_settings(out_dir: str, settings: dict[str, Any]) -> None:
    """Records ``settings`` beside the samples in ``out_dir`` (written last: it marks them
    complete)."""
    write_json(os.path.join(out_dir, SETTINGS_RECORD), settings, sort_keys=True)
