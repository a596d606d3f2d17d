"""Sampling from a trained model: the configured sampler over every device, and ``--mode=sample``.

Samples are produced in rounds of ``config.sampling.batch_size``, each round one compiled program
whose batch axis is split over the device mesh; each round's key is ``fold_in(key, round)``, so the
samples do not depend on how many devices produced them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sde_jax.config import Experiment, SamplingConfig
from sde_jax.models import make_score_fn
from sde_jax.sampling import sample
from sde_jax.sde import SDE
from sde_jax.summary import image_grid, write_png

Array = jax.Array


def sampler_options(cfg: SamplingConfig) -> dict[str, Any]:
    """The options of ``sde_jax.sampling.sample`` for ``cfg.method``: only the fields that method
    reads (the others keep their defaults and are not passed)."""
    method = cfg.method
    if method == "pc":
        return dict(
            predictor=cfg.predictor,
            corrector=cfg.corrector,
            snr=cfg.snr,
            n_steps=cfg.n_steps_each,
            denoise=cfg.noise_removal,
            probability_flow=cfg.probability_flow,
        )
    if method == "ode":
        options = dict(solver=cfg.ode_solver, controller=cfg.ode_controller)
        if cfg.ode_controller == "pid":
            options.update(rtol=cfg.rtol, atol=cfg.atol)
        else:
            options.update(num_steps=cfg.num_steps, rho=cfg.rho)
        return dict(options, denoise=cfg.noise_removal)
    options = dict(num_steps=cfg.num_steps, rho=cfg.rho)
    if cfg.schedule:
        options.update(schedule=cfg.schedule)
    if cfg.s_max:
        options.update(s_max=cfg.s_max)
    if method in ("dpm_solver_3m", "unipc"):
        options.update(order=cfg.order, lower_order_final=cfg.lower_order_final)
    if method == "edm_stochastic":
        options.update(
            s_churn=cfg.s_churn, s_tmin=cfg.s_tmin, s_tmax=cfg.s_tmax, s_noise=cfg.s_noise
        )
    elif method == "ddim":
        options.update(eta=cfg.eta)
    return options


def make_sample_fn(
    cfg: SamplingConfig,
    sde: SDE,
    model: nn.Module,
    shape: tuple[int, ...],
    mesh: Mesh,
    *,
    continuous: bool = True,
) -> Callable[[Any, Array], tuple[Array, Array]]:
    """The jitted ``sample_fn(params, key) -> (samples [B, H, W, C], nfe)`` of the configured
    sampler (:func:`sde_jax.sampling.sample` with ``cfg.method`` and :func:`sampler_options`), in
    the model's data scaling, with the batch split over ``mesh``."""
    score = make_score_fn(sde, model, continuous=continuous)
    options = sampler_options(cfg)

    def run(params, key):
        score_fn = lambda x, t: score({"params": params}, x, t)
        return sample(key, score_fn, sde, shape, method=cfg.method, **options)

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        run,
        in_shardings=(replicated, replicated),
        out_shardings=(NamedSharding(mesh, PartitionSpec("data")), replicated),
    )


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] to uint8, rounding as the 8-bit data was quantized."""
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def enlarge(images: np.ndarray) -> np.ndarray:
    """Images ``[N, H, W, C]`` smaller than 32 pixels enlarged (nearest neighbour) so that an 8x8
    digit is visible in a grid."""
    scale = max(1, -(-32 // images.shape[1]))
    return images.repeat(scale, axis=1).repeat(scale, axis=2)


def save_grid(path: str, images01: np.ndarray, max_images: int = 100) -> None:
    """Writes up to ``max_images`` images in [0, 1] as one PNG grid (small images enlarged)."""
    write_png(path, image_grid(enlarge(np.asarray(images01)[:max_images])))


def generate(
    exp: Experiment,
    sample_fn: Callable,
    params: Any,
    key: Array,
    num_samples: int,
    inverse_scaler: Callable,
) -> tuple[np.ndarray, int]:
    """``num_samples`` images in [0, 1] ``[N, H, W, C]`` and the NFE per sample."""
    rounds = -(-num_samples // exp.sampling.batch_size)
    out, nfe = [], 0
    for r in range(rounds):
        x, nfe = sample_fn(params, jax.random.fold_in(key, r))
        x = np.asarray(jax.device_get(inverse_scaler(x)))
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(f"sampling round {r} produced non-finite values")
        out.append(np.clip(x, 0.0, 1.0))
    return np.concatenate(out)[:num_samples], int(nfe)


def run_sample_mode(exp: Experiment, workdir: str, *, step: int | None = None) -> str:
    """``--mode=sample``: samples with the EMA weights of the newest (or ``step``'s) checkpoint.

    Writes ``<workdir>/samples/step_<step>/samples.npz`` (uint8 ``images`` ``[N, H, W, C]`` and the
    ``nfe``) and ``grid.png``; returns that directory.
    """
    from sde_jax.checkpoint import Checkpoints, check_signature
    from sde_jax.data import inverse_scaler as make_inverse_scaler
    from sde_jax.train import abstract_state, make_mesh

    if exp.sampling.task != "unconditional":
        from sde_jax.conditional_sample import run_task

        return run_task(exp, workdir, step=step)
    check_signature(workdir, exp.signature(), write=False)
    mesh = make_mesh()
    if exp.sampling.batch_size % mesh.size:
        raise ValueError(
            f"config.sampling.batch_size ({exp.sampling.batch_size}) must be divisible by the "
            f"number of devices ({mesh.size})"
        )
    sde = exp.sde.build()
    model = exp.build_model()
    ckpts = Checkpoints(workdir)
    if ckpts.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir!r}: train first (--mode=train)")
    state, extra = ckpts.restore(abstract_state(exp, model, mesh), step)
    ckpts.close()
    step = int(extra["step"])
    shape = (
        exp.sampling.batch_size,
        exp.data.image_size,
        exp.data.image_size,
        exp.data.num_channels,
    )
    sample_fn = make_sample_fn(
        exp.sampling, sde, model, shape, mesh, continuous=exp.training.continuous
    )
    key = jax.random.fold_in(jax.random.key(exp.seed), 1_000_003)
    images, nfe = generate(
        exp,
        sample_fn,
        state.ema_params,
        key,
        exp.sampling.num_samples,
        make_inverse_scaler(exp.data),
    )
    out_dir = os.path.join(workdir, "samples", f"step_{step}")
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        np.savez_compressed(os.path.join(out_dir, "samples.npz"), images=to_uint8(images), nfe=nfe)
        save_grid(os.path.join(out_dir, "grid.png"), images)
    print(f"wrote {len(images)} samples ({nfe} score evaluations each) to {out_dir}")
    return out_dir
