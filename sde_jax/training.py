r"""Training: the train state, the optimizer, the loss of a Flax network, and the jitted steps.

The train step is compiled once with the state donated. It runs ``n`` optimizer steps in one
:func:`jax.lax.scan` over a stacked batch ``[n, B, H, W, C]``, so the host feeds the devices once
per ``n`` steps.

Data parallelism uses :mod:`jax.sharding` (:mod:`sde_jax.sharding`): the batch is split along its
batch axis over a 1-D mesh of every device of every process, the state is replicated, and XLA
inserts the gradient all-reduce. Randomness is ``fold_in(key, step)`` on one global key, and random
arrays are drawn at their global shape (JAX's partitionable threefry), so a run computes the same
losses and parameters, up to floating-point summation order, on any number of devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from sde_jax.losses import make_loss_fn
from sde_jax.models import make_score_fn
from sde_jax.sde import SDE
from sde_jax.sharding import batch_sharded, replicated

Array = jax.Array

OPTIMIZERS = ("Adam", "AdamW")


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


def make_optimizer(
    *,
    lr: float,
    warmup: int = 0,
    optimizer: str = "Adam",
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip: float = -1.0,
) -> optax.GradientTransformation:
    r"""Adam (AdamW when ``optimizer="AdamW"`` or ``weight_decay > 0``) with the paper's linear
    warm-up :math:`\eta_k = \eta\min(k / \text{warmup}, 1)` and, for ``grad_clip >= 0``,
    global-norm gradient clipping."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}; got {optimizer!r}.")

    def schedule(count):
        if warmup == 0:
            return lr
        return lr * jnp.minimum(count / warmup, 1.0)

    if optimizer == "AdamW" or weight_decay > 0:
        opt = optax.adamw(schedule, beta1, beta2, eps, weight_decay=weight_decay)
    else:
        opt = optax.adam(schedule, beta1, beta2, eps)
    if grad_clip >= 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), opt)
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


def make_loss(
    sde: SDE,
    model: nn.Module,
    *,
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    importance_weighting: bool = False,
    eps: float = 1e-5,
    train: bool = True,
    per_example: bool = False,
    num_classes: int | None = None,
    label_dropout: float = 0.0,
):
    """The DSM loss of :func:`sde_jax.losses.make_loss_fn` as ``loss_fn(params, key, batch)`` for a
    Flax network (the options are those of ``make_loss_fn``).

    Without ``num_classes`` the batch is the images ``[B, H, W, C]`` (a class-conditional network
    then sees its "no label" token). With ``num_classes`` it is ``(images, labels [B])`` and each
    label is replaced by the "no label" token (``num_classes``) with probability
    ``label_dropout``, which trains the conditional and the unconditional score of
    classifier-free guidance in one network.
    """
    options = dict(
        continuous=continuous,
        reduce_mean=reduce_mean,
        likelihood_weighting=likelihood_weighting,
        importance_weighting=importance_weighting,
        eps=eps,
        train=train,
        per_example=per_example,
    )
    score = make_score_fn(sde, model, continuous=continuous)
    if num_classes is not None:
        inner = make_loss(sde, model, **options)

        def conditional_loss(params, key, batch):
            images, labels = batch
            k_drop, k_loss = jax.random.split(key)
            drop = jax.random.bernoulli(k_drop, label_dropout, labels.shape)
            labels = jnp.where(drop, num_classes, labels)
            return inner(params, k_loss, images, class_labels=labels)

        return conditional_loss

    def score_fn(params, x, t, *, train, key, class_labels=None):
        return score({"params": params}, x, t, train=train, key=key, class_labels=class_labels)

    def objective(class_labels):
        return make_loss_fn(sde, functools.partial(score_fn, class_labels=class_labels), **options)

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
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def make_eval_step(loss_fn: Callable, mesh: Mesh) -> Callable[[Any, Array, Array], Array]:
    """The jitted ``eval_step(params, batch, key) -> loss`` for ``batch`` ``[B, ...]``."""
    return jax.jit(
        lambda params, batch, key: loss_fn(params, key, batch),
        in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
        out_shardings=replicated(mesh),
    )
