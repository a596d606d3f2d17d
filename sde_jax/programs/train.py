"""``--mode=train``: trains a run to ``config.training.n_iters`` steps, resuming where it stopped.

Snapshots, pre-emption checkpoints (and one on SIGTERM), TensorBoard scalars and PNG sample grids
go to the workdir (:mod:`sde_jax.programs.checkpoint`); the step itself is
:func:`sde_jax.training.make_train_step`.
"""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from sde_jax import data as data_lib
from sde_jax.programs.checkpoint import Checkpoints, abstract_state
from sde_jax.programs.distributed import any_process
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.images import save_grid
from sde_jax.programs.sampler import experiment_sample_fn, generate
from sde_jax.programs.summary import Progress, SummaryWriter
from sde_jax.programs.workdir import check_signature
from sde_jax.sharding import check_batch_size, global_batch, make_mesh, replicated
from sde_jax.training import TrainState, init_state, make_eval_step, make_loss, make_train_step


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class _LossCheck:
    """The training losses since the last check, kept on the devices until :meth:`check` (before
    every log line and every save), which raises at the first non-finite loss, naming its step
    and the checkpoint that is kept."""

    def __init__(self, ckpts: Checkpoints):
        self.pending: list[tuple[int, jax.Array]] = []
        self.ckpts = ckpts

    def add(self, first_step: int, losses: jax.Array) -> None:
        self.pending.append((first_step, losses))

    def check(self) -> None:
        for first_step, losses in self.pending:
            values = np.asarray(losses)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                at = first_step + int(bad[0]) + 1
                raise FloatingPointError(
                    f"training loss is {values[bad[0]]} at step {at}; nothing was saved after it, "
                    f"the newest checkpoint in {self.ckpts.workdir} (step "
                    f"{self.ckpts.latest_step()}) is kept: lower config.optim.lr or raise "
                    "config.optim.warmup, and train again from there"
                )
        self.pending.clear()


def run_train_mode(exp: Experiment, workdir: str) -> TrainState:
    """``--mode=train``: trains (resuming from the newest checkpoint in ``workdir``) to
    ``config.training.n_iters`` steps, with snapshots, pre-emption checkpoints, TensorBoard scalars
    and PNG sample grids. Returns the final state."""
    cfg = exp.training
    mesh = make_mesh()
    check_batch_size(cfg.batch_size, mesh, "config.training.batch_size")
    # Everything that can be wrong with the config or the workdir fails here, before any work.
    check_signature(workdir, exp.signature())
    sde = exp.sde.build()
    model = exp.build_model()
    scaler = data_lib.data_scaler(exp.data)
    train_iter = data_lib.make_dataset(exp.data, "train", shuffle=True, repeat=True, seed=exp.seed)
    eval_iter = data_lib.make_dataset(
        exp.data, "eval", shuffle=True, repeat=True, seed=exp.seed + 1
    )

    optimizer = exp.optim.build()
    key = jax.random.key(exp.seed)
    init_key, train_key, eval_key, sample_key = jax.random.split(key, 4)
    # run.json is written with the first checkpoint: a command that fails first leaves none.
    ckpts = Checkpoints(workdir, signature=exp.signature())
    target = abstract_state(exp, model, mesh)
    if ckpts.latest_step() is not None:
        state, extra = ckpts.restore(target)
        if extra.get("data") is not None:  # None: converted weights, no data stream yet.
            train_iter.set_state(extra["data"])
        print(f"resumed from step {int(extra['step'])} in {workdir}")
    else:
        init = jax.jit(
            lambda k: init_state(k, model, optimizer, exp.image_shape),
            out_shardings=replicated(mesh),
        )
        state = init(init_key)

    num_classes = exp.model.fields.get("num_classes")
    if num_classes:
        info = data_lib.dataset_info(exp.data)
        if info.num_classes != num_classes:
            raise ValueError(
                f"config.model.num_classes ({num_classes}) must equal the number of classes of "
                f"data set {exp.data.dataset!r} ({info.num_classes}; 0: it has no labels)"
            )
    loss_fn = make_loss(
        sde,
        model,
        **cfg.loss_options(),
        train=True,
        num_classes=num_classes or None,
        label_dropout=cfg.label_dropout,
    )
    train_step = make_train_step(loss_fn, optimizer, exp.model.ema_rate, mesh)
    eval_step = make_eval_step(make_loss(sde, model, **cfg.loss_options(), train=False), mesh)
    sample_fn = experiment_sample_fn(exp, model, mesh) if cfg.snapshot_sampling else None

    is_main = jax.process_index() == 0
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=is_main)
    step = int(state.step)
    progress = Progress(cfg.n_iters, start=step)
    preemption = _Preemption()
    n = cfg.n_jitted_steps
    losses_since_check = _LossCheck(ckpts)
    try:
        while step < cfg.n_iters:
            examples = [next(train_iter) for _ in range(n)]
            local = np.stack([scaler(e["image"]) for e in examples])
            batches = global_batch(local, mesh, PartitionSpec(None, "data"))
            if num_classes:
                labels = np.stack([e["label"] for e in examples]).astype(np.int32)
                batches = (batches, global_batch(labels, mesh, PartitionSpec(None, "data")))
            state, losses = train_step(state, batches, train_key)
            losses_since_check.add(step, losses)
            step += n
            if step % cfg.log_freq == 0:
                losses_since_check.check()
                loss = float(jnp.mean(losses))
                writer.scalars(step, {"train/loss": loss})
                progress.update(step, f"loss {loss:.4f}")
            if step % cfg.eval_freq == 0:
                batch = global_batch(scaler(next(eval_iter)["image"]), mesh, PartitionSpec("data"))
                eval_loss = float(
                    eval_step(state.ema_params, batch, jax.random.fold_in(eval_key, step))
                )
                writer.scalars(step, {"eval/loss": eval_loss})
            extra = {"data": train_iter.get_state()}  # A small JSON dict.
            saving = step % cfg.snapshot_freq == 0 or step == cfg.n_iters
            stop = any_process(preemption.requested)
            if saving or step % cfg.snapshot_freq_for_preemption == 0 or stop:
                losses_since_check.check()  # A NaN is reported at its step, before any save.
            if saving:
                ckpts.save(step, state, extra, snapshot=True)
                if sample_fn is not None:
                    images, _ = generate(
                        exp,
                        sample_fn,
                        state.ema_params,
                        jax.random.fold_in(sample_key, step),
                        cfg.n_snapshot_samples,
                    )
                    if is_main:
                        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
                        save_grid(os.path.join(workdir, "samples", f"step_{step}.png"), images)
            elif step % cfg.snapshot_freq_for_preemption == 0 or stop:
                ckpts.save(step, state, extra, snapshot=False)
            if stop:
                print(f"SIGTERM: saved step {step}; exiting", flush=True)
                break
    finally:
        preemption.restore()
        ckpts.close()
        writer.close()
    progress.update(step, "done", force=True)
    return state
