"""Joining a multi-process run: several processes, one logical run over all their devices."""

from __future__ import annotations

import os

import jax


def launched_as_multi_process() -> bool:
    """True when launched as one of several processes: an explicit coordinator, a SLURM job with
    more than one task, or a multi-host TPU slice. ``jax.distributed.initialize()`` then reads the
    addresses and process ids from that environment."""
    env = os.environ
    return (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )


def initialize_if_launched() -> None:
    """Connects this process to the others of its run when it was launched as one of several."""
    if launched_as_multi_process():
        jax.distributed.initialize()
