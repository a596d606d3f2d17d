"""Orbax checkpoints of a run's workdir, safe against pre-emption.

A workdir holds

- ``checkpoints/<step>/``: snapshots, written every ``snapshot_freq`` steps and kept;
- ``checkpoints-meta/<step>/``: pre-emption checkpoints, written often and on SIGTERM, only the
  latest kept;
- ``run.json``: the signature of the run (network, SDE, data shape), checked on every start so that
  a workdir is never resumed, or overwritten, by a different model.

Each checkpoint holds the train state and a small JSON record (the data iterator's position and the
step), so a resumed run continues the same data stream. Orbax writes a checkpoint to a temporary
directory and renames it when complete, so a process killed mid-write leaves the previous
checkpoint intact and the half-written one is ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from sde_jax.programs.experiment import Experiment
from sde_jax.sharding import replicated
from sde_jax.training import TrainState, init_state

SNAPSHOTS = "checkpoints"
PREEMPTION = "checkpoints-meta"
SIGNATURE = "run.json"


def _manager(directory: str, max_to_keep: int | None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def check_signature(workdir: str, signature: dict[str, Any], *, write: bool = True) -> None:
    """Raises ``ValueError`` if ``workdir`` belongs to a run with a different signature.

    Args:
        workdir: the run directory.
        signature: JSON-able description of what a checkpoint's contents depend on.
        write: record ``signature`` when the workdir has none yet (on process 0 only).
    """
    path = os.path.join(workdir, SIGNATURE)
    signature = json.loads(json.dumps(signature))  # Normalize tuples to lists.
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        if existing != signature:
            diffs = [
                f"{k}: workdir has {existing.get(k)!r}, config has {signature.get(k)!r}"
                for k in sorted(set(existing) | set(signature))
                if existing.get(k) != signature.get(k)
            ]
            raise ValueError(
                f"workdir {workdir!r} holds a run of a different model; refusing to resume or "
                "overwrite it. Use a new --workdir. Differences:\n  " + "\n  ".join(diffs)
            )
        return
    if write and jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(signature, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


class Checkpoints:
    """Snapshots and pre-emption checkpoints of one workdir.

    Args:
        workdir: the run directory.
        keep_snapshots: how many snapshots to keep (None: all).
    """

    def __init__(self, workdir: str, keep_snapshots: int | None = None):
        # Orbax requires absolute paths; --workdir=runs/x is relative.
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
        self.snapshots = _manager(os.path.join(workdir, SNAPSHOTS), keep_snapshots)
        self.preemption = _manager(os.path.join(workdir, PREEMPTION), 1)

    def latest_step(self) -> int | None:
        """The newest step saved in either kind of checkpoint, or None."""
        steps = [s for s in (self.snapshots.latest_step(), self.preemption.latest_step()) if s]
        return max(steps) if steps else None

    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots.all_steps())

    def save(self, step: int, state: Any, extra: dict, *, snapshot: bool) -> None:
        """Saves ``state`` and the JSON record ``extra`` at ``step`` (asynchronously)."""
        manager = self.snapshots if snapshot else self.preemption
        if step in manager.all_steps():
            return
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra, step=step))
        )
        manager.save(step, args=args)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores the checkpoint at ``step`` (default: the newest) into the structure, shapes and
        shardings of ``abstract_state``; returns ``(state, extra)``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir!r}")
        manager = self.preemption if step in self.preemption.all_steps() else self.snapshots
        if step not in manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.workdir!r}; snapshots: "
                f"{self.snapshot_steps()}, pre-emption: {self.preemption.all_steps()}"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
        )
        out = manager.restore(step, args=args)
        return out["state"], dict(out["extra"])

    def wait(self) -> None:
        """Blocks until every pending save is on disk."""
        self.snapshots.wait_until_finished()
        self.preemption.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.snapshots.close()
        self.preemption.close()


def abstract_state(exp: Experiment, model: nn.Module, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state of ``exp``, without allocating."""
    optimizer = exp.optim.build()
    shapes = jax.eval_shape(
        lambda k: init_state(k, model, optimizer, exp.image_shape), jax.random.key(0)
    )
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
    check_signature(workdir, exp.signature(), write=False)
    model = exp.build_model()
    ckpts = Checkpoints(workdir)
    try:
        if ckpts.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}: train first (--mode=train)")
        state, extra = ckpts.restore(abstract_state(exp, model, mesh), step)
    finally:
        ckpts.close()
    return model, state.ema_params, int(extra["step"])
