r"""Training: the train state, the optimizer, and one jitted, data-parallel train step.

The train step is compiled once with the state donated. It runs ``n_jitted_steps`` optimizer steps in
one :func:`jax.lax.scan` over a stacked batch ``[n_jitted_steps, B, H, W, C]``, so the host feeds the
devices once per ``n_jitted_steps`` steps.

Data parallelism uses :mod:`jax.sharding`: the batch is split along its batch axis over a 1-D mesh of
every device of every process, the state is replicated, and XLA inserts the gradient all-reduce.
Randomness is ``fold_in(key, step)`` on one global key, and random arrays are drawn at their global
shape (JAX's partitionable threefry), so a run computes the same losses and parameters, up to
floating-point summation order, on any number of devices.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sde_jax.config import OptimConfig, TrainConfig
from sde_jax.losses import make_loss_fn
from sde_jax.models import make_score_fn
from sde_jax.sde import SDE

Array = jax.Array


@struct.dataclass
class TrainState:
    """Everything a checkpoint holds about the model: no PRNG keys (they derive from the step).

    Attributes:
        step: number of optimizer steps taken, int32 scalar.
        params: network parameters.
        ema_params: exponential moving average of ``params`` (used for sampling and evaluation).
        opt_state: optimizer state.
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    r"""Adam with the paper's linear warm-up :math:`\eta_k = \eta\min(k / \text{warmup}, 1)` and
    global-norm gradient clipping."""

    def schedule(count):
        if cfg.warmup == 0:
            return cfg.lr
        return cfg.lr * jnp.minimum(count / cfg.warmup, 1.0)

    if cfg.optimizer == "AdamW" or cfg.weight_decay > 0:
        opt = optax.adamw(schedule, cfg.beta1, cfg.beta2, cfg.eps, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule, cfg.beta1, cfg.beta2, cfg.eps)
    if cfg.grad_clip >= 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt


def init_state(
    key: Array, model: nn.Module, optimizer: optax.GradientTransformation, image_shape
) -> TrainState:
    """A fresh state for images of shape ``image_shape`` = ``(H, W, C)``."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    params = model.init({"params": key}, x, jnp.zeros((1,), jnp.float32), train=False)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=optimizer.init(params),
    )


def make_mesh() -> Mesh:
    """A 1-D mesh ``('data',)`` over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def make_loss(
    sde: SDE,
    model: nn.Module,
    cfg: TrainConfig,
    *,
    train: bool = True,
    per_example: bool = False,
    num_classes: int | None = None,
):
    """The DSM loss of ``cfg`` as ``loss_fn(params, key, batch)`` for a Flax network.

    Without ``num_classes`` the batch is the images ``[B, H, W, C]`` (a class-conditional network
    then sees its "no label" token). With ``num_classes`` it is ``(images, labels [B])`` and each
    label is replaced by the "no label" token (``num_classes``) with probability
    ``cfg.label_dropout``, which trains the conditional and the unconditional score of
    classifier-free guidance in one network.
    """
    score = make_score_fn(sde, model, continuous=cfg.continuous)
    if num_classes is not None:
        inner = make_loss(sde, model, cfg, train=train, per_example=per_example)

        def conditional_loss(params, key, batch):
            images, labels = batch
            k_drop, k_loss = jax.random.split(key)
            drop = jax.random.bernoulli(k_drop, cfg.label_dropout, labels.shape)
            labels = jnp.where(drop, num_classes, labels)
            return inner(params, k_loss, images, class_labels=labels)

        return conditional_loss

    def score_fn(params, x, t, *, train, key, class_labels=None):
        return score({"params": params}, x, t, train=train, key=key, class_labels=class_labels)

    def objective(class_labels):
        return make_loss_fn(
            sde,
            functools.partial(score_fn, class_labels=class_labels),
            continuous=cfg.continuous,
            reduce_mean=cfg.reduce_mean,
            likelihood_weighting=cfg.likelihood_weighting,
            importance_weighting=cfg.importance_weighting,
            eps=cfg.eps,
            train=train,
            per_example=per_example,
        )

    objective(None)  # Rejects invalid settings now rather than at the first step.

    def loss_fn(params, key, batch, class_labels=None):
        # Built per call (at trace time) around this batch's labels.
        return objective(class_labels)(params, key, batch)

    return loss_fn


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    mesh: Mesh,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, Array]]:
    """The jitted ``train_step(state, batches, key) -> (state, losses)``.

    Args:
        loss_fn: ``loss_fn(params, key, batch) -> scalar``.
        optimizer: the optax transformation the state was made with.
        ema_rate: decay of the parameter EMA.
        mesh: the device mesh; ``batches`` ``[n, B, ...]`` is sharded over its ``'data'`` axis.

    Returns:
        A function that applies ``n`` optimizer steps, the ``i``-th on ``batches[i]`` with key
        ``fold_in(key, step)``, and returns the new (donated) state and the ``n`` losses.
    """

    def one_step(state: TrainState, batch: Array, key: Array):
        step_key = jax.random.fold_in(key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, step_key, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(
            lambda e, p: ema_rate * e + (1.0 - ema_rate) * p, state.ema_params, params
        )
        new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, loss

    def steps(state, batches, key):
        # `batches` is an array, or a tuple (images, labels), with a leading step axis.
        if jax.tree.leaves(batches)[0].shape[0] == 1:
            # No loop at all for one step: XLA:CPU runs convolution gradients inside loop bodies
            # tens of times slower (measured 38x, jax 0.10.2; jax-ml/jax#12868), so CPU configs
            # use n_jitted_steps = 1, while accelerators fuse several steps per call.
            state, loss = one_step(state, jax.tree.map(lambda b: b[0], batches), key)
            return state, loss[None]
        return jax.lax.scan(lambda s, b: one_step(s, b, key), state, batches)

    # Input shardings come from the arguments (the state is replicated by `init_state`'s jit or by
    # the checkpoint restore, batches by `global_batch`). Declaring them as well, together with
    # donation, made XLA:CPU pick layouts that slowed the step 30x (jax 0.10.2, measured).
    return jax.jit(
        steps,
        out_shardings=(_replicated(mesh), _replicated(mesh)),
        donate_argnums=(0,),
    )


def make_eval_step(loss_fn: Callable, mesh: Mesh) -> Callable[[Any, Array, Array], Array]:
    """The jitted ``eval_step(params, batch, key) -> loss`` for ``batch`` ``[B, ...]``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(
        lambda params, batch, key: loss_fn(params, key, batch),
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=replicated,
    )


def global_batch(local: np.ndarray, mesh: Mesh, spec: PartitionSpec) -> Array:
    """Assembles the global array from this process's part (its rows of the batch axis)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def check_batch_size(batch_size: int, num_devices: int, name: str = "training.batch_size") -> None:
    if batch_size % num_devices:
        raise ValueError(
            f"config.{name} ({batch_size}) must be divisible by the number of devices "
            f"({num_devices})"
        )


@functools.cache
def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, _replicated(mesh))


# ---------------------------------------------------------------------------------------------
# The training program.


def abstract_state(exp, model: nn.Module, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state of ``exp``, without allocating."""
    image_shape = (exp.data.image_size, exp.data.image_size, exp.data.num_channels)
    optimizer = make_optimizer(exp.optim)
    shapes = jax.eval_shape(
        lambda k: init_state(k, model, optimizer, image_shape), jax.random.key(0)
    )
    sharding = _replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


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


def train(exp, workdir: str) -> TrainState:
    """``--mode=train``: trains (resuming from the newest checkpoint in ``workdir``) to
    ``config.training.n_iters`` steps, with snapshots, pre-emption checkpoints, TensorBoard scalars
    and PNG sample grids. Returns the final state."""
    from sde_jax import data as data_lib
    from sde_jax.checkpoint import Checkpoints, check_signature
    from sde_jax.generate import generate, make_sample_fn, save_grid
    from sde_jax.summary import Progress, SummaryWriter

    cfg = exp.training
    mesh = make_mesh()
    check_batch_size(cfg.batch_size, mesh.size)
    if cfg.batch_size % jax.process_count():
        raise ValueError(
            f"config.training.batch_size ({cfg.batch_size}) must be divisible by the number of "
            f"processes ({jax.process_count()})"
        )
    # Everything that can be wrong with the config or the workdir fails here, before any work.
    check_signature(workdir, exp.signature())
    sde = exp.sde.build()
    model = exp.build_model()
    scaler = data_lib.data_scaler(exp.data)
    inverse_scaler = data_lib.inverse_scaler(exp.data)
    train_iter = data_lib.make_dataset(exp.data, "train", shuffle=True, repeat=True, seed=exp.seed)
    eval_iter = data_lib.make_dataset(
        exp.data, "eval", shuffle=True, repeat=True, seed=exp.seed + 1
    )

    optimizer = make_optimizer(exp.optim)
    key = jax.random.key(exp.seed)
    init_key, train_key, eval_key, sample_key = jax.random.split(key, 4)
    ckpts = Checkpoints(workdir)
    target = abstract_state(exp, model, mesh)
    if ckpts.latest_step() is not None:
        state, extra = ckpts.restore(target)
        if extra.get("data") is not None:  # None: converted weights, no data stream yet.
            train_iter.set_state(extra["data"])
        print(f"resumed from step {int(extra['step'])} in {workdir}")
    else:
        image_shape = (exp.data.image_size, exp.data.image_size, exp.data.num_channels)
        init = jax.jit(
            lambda k: init_state(k, model, optimizer, image_shape), out_shardings=_replicated(mesh)
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
    loss_fn = make_loss(sde, model, cfg, train=True, num_classes=num_classes or None)
    train_step = make_train_step(loss_fn, optimizer, exp.model.ema_rate, mesh)
    eval_step = make_eval_step(make_loss(sde, model, cfg, train=False), mesh)
    shape = (
        exp.sampling.batch_size,
        exp.data.image_size,
        exp.data.image_size,
        exp.data.num_channels,
    )
    sample_fn = None
    if cfg.snapshot_sampling:
        check_batch_size(exp.sampling.batch_size, mesh.size, "sampling.batch_size")
        sample_fn = make_sample_fn(exp.sampling, sde, model, shape, mesh, continuous=cfg.continuous)

    is_main = jax.process_index() == 0
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=is_main)
    step = int(state.step)
    progress = Progress(cfg.n_iters, start=step)
    preemption = _Preemption()
    n = cfg.n_jitted_steps
    try:
        while step < cfg.n_iters:
            examples = [next(train_iter) for _ in range(n)]
            local = np.stack([scaler(e["image"]) for e in examples])
            batches = global_batch(local, mesh, PartitionSpec(None, "data"))
            if num_classes:
                labels = np.stack([e["label"] for e in examples]).astype(np.int32)
                batches = (batches, global_batch(labels, mesh, PartitionSpec(None, "data")))
            state, losses = train_step(state, batches, train_key)
            step += n
            if step % cfg.log_freq == 0:
                loss = float(jnp.mean(losses))
                if not np.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss} at step {step}")
                writer.scalars(step, {"train/loss": loss})
                progress.update(step, f"loss {loss:.4f}")
            if step % cfg.eval_freq == 0:
                batch = global_batch(scaler(next(eval_iter)["image"]), mesh, PartitionSpec("data"))
                eval_loss = float(
                    eval_step(state.ema_params, batch, jax.random.fold_in(eval_key, step))
                )
                writer.scalars(step, {"eval/loss": eval_loss})
            extra = {"data": train_iter.get_state()}  # A small JSON dict.
            if step % cfg.snapshot_freq == 0 or step == cfg.n_iters:
                ckpts.save(step, state, extra, snapshot=True)
                if sample_fn is not None:
                    images, _ = generate(
                        exp,
                        sample_fn,
                        state.ema_params,
                        jax.random.fold_in(sample_key, step),
                        cfg.n_snapshot_samples,
                        inverse_scaler,
                    )
                    if is_main:
                        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
                        save_grid(os.path.join(workdir, "samples", f"step_{step}.png"), images)
            elif step % cfg.snapshot_freq_for_preemption == 0 or preemption.requested:
                ckpts.save(step, state, extra, snapshot=False)
            if preemption.requested:
                print(f"SIGTERM: saved step {step}; exiting", flush=True)
                break
    finally:
        preemption.restore()
        ckpts.close()
        writer.close()
    progress.update(step, "done", force=True)
    return state
