"""Orbax checkpoints of a run's workdir: never written from broken state, verified when read.

A workdir holds

- ``checkpoints/<step>/``: snapshots, written every ``snapshot_freq`` steps and kept;
- ``checkpoints-meta/<step>/``: pre-emption checkpoints, written often and on SIGTERM, only the
  latest kept;
- ``run.json``: the signature of the run (:mod:`sde_jax.programs.workdir`).

Each checkpoint holds the train state and a small JSON record (the data iterator's position and the
step), so a resumed run continues the same data stream. What is guaranteed:

- **Atomic.** Orbax writes a checkpoint to a temporary directory and renames it when complete, so a
  process killed mid-write leaves the previous checkpoint intact and the half-written one is
  ignored.
- **Finite.** :meth:`Checkpoints.save` refuses a state with a NaN or infinity in any leaf, so a
  diverged run never replaces a good checkpoint.
- **Synchronous.** A save returns when the checkpoint is on disk, or raises at once naming the
  directory (an asynchronous save's error surfaced only at the next save, and Orbax's background
  threads then held the process for minutes).
- **Verified.** Each checkpoint's files get SHA-256 checksums (``sde_jax_checksums.json`` in the
  step's directory) once written. Restoring verifies them, and a damaged checkpoint (changed
  bytes, missing or truncated files, non-finite values) is passed over with a warning for the
  newest intact one; a training run moves it aside (``<step>.damaged``) so that it is never
  mistaken for a good one. Checkpoints written before checksums existed are read unverified.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from sde_jax.metrics.weights import file_sha256
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.workdir import check_signature, write_json, write_signature
from sde_jax.sharding import replicated
from sde_jax.training import TrainState, init_state

SNAPSHOTS = "checkpoints"
PREEMPTION = "checkpoints-meta"
CHECKSUMS = "sde_jax_checksums.json"


class CheckpointDamaged(ValueError):
    """A checkpoint whose files or values are not what was saved."""


def _manager(directory: str, max_to_keep: int | None, create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory, options=options)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def is_finite(tree: Any) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (one reduction on the devices)."""
    return bool(_all_finite(tree))


def _file_digests(directory: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel.startswith(CHECKSUMS):  # The record itself, or its temporary file.
                continue
            digests[rel] = file_sha256(path)
    return digests


def _write_checksums(directory: str) -> None:
    path = os.path.join(directory, CHECKSUMS)
    write_json(path, _file_digests(directory), sort_keys=True)


def verify_checksums(directory: str) -> bool:
    """Raises :class:`CheckpointDamaged` naming the first file of ``directory`` whose SHA-256
    differs from the one recorded at save (or that is missing); returns False for a checkpoint
    saved without checksums, True for a verified one."""
    path = os.path.join(directory, CHECKSUMS)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        recorded = json.load(f)
    found = _file_digests(directory)
    for rel, digest in sorted(recorded.items()):
        if rel not in found:
            raise CheckpointDamaged(f"{os.path.join(directory, rel)} is missing")
        if found[rel] != digest:
            raise CheckpointDamaged(f"{os.path.join(directory, rel)} does not match its checksum")
    return True


class Checkpoints:
    """Snapshots and pre-emption checkpoints of one workdir.

    Args:
        workdir: the run directory.
        keep_snapshots: how many snapshots to keep (None: all).
        writable: whether this process saves (training); readers create nothing in the workdir
            and leave damaged checkpoints where they are.
        signature: the run signature to record in ``run.json`` with the first save, so that a
            command that fails before saving leaves no ``run.json`` behind.
    """

    def __init__(
        self,
        workdir: str,
        keep_snapshots: int | None = None,
        *,
        writable: bool = True,
        signature: dict[str, Any] | None = None,
    ):
        # Orbax requires absolute paths; --workdir=runs/x is relative.
        self.workdir = os.path.abspath(workdir)
        self.writable, self.signature = writable, signature
        self._keep = {SNAPSHOTS: keep_snapshots, PREEMPTION: 1}
        self._managers: dict[str, ocp.CheckpointManager] = {}

    def _manager(self, kind: str) -> ocp.CheckpointManager | None:
        directory = os.path.join(self.workdir, kind)
        if kind not in self._managers:
            if not self.writable and not os.path.isdir(directory):
                return None
            self._managers[kind] = _manager(directory, self._keep[kind], self.writable)
        return self._managers[kind]

    def _steps(self, kind: str) -> list[int]:
        manager = self._manager(kind)
        return sorted(manager.all_steps()) if manager is not None else []

    def latest_step(self) -> int | None:
        """The newest step saved in either kind of checkpoint, or None."""
        steps = self._steps(SNAPSHOTS) + self._steps(PREEMPTION)
        return max(steps) if steps else None

    def snapshot_steps(self) -> list[int]:
        return self._steps(SNAPSHOTS)

    def save(self, step: int, state: Any, extra: dict, *, snapshot: bool) -> None:
        """Saves ``state`` and the JSON record ``extra`` at ``step``, with checksums.

        Raises:
            FloatingPointError: ``state`` has a non-finite value (nothing is written).
            OSError: the checkpoint could not be written (names the directory).
        """
        kind = SNAPSHOTS if snapshot else PREEMPTION
        manager = self._manager(kind)
        if step in manager.all_steps():
            return
        if not is_finite(state):
            raise FloatingPointError(
                f"the train state has non-finite values at step {step}: not saved; the newest "
                f"checkpoint in {self.workdir} (step {self.latest_step()}) is kept"
            )
        if self.signature is not None:
            write_signature(self.workdir, self.signature)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra, step=step))
        )
        directory = os.path.join(self.workdir, kind)
        try:
            manager.save(step, args=args)
            manager.wait_until_finished()
            if jax.process_index() == 0:
                _write_checksums(os.path.join(directory, str(step)))
        except OSError as e:
            raise OSError(
                f"could not save the checkpoint of step {step} in {directory}: {e}"
            ) from e

    def _restore_one(self, kind: str, step: int, abstract_state: Any) -> tuple[Any, dict]:
        directory = os.path.join(self.workdir, kind, str(step))
        verify_checksums(directory)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
        )
        # With its checksums verified, a checkpoint that does not restore was saved by another
        # model (or another version): an error to report, not damage to pass over.
        out = self._manager(kind).restore(step, args=args)
        if not is_finite(out["state"]):
            raise CheckpointDamaged(f"{directory} holds non-finite values")
        return out["state"], dict(out["extra"])

    def _set_aside(self, kind: str, step: int) -> None:
        directory = os.path.join(self.workdir, kind, str(step))
        os.replace(directory, f"{directory}.damaged")
        self._manager(kind).reload()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores the checkpoint at ``step``, or the newest intact one, into the structure,
        shapes and shardings of ``abstract_state``; returns ``(state, extra)``.

        Without ``step``, damaged checkpoints are passed over (newest first) with a warning; a
        writable instance moves them aside. With ``step``, a damaged checkpoint is an error.
        """
        found = [(s, PREEMPTION) for s in self._steps(PREEMPTION)]
        found += [(s, SNAPSHOTS) for s in self._steps(SNAPSHOTS)]
        if step is not None:
            chosen = [(s, kind) for s, kind in found if s == step][:1]
            if not chosen:
                raise FileNotFoundError(
                    f"no checkpoint at step {step} in {self.workdir!r}; snapshots: "
                    f"{self._steps(SNAPSHOTS)}, pre-emption: {self._steps(PREEMPTION)}"
                )
            return self._restore_one(chosen[0][1], step, abstract_state)
        if not found:
            raise FileNotFoundError(f"no checkpoint in {self.workdir!r}")
        damaged = []
        for s, kind in sorted(found, key=lambda sk: (-sk[0], sk[1] != PREEMPTION)):
            try:
                state, extra = self._restore_one(kind, s, abstract_state)
            except CheckpointDamaged as e:
                damaged.append(str(e))
                logging.warning("checkpoint of step %d is damaged (%s); trying an older one", s, e)
                if self.writable and jax.process_count() == 1:
                    self._set_aside(kind, s)
                continue
            if damaged:
                logging.warning("resumed from step %d, the newest intact checkpoint", s)
            return state, extra
        raise CheckpointDamaged(
            f"every checkpoint in {self.workdir} is damaged: " + "; ".join(damaged)
        )

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()


def abstract_state(exp: Experiment, model: nn.Module, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state of ``exp``, without allocating."""
    optimizer = exp.optim.build()
    shapes = jax.eval_shape(
        lambda k: init_state(k, model, optimizer, exp.image_shape), jax.random.key(0)
    )
    return replicated_like(shapes, mesh)


def replicated_like(shapes: Any, mesh: Mesh) -> Any:
    """``shapes`` (a pytree of ``jax.ShapeDtypeStruct``) replicated over ``mesh``: the target that
    restores a checkpoint onto every device of every process."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_ema(
    exp: Experiment, workdir: str, mesh: Mesh, step: int | None = None
) -> tuple[nn.Module, Any, int]:
    """The network of ``exp`` and the EMA weights of ``workdir``'s newest (or ``step``'s)
    checkpoint, after checking that the workdir holds a run of that network.

    Returns:
        ``(model, ema_params, step)``.
    """
    check_signature(workdir, exp.signature())
    model = exp.build_model()
    ckpts = Checkpoints(workdir, writable=False)
    try:
        if ckpts.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}: train first (--mode=train)")
        state, extra = ckpts.restore(abstract_state(exp, model, mesh), step)
    finally:
        ckpts.close()
    return model, state.ema_params, int(extra["step"])
