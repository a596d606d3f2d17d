"""``--mode=sample``: samples, or completes images, with a run's EMA weights."""

from __future__ import annotations

import os

import jax
import numpy as np

from sde_jax.programs.checkpoint import restore_ema
from sde_jax.programs.conditional_sample import run_task
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.fitted_levels import load_fitted_levels
from sde_jax.programs.images import save_grid, to_uint8_rounded
from sde_jax.programs.sampler import (
    check_output_dir,
    experiment_sample_fn,
    generate,
    output_settings,
    write_settings,
)
from sde_jax.sharding import check_batch_size, make_mesh

# Separates the keys of --mode=sample from those of training's snapshot grids.
SAMPLE_MODE_SALT = 1_000_003


def run_sample_mode(exp: Experiment, workdir: str, *, step: int | None = None) -> str:
    """``--mode=sample``: samples with the EMA weights of the newest (or ``step``'s) checkpoint.

    Writes ``<workdir>/samples/step_<step>/samples.npz`` (uint8 ``images`` ``[N, H, W, C]`` and the
    ``nfe``) and ``grid.png``; returns that directory. A ``config.sampling.task`` other than
    ``unconditional`` runs :func:`sde_jax.programs.conditional_sample.run_task`. Levels fitted
    by ``--mode=fit_levels`` for the configured sampler and this checkpoint are used when present
    (:func:`sde_jax.programs.fitted_levels.load_fitted_levels`).
    """
    if exp.sampling.task != "unconditional":
        return run_task(exp, workdir, step=step)
    mesh = make_mesh()
    check_batch_size(exp.sampling.batch_size, mesh, "config.sampling.batch_size")
    model, params, step = restore_ema(exp, workdir, mesh, step)
    out_dir = os.path.join(workdir, "samples", f"step_{step}")
    fitted, line = load_fitted_levels(workdir, exp.sampling, step)
    settings = output_settings(exp, step)
    if fitted is not None:
        settings["fitted_levels"] = {k: np.asarray(v).tolist() for k, v in fitted.items()}
    check_output_dir(out_dir, settings)
    if line:
        print(line)
    sample_fn = experiment_sample_fn(exp, model, mesh, fitted)
    key = jax.random.fold_in(jax.random.key(exp.seed), SAMPLE_MODE_SALT)
    images, nfe = generate(exp, sample_fn, params, key, exp.sampling.num_samples)
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        np.savez_compressed(
            os.path.join(out_dir, "samples.npz"), images=to_uint8_rounded(images), nfe=nfe
        )
        save_grid(os.path.join(out_dir, "grid.png"), images)
        write_settings(out_dir, settings)
    print(f"wrote {len(images)} samples ({nfe} score evaluations each) to {out_dir}")
    return out_dir
