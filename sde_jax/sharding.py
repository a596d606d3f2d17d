"""Data parallelism over every device of every process: one mesh, and how arrays lie on it.

A run uses one 1-D mesh with axis ``'data'`` over ``jax.devices()`` (all processes' devices). Model
state is replicated on it; batches are split along their batch axis. These helpers are the one copy
of each of those choices, shared by the training step factories and the programs.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Array = jax.Array

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh ``('data',)`` over every device of every process."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


@functools.cache
def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array held whole on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


@functools.cache
def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of an array split along its leading (batch) axis over ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``batch_size`` splits evenly over ``mesh``'s
    devices and over the processes that feed them."""
    for count, what in ((mesh.size, "devices"), (jax.process_count(), "processes")):
        if batch_size % count:
            raise ValueError(
                f"{name} ({batch_size}) must be divisible by the number of {what} ({count})"
            )


def global_batch(local: np.ndarray, mesh: Mesh, spec: PartitionSpec) -> Array:
    """Assembles the global array from this process's part (its rows of the sharded axis)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def global_rows(rows: np.ndarray, mesh: Mesh) -> Array:
    """``rows`` ``[B, ...]``, the same host array on every process, as a global array split along
    its first axis over ``mesh`` (each process transfers only its devices' rows)."""
    return jax.make_array_from_callback(rows.shape, batch_sharded(mesh), lambda index: rows[index])
