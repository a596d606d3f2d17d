"""Converted weights as a run workdir of this project's programs."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from sde_jax.programs.checkpoint import Checkpoints
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.workdir import check_signature
from sde_jax.training import TrainState


def save_as_run(
    out_dir: str | pathlib.Path, config: Any, params: Mapping, ema_params: Mapping, step: int
) -> pathlib.Path:
    """Writes converted weights as a run workdir of this project's program.

    ``config`` is one of this project's configs (``configs/*.py``). The directory then holds the
    run signature and a snapshot at ``step`` (with a fresh optimizer state), so
    ``python main.py --mode=sample --config=<config> --workdir=<out_dir>`` (or ``--mode=eval``)
    uses the converted EMA weights, and ``--mode=train`` fine-tunes from them.
    """
    out = pathlib.Path(out_dir).absolute()
    exp = Experiment.from_config(config)
    check_signature(str(out), exp.signature())
    params, ema_params = dict(params), dict(ema_params)
    state = TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        ema_params=ema_params,
        opt_state=exp.optim.build().init(params),
    )
    ckpts = Checkpoints(str(out), signature=exp.signature())
    ckpts.save(int(step), state, {"data": None}, snapshot=True)
    ckpts.close()
    return out
