r"""``--mode=train_classifier``: the noise-conditional classifier for class-conditional sampling.

The config is the score model's config (so the SDE and the data are the same by construction) plus
a ``classifier`` section (:class:`ClassifierConfig`). Each step draws a labelled batch,
:math:`t \sim U[\epsilon, T]` and :math:`x_t = m(t)\,x_0 + s(t)\,z` from the SDE's perturbation
kernel, and minimizes the cross-entropy of :math:`p_t(y \mid x_t)`. The workdir holds Orbax
checkpoints (:mod:`sde_jax.programs.checkpoint`) and ``classifier.json``, which records the network and the
SDE so that :func:`load_classifier` can rebuild it for sampling and refuse a different SDE.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from sde_jax import data as data_lib
from sde_jax.models.classifier import (
    NoiseConditionalWRN,
    classifier_inputs,
    make_classifier_log_prob,
)
from sde_jax.programs.checkpoint import Checkpoints, replicated_like
from sde_jax.programs.config import OptimConfig, as_dict, from_section
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.summary import Progress
from sde_jax.programs.workdir import write_json
from sde_jax.sde import batch_broadcast
from sde_jax.sharding import (
    batch_sharded,
    check_batch_size,
    global_batch,
    make_mesh,
    replicated,
)
from sde_jax.training import TrainState

RECORD = "classifier.json"
MODEL_FIELDS = (
    "width",
    "widen_factor",
    "blocks_per_stage",
    "num_stages",
    "embedding_size",
    "fourier_scale",
    "dropout",
    "nonlinearity",
)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """``config.classifier``: the network (:class:`NoiseConditionalWRN` fields) and its training."""

    width: int = 16
    widen_factor: int = 2
    blocks_per_stage: int = 1
    num_stages: int = 3
    embedding_size: int = 64
    fourier_scale: float = 16.0
    dropout: float = 0.0
    nonlinearity: str = "swish"
    n_iters: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    eps: float = 1e-5
    log_freq: int = 100
    snapshot_freq: int = 500
    eval_batches: int = 3

    def __post_init__(self):
        for f in ("n_iters", "batch_size", "log_freq", "snapshot_freq", "eval_batches"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(f"config.classifier.{f} must be a positive int")
        if not self.lr > 0:
            raise ValueError(f"config.classifier.lr must be > 0; got {self.lr}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"config.classifier.eps must lie in (0, T); got {self.eps}")

    def model_fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in MODEL_FIELDS}


def split_config(config: Any) -> tuple[Experiment, ClassifierConfig]:
    """The score model's experiment and the classifier section of a classifier config."""
    values = as_dict(config)
    if "classifier" not in values:
        raise ValueError(
            "--mode=train_classifier needs a config with a `classifier` section, e.g. "
            "configs/digits_classifier.py"
        )
    cls_cfg = from_section(ClassifierConfig, values.pop("classifier"), "classifier")
    return Experiment.from_config(values), cls_cfg


def _record(exp: Experiment, cfg: ClassifierConfig, num_classes: int) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                "sde": dataclasses.asdict(exp.sde),
                "image_shape": list(exp.image_shape),
                "centered": exp.data.centered,
                "num_classes": num_classes,
                "model_fields": cfg.model_fields(),
                "weight_decay": cfg.weight_decay,
            }
        )
    )


def run_train_classifier_mode(config: Any, workdir: str) -> dict[str, float]:
    """``--mode=train_classifier``: trains (or resumes) the classifier of ``config`` in
    ``workdir``; returns the held-out accuracy at a few noise levels, also written to
    ``<workdir>/eval.json``."""
    exp, cfg = split_config(config)
    mesh = make_mesh()
    check_batch_size(cfg.batch_size, mesh, "config.classifier.batch_size")
    info = data_lib.dataset_info(exp.data)
    if info.num_classes < 2:
        raise ValueError(
            f"--mode=train_classifier needs a labelled data set; {exp.data.dataset!r} has "
            f"{info.num_classes} classes"
        )
    record = _record(exp, cfg, info.num_classes)
    path = os.path.join(workdir, RECORD)
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != record:
                raise ValueError(
                    f"workdir {workdir!r} holds a different classifier or SDE; use a new --workdir"
                )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json(path, record, sort_keys=True)

    sde = exp.sde.build()
    m_s = sde.marginal_coefs
    model = NoiseConditionalWRN(info.num_classes, **cfg.model_fields())
    log_prob = make_classifier_log_prob(sde, model)
    scaler = data_lib.data_scaler(exp.data)
    optimizer = OptimConfig(lr=cfg.lr, warmup=cfg.warmup, weight_decay=cfg.weight_decay).build()
    key = jax.random.key(exp.seed + 7)
    init_key, train_key, eval_key = jax.random.split(key, 3)

    def init(k):
        shape = (1, *record["image_shape"])
        params = model.init(k, jnp.zeros(shape), jnp.ones((1,)))["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, params, optimizer.init(params))

    def perturb(k, images, n):
        k_t, k_z = jax.random.split(k)
        t = jax.random.uniform(k_t, (n,), minval=cfg.eps, maxval=sde.T)
        m, s = sde.marginal_coefs(t)
        z = jax.random.normal(k_z, images.shape)
        return batch_broadcast(m, images) * images + batch_broadcast(s, images) * z, t

    rep, rows = replicated(mesh), batch_sharded(mesh)

    # Over the global batch, split across every device of every process: the noise is drawn at
    # the global batch's shape, so any device count trains the same classifier.
    @partial(
        jax.jit,
        in_shardings=(rep, rows, rows, rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )
    def step_fn(state, images, labels, key):
        k = jax.random.fold_in(key, state.step)
        k_p, k_d = jax.random.split(k)
        x_t, t = perturb(k_p, images, images.shape[0])

        def loss_fn(params):
            return -jnp.mean(log_prob(params, x_t, t, labels, train=True, key=k_d))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, params, opt_state), loss

    ckpts = Checkpoints(workdir)
    target = replicated_like(jax.eval_shape(init, init_key), mesh)
    if ckpts.latest_step() is not None:
        state, _ = ckpts.restore(target)
        if jax.process_index() == 0:
            print(f"resumed from step {int(state.step)} in {workdir}")
    else:
        state = jax.jit(init, out_shardings=rep)(init_key)
    train_iter = data_lib.make_dataset(
        exp.data, "train", shuffle=True, repeat=True, seed=exp.seed, batch_size=cfg.batch_size
    )
    step = int(state.step)
    progress = Progress(cfg.n_iters, start=step)
    try:
        while step < cfg.n_iters:
            batch = next(train_iter)
            images, labels = _global(scaler(batch["image"]), batch["label"], mesh)
            state, loss = step_fn(state, images, labels, train_key)
            step += 1
            if step % cfg.log_freq == 0:
                loss = float(loss)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"classifier loss is {loss} at step {step}")
                progress.update(step, f"cross-entropy {loss:.4f}")
            if step % cfg.snapshot_freq == 0 or step == cfg.n_iters:
                ckpts.save(step, state, {}, snapshot=True)
    finally:
        ckpts.close()
        train_iter.close()

    # Held-out accuracy at fixed noise levels, for the record.
    eval_iter = data_lib.make_dataset(
        exp.data, "eval", shuffle=True, repeat=True, seed=exp.seed, batch_size=cfg.batch_size
    )

    @partial(jax.jit, in_shardings=(rep, rows, rows, rep, rep), out_shardings=rep)
    def accuracy_at(params, images, labels, t_value, key):
        t = jnp.full((images.shape[0],), t_value)
        x_t = batch_broadcast(m_s(t)[0], images) * images + batch_broadcast(m_s(t)[1], images) * (
            jax.random.normal(key, images.shape)
        )
        inputs, sigma = classifier_inputs(sde, x_t, t)
        logits = model.apply({"params": params}, inputs, sigma)
        return jnp.mean(jnp.argmax(logits, axis=-1) == labels)

    results: dict[str, float] = {}
    batches = [next(eval_iter) for _ in range(cfg.eval_batches)]
    eval_iter.close()
    for t_value in (0.01, 0.25, 0.5, 0.75):
        accs = []
        for i, batch in enumerate(batches):
            images, labels = _global(scaler(batch["image"]), batch["label"], mesh)
            key = jax.random.fold_in(eval_key, i)
            accs.append(float(accuracy_at(state.params, images, labels, t_value, key)))
        results[f"accuracy_t{t_value:g}"] = float(np.mean(accs))
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "eval.json"), results)
    progress.update(step, "done " + " ".join(f"{k} {v:.3f}" for k, v in results.items()), True)
    return results


def _global(images: np.ndarray, labels: np.ndarray, mesh) -> tuple[jax.Array, jax.Array]:
    """This process's rows of a labelled batch as the global arrays."""
    spec = PartitionSpec("data")
    return global_batch(np.asarray(images), mesh, spec), global_batch(
        np.asarray(labels), mesh, spec
    )


def load_classifier(workdir: str, exp: Experiment):
    """The trained classifier of ``workdir`` for the score model of ``exp``.

    Returns:
        ``(log_prob_fn(x, t, labels) -> [B], num_classes)``.

    Raises:
        FileNotFoundError: if ``workdir`` holds no trained classifier.
        ValueError: if it was trained for another SDE or image shape.
    """
    path = os.path.join(workdir, RECORD)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config.sampling.classifier_workdir {workdir!r} holds no classifier ({RECORD}); "
            "train one with --mode=train_classifier"
        )
    with open(path) as f:
        record = json.load(f)
    want = json.loads(json.dumps(dataclasses.asdict(exp.sde)))
    shape = list(exp.image_shape)
    if record["sde"] != want or record["image_shape"] != shape:
        raise ValueError(
            f"the classifier in {workdir!r} was trained for SDE {record['sde']} and images "
            f"{record['image_shape']}; this model has {want} and {shape}"
        )
    model = NoiseConditionalWRN(record["num_classes"], **record["model_fields"])
    log_prob = make_classifier_log_prob(exp.sde.build(), model)
    # The optimizer state's structure (Adam or AdamW) is part of the checkpoint.
    optimizer = OptimConfig(weight_decay=record["weight_decay"]).build()

    def init(k):
        params = model.init(k, jnp.zeros((1, *shape)), jnp.ones((1,)))["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, params, optimizer.init(params))

    ckpts = Checkpoints(workdir, writable=False)
    if ckpts.latest_step() is None:
        raise FileNotFoundError(f"no classifier checkpoint in {workdir!r}")
    state, _ = ckpts.restore(replicated_like(jax.eval_shape(init, jax.random.key(0)), make_mesh()))
    ckpts.close()
    params = state.params
    return (lambda x, t, labels: log_prob(params, x, t, labels)), record["num_classes"]
