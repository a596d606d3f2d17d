r"""``--mode=eval``: test-set loss and bits/dim of a run's snapshots, resumable after pre-emption.

For every snapshot step in ``[config.eval.begin_step, config.eval.end_step]`` this computes, with
the EMA weights,

- the denoising score-matching loss of the training objective over the whole test split;
- bits/dim of the test split (or its first ``bpd_max_examples`` images) under the probability-flow
  ODE as data of the data set's ``L`` levels (``data.num_levels``: 17 for the digits, 256 for 8-bit
  images), averaged over ``num_repeats`` passes, each with fresh uniform dequantization
  :math:`(k + U[0, 1)) / L` of level :math:`k` and fresh trace probes; with its standard error over
  the images, and beside it the bits/dim of an independent per-pixel histogram and of a
  full-covariance Gaussian fitted to the training split and scored on the same images at the same
  level count (:mod:`sde_jax.programs.baselines`), with the standard error of the model's
  difference from each, image by image;
- with ``enable_sampling``, FID, Inception Score and KID of ``num_samples`` samples, generated in
  rounds that are saved as they finish (:mod:`sde_jax.programs.quality`).

Progress is written after every batch to ``<workdir>/eval/step_<step>.json``, so a killed evaluation
continues from the batch it stopped at; finished steps are skipped. The results of all steps are
collected in ``<workdir>/eval/report.json`` and as TensorBoard scalars in ``<workdir>/eval``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, PartitionSpec

from sde_jax import data as data_lib
from sde_jax.likelihood import bits_per_dim, log_likelihood
from sde_jax.models import make_score_fn
from sde_jax.programs.baselines import MODELS as BASELINES
from sde_jax.programs.baselines import cache_path, likelihood_baselines
from sde_jax.programs.checkpoint import Checkpoints, abstract_state
from sde_jax.programs.distributed import gather
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.quality import SampleEvaluator
from sde_jax.programs.summary import SummaryWriter
from sde_jax.programs.workdir import check_signature, write_json
from sde_jax.sharding import (
    batch_sharded,
    check_batch_size,
    global_batch,
    make_mesh,
    replicated,
)
from sde_jax.training import make_eval_step, make_loss

Array = jax.Array


def _atomic_json(path: str, obj: Any) -> None:
    if jax.process_index() != 0:
        return
    write_json(path, obj)


def _eval_batches(exp: Experiment) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over the evaluation split in [0, 1]: ``(images [B_local, ...], mask [B])``, the last
    batch padded, ``mask`` (over the global batch) true for real examples."""
    it = data_lib.make_dataset(
        exp.data,
        exp.eval.bpd_dataset,
        shuffle=False,
        repeat=False,
        batch_size=exp.eval.batch_size,
        drop_remainder=False,
        uniform_dequantization=False,
    )
    for batch in it:
        images = np.asarray(batch["image"], np.float32)
        mask = np.asarray(batch.get("mask", np.ones(images.shape[0], bool)))
        yield images, gather(mask)


def make_bpd_fn(exp: Experiment, model, mesh: Mesh) -> Callable:
    """Jitted ``bpd_fn(params, u01, key) -> (bpd [B], nfe)`` for dequantized data ``u01`` in [0, 1]."""
    sde = exp.sde.build()
    score = make_score_fn(sde, model, continuous=exp.training.continuous)
    data_range = (-1.0, 1.0) if exp.data.centered else (0.0, 1.0)
    levels = exp.data.num_levels
    cfg = exp.eval

    def bpd_fn(params, u01, key):
        x = 2.0 * u01 - 1.0 if exp.data.centered else u01
        score_fn = lambda y, t: score({"params": params}, y, t)
        logp, _, nfe = log_likelihood(
            key, score_fn, sde, x, trace=cfg.trace, rtol=cfg.rtol, atol=cfg.atol
        )
        return bits_per_dim(logp, x.shape[1:], data_range=data_range, num_bins=levels), nfe

    rep, batch = replicated(mesh), batch_sharded(mesh)
    return jax.jit(bpd_fn, in_shardings=(rep, batch, rep), out_shardings=(batch, rep))


def _loss_settings(exp: Experiment) -> dict[str, Any]:
    cfg = exp.eval
    return dict(
        batch_size=cfg.batch_size, dataset=cfg.bpd_dataset, seed=exp.seed,
        **exp.training.loss_options(),
    )  # fmt: skip


def _bpd_settings(exp: Experiment) -> dict[str, Any]:
    cfg = exp.eval
    return dict(
        batch_size=cfg.batch_size, dataset=cfg.bpd_dataset, max_examples=cfg.bpd_max_examples,
        trace=cfg.trace, rtol=cfg.rtol, atol=cfg.atol, seed=exp.seed, levels=exp.data.num_levels,
    )  # fmt: skip


def _part(progress: dict, name: str, settings: dict[str, Any], path: str) -> dict:
    """``progress[name]``, or a fresh part when it was computed with other settings: saved
    batches are only ever continued by the settings that made them."""
    settings = json.loads(json.dumps(settings))
    part = progress.get(name) or {}
    if part and part.get("settings") != settings:
        logging.warning(
            "%s: the saved %s results were made with other settings (%s; now %s): computing "
            "them again",
            path, name, part.get("settings"), settings,
        )  # fmt: skip
        part = {}
    part["settings"] = settings
    progress[name] = part
    return part


def _bpd_summary(exp: Experiment, repeats: dict[str, list]) -> dict[str, Any]:
    """The model's bits/dim (mean over repeats, standard error over images) beside the baselines'
    on the same images, with the standard error of the paired per-image differences."""
    per_image = np.stack(
        [np.concatenate(repeats[str(r)]) for r in range(exp.eval.num_repeats)]
    )  # [repeats, images]
    model = per_image.mean(axis=0)
    n = len(model)

    def stderr(v):
        return float(np.std(v, ddof=1) / np.sqrt(n)) if n > 1 else 0.0

    out = {
        "bpd_mean": float(model.mean()),
        "bpd_stderr": stderr(model),
        "bpd_per_repeat": [float(v) for v in per_image.mean(axis=1)],
        "bpd_levels": exp.data.num_levels,
        "bpd_trained_dequantized": exp.data.uniform_dequantization,
        "bpd_baselines": {},
    }
    found = likelihood_baselines(exp)
    for name in BASELINES:
        theirs = np.asarray(found[name]["per_image"])
        if len(theirs) != n:
            raise RuntimeError(
                f"the {name} baseline scored {len(theirs)} images, the model {n}: remove "
                f"{cache_path(exp)} and evaluate again"
            )
        out["bpd_baselines"][name] = {
            "bpd": found[name]["bpd"],
            "stderr": found[name]["stderr"],
            "model_minus_baseline": float(np.mean(model - theirs)),
            "difference_stderr": stderr(model - theirs),
        }
    return out


def evaluate_step(
    exp: Experiment, workdir: str, step: int, params: Any, mesh: Mesh, sample_eval=None
) -> dict:
    """Evaluates one snapshot, resuming from ``<workdir>/eval/step_<step>.json``; with
    ``config.eval.enable_sampling``, ``sample_eval`` (a :class:`sde_jax.programs.quality.
    SampleEvaluator`) adds FID, IS and KID.

    Each part's saved batches are keyed by every setting that changes them (batch size, split,
    example limit, trace estimator, tolerances, seed, loss options); a rerun with other settings
    computes that part again. Bits/dim repeats are independent, so a larger ``num_repeats`` adds
    repeats and a smaller one averages the first ones.
    """
    cfg = exp.eval
    path = os.path.join(workdir, "eval", f"step_{step}.json")
    progress: dict[str, Any] = {"step": step}
    if os.path.exists(path):
        with open(path) as f:
            progress = json.load(f)
    before = json.dumps(progress, sort_keys=True)
    sde = exp.sde.build()
    model = exp.build_model()
    key = jax.random.fold_in(jax.random.key(exp.seed), step)
    spec = PartitionSpec("data")

    if cfg.enable_loss:
        part = _part(progress, "loss", _loss_settings(exp), path)
    if cfg.enable_loss and "mean" not in part:
        loss_fn = make_loss(
            sde, model, **exp.training.loss_options(), train=False, per_example=True
        )
        eval_step = make_eval_step(loss_fn, mesh)
        done = part.setdefault("batches", [])
        scaler = data_lib.data_scaler(exp.data)
        for i, (images, mask) in enumerate(_eval_batches(exp)):
            if i < len(done):
                continue
            losses = eval_step(
                params, global_batch(scaler(images), mesh, spec), jax.random.fold_in(key, i)
            )
            real = gather(losses)[mask]
            done.append([float(np.sum(real)), int(real.size)])
            _atomic_json(path, progress)
        total = np.sum(np.asarray(done), axis=0)
        part["mean"] = float(total[0] / total[1])
        _atomic_json(path, progress)

    if cfg.enable_bpd:
        part = _part(progress, "bpd", _bpd_settings(exp), path)
        repeats, complete = part.setdefault("repeats", {}), part.setdefault("complete", [])
        limit = cfg.bpd_max_examples or None
        levels = exp.data.num_levels
        bpd_fn = None
        for repeat in range(cfg.num_repeats):
            if repeat in complete:
                continue
            bpd_fn = bpd_fn or make_bpd_fn(exp, model, mesh)
            record = repeats.setdefault(str(repeat), [])  # Per batch: the images' bits/dim.
            seen = sum(len(b) for b in record)
            for i, (images, mask) in enumerate(_eval_batches(exp)):
                if limit is not None and seen >= limit:
                    break
                if i < len(record):
                    continue
                k_deq, k_probe = jax.random.split(
                    jax.random.fold_in(jax.random.fold_in(key, repeat), i)
                )
                # Drawn at the global batch's shape, so that every process count dequantizes
                # each example alike; this process reads its block of rows.
                rows = images.shape[0]
                noise = jax.random.uniform(k_deq, (rows * jax.process_count(), *images.shape[1:]))
                noise = np.asarray(noise[jax.process_index() * rows :][:rows])
                u01 = (data_lib.level_indices(images, levels) + noise) / levels
                bpd, _ = bpd_fn(params, global_batch(u01.astype(np.float32), mesh, spec), k_probe)
                real = gather(bpd)[mask]
                if limit is not None:
                    real = real[: limit - seen]
                if not np.all(np.isfinite(real)):
                    raise FloatingPointError(f"non-finite bits/dim at step {step}, batch {i}")
                record.append([float(b) for b in real])
                seen += int(real.size)
                _atomic_json(path, progress)
            complete.append(repeat)
            _atomic_json(path, progress)
        progress.update(_bpd_summary(exp, repeats))
    if cfg.enable_sampling:
        # The sample rounds check their own settings and refuse to mix (SampleEvaluator).
        progress["sampling"] = sample_eval(workdir, step, params)
    if json.dumps(progress, sort_keys=True) != before:  # A finished evaluation is left as it is.
        _atomic_json(path, progress)
    return progress


def _bpd_line(entry: dict[str, Any]) -> str:
    """The bits/dim of a report entry beside the baselines', in one line."""
    b = entry["bpd_baselines"]
    return (
        f"bits/dim {entry['bpd']:.4f} ± {entry['bpd_stderr']:.4f} as {entry['bpd_levels']}-level "
        f"data; per-pixel histogram {b['histogram']['bpd']:.4f}, full-covariance Gaussian "
        f"{b['gaussian']['bpd']:.4f}; model minus histogram "
        f"{b['histogram']['model_minus_baseline']:+.4f} ± {b['histogram']['difference_stderr']:.4f}"
        f", minus Gaussian {b['gaussian']['model_minus_baseline']:+.4f} ± "
        f"{b['gaussian']['difference_stderr']:.4f}"
    )


def run_eval_mode(exp: Experiment, workdir: str) -> dict:
    """``--mode=eval``: evaluates every snapshot in the configured range; returns and writes the
    report."""
    check_signature(workdir, exp.signature())
    mesh = make_mesh()
    check_batch_size(exp.eval.batch_size, mesh, "config.eval.batch_size")
    if not (exp.eval.enable_loss or exp.eval.enable_bpd or exp.eval.enable_sampling):
        raise ValueError(
            "config.eval enables nothing: set enable_loss, enable_bpd or enable_sampling"
        )
    ckpts = Checkpoints(workdir, writable=False)
    steps = [
        s
        for s in ckpts.snapshot_steps()
        if s >= exp.eval.begin_step and (exp.eval.end_step <= 0 or s <= exp.eval.end_step)
    ]
    if not steps:
        raise FileNotFoundError(
            f"no snapshot in {workdir!r} with step in [{exp.eval.begin_step}, "
            f"{exp.eval.end_step or 'newest'}]; snapshots: {ckpts.snapshot_steps()}"
        )
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    model = exp.build_model()
    target = abstract_state(exp, model, mesh)
    sample_eval = None
    if exp.eval.enable_sampling:
        sample_eval = SampleEvaluator(exp, mesh)  # Fails here, before any work, on bad settings.
    writer = SummaryWriter(os.path.join(workdir, "eval"), enabled=jax.process_index() == 0)
    report = {}
    for step in steps:
        state, _ = ckpts.restore(target, step)
        result = evaluate_step(exp, workdir, step, state.ema_params, mesh, sample_eval)
        entry = {}
        if exp.eval.enable_loss:
            entry["test_loss"] = result["loss"]["mean"]
        if exp.eval.enable_bpd:
            entry["bpd"] = result["bpd_mean"]
            entry["bpd_stderr"] = result["bpd_stderr"]
            entry["bpd_levels"] = result["bpd_levels"]
            entry["bpd_trained_dequantized"] = result["bpd_trained_dequantized"]
            for name, b in result["bpd_baselines"].items():
                entry[f"bpd_{name}"] = b["bpd"]
            entry["bpd_baselines"] = result["bpd_baselines"]
            entry["bpd_per_repeat"] = result["bpd_per_repeat"]
        if exp.eval.enable_sampling:
            quality = result["sampling"]
            for k in ("fid", "inception_score", "inception_score_std", "kid", "kid_std"):
                if k in quality:
                    entry[k] = quality[k]
            entry["num_samples"] = quality["num_samples"]
            if quality["warnings"]:
                entry["warnings"] = quality["warnings"]
        report[str(step)] = entry
        scalars = {
            k: v
            for k, v in entry.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        writer.scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
        print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in scalars.items()), flush=True)
        if exp.eval.enable_bpd:
            print(f"step {step}: {_bpd_line(entry)}", flush=True)
    ckpts.close()
    writer.close()
    _atomic_json(os.path.join(workdir, "eval", "report.json"), report)
    return report
