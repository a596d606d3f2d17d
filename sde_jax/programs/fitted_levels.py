"""``--mode=fit_levels``: noise levels fitted to a run's model for its few-step sampler, stored
beside the checkpoints and used by ``--mode=sample``.

``--mode=fit_levels`` fits ``config.sampling.num_steps`` levels (and the levels at which the steps
query the denoiser) of ``config.sampling.method`` to the EMA weights of the newest (or ``--step``'s)
checkpoint with :func:`sde_jax.sampling.optimize_levels` (``sampling.fit_samples`` prior samples,
``sampling.fit_iterations`` Adam steps) and writes ``<workdir>/fitted_levels/<method>-<n>.json``.
``--mode=sample`` with the same method, step count and method options, at the same checkpoint,
then samples on those levels (``sampling.fitted_levels=False`` turns this off); a file made for
another checkpoint or other options is not used, and the line printed says why.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from sde_jax.models import make_score_fn
from sde_jax.programs.checkpoint import restore_ema
from sde_jax.programs.config import SamplingConfig
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.workdir import write_json
from sde_jax.sampling import TUNABLE_METHODS, method_options, optimize_levels
from sde_jax.sharding import make_mesh

FITTED_DIR = "fitted_levels"
# Separates the fit's prior samples from every other key of a run.
FIT_SALT = 2_000_003


def fitted_path(workdir: str, cfg: SamplingConfig) -> str:
    """Where the levels fitted for ``cfg``'s method and step count are stored."""
    return os.path.join(workdir, FITTED_DIR, f"{cfg.method}-{cfg.num_steps}.json")


def _method_extras(cfg: SamplingConfig) -> dict[str, Any]:
    """The method's options the levels were fitted with (``order``, ``lower_order_final``)."""
    extras = ("order", "lower_order_final", "eta")
    return {k: getattr(cfg, k) for k in extras if k in method_options(cfg.method)}


def run_fit_levels_mode(exp: Experiment, workdir: str, *, step: int | None = None) -> str:
    """``--mode=fit_levels`` (see the module); returns the path written."""
    cfg = exp.sampling
    if cfg.method not in TUNABLE_METHODS:
        raise ValueError(
            f"--mode=fit_levels fits a deterministic few-step sampler: config.sampling.method "
            f"must be one of {list(TUNABLE_METHODS)}; got {cfg.method!r}"
        )
    if cfg.method == "ddim" and cfg.eta != 0.0:
        raise ValueError(
            f"--mode=fit_levels fits a deterministic sampler: config.sampling.eta must be 0 for "
            f"ddim; got {cfg.eta!r}"
        )
    mesh = make_mesh()
    model, params, step = restore_ema(exp, workdir, mesh, step)
    sde = exp.sde.build()
    score = make_score_fn(sde, model, continuous=exp.training.continuous)
    key = jax.random.fold_in(jax.random.key(exp.seed), FIT_SALT)
    fitted, report = optimize_levels(
        key,
        lambda x, t: score({"params": params}, x, t),
        sde,
        (cfg.fit_samples, *exp.image_shape),
        method=cfg.method,
        num_steps=cfg.num_steps,
        iterations=cfg.fit_iterations,
        **_method_extras(cfg),
    )
    record = {
        "step": step,
        "method": cfg.method,
        "num_steps": cfg.num_steps,
        "options": _method_extras(cfg),
        **{name: np.asarray(v, np.float64).tolist() for name, v in fitted.items()},
        "report": report,
    }
    path = fitted_path(workdir, cfg)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, record)
    start, end = report["error_start"]["held_out"], report["error_end"]["held_out"]
    print(
        f"fitted {cfg.num_steps} levels of {cfg.method} ({report['nfe']} score evaluations) to step "
        f"{step} in {report['seconds']:.0f} s: held-out error (geometric mean of squared "
        f"distances to the ODE) {start:.3g} -> {end:.3g}; wrote {path}"
    )
    return path


def load_fitted_levels(
    workdir: str, cfg: SamplingConfig, step: int
) -> tuple[dict[str, Any] | None, str]:
    """The fitted levels ``--mode=sample`` uses for ``cfg`` at checkpoint ``step``, as sampler
    options (None when there are none to use), and a line saying what was decided."""
    path = fitted_path(workdir, cfg)
    if cfg.method not in TUNABLE_METHODS or not os.path.exists(path):
        return None, ""
    if not cfg.fitted_levels:
        return None, f"not using {path} (config.sampling.fitted_levels=False)"
    with open(path) as f:
        record = json.load(f)
    if record.get("step") != step:
        return None, (
            f"not using {path}: fitted to step {record.get('step')}, sampling step {step} "
            "(fit again with --mode=fit_levels)"
        )
    if record.get("options") != _method_extras(cfg):
        return None, (
            f"not using {path}: fitted with {record.get('options')}, sampling with "
            f"{_method_extras(cfg)} (fit again with --mode=fit_levels)"
        )
    fitted = {
        k: np.asarray(record[k], np.float32) for k in ("levels", "query_levels") if k in record
    }
    return fitted, f"sampling on the levels fitted to step {step} ({path})"
