"""Bits/dim of the simple density models of :mod:`sde_jax.metrics.baselines` on the images a run's
bits/dim is measured on, for ``--mode=eval``'s report.

The models are fitted to the training split and scored on ``config.eval.bpd_dataset`` (its first
``bpd_max_examples`` images) at the data set's level count, and the result is cached per data set in
``<data_dir>/sde_jax_baselines/`` (keyed by every setting it depends on), so only the first
evaluation of a data set pays for the pass over its training split. Process 0 computes and writes
it; the other processes read it (they share the data directory, as they share the workdir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from sde_jax import data as data_lib
from sde_jax.metrics import baselines
from sde_jax.programs.distributed import first_then_others
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.workdir import write_json

# Bumped when what is cached, or how it is computed, changes.
CACHE_VERSION = 1
MODELS = ("histogram", "gaussian")


def _key(exp: Experiment) -> dict[str, Any]:
    cfg = exp.data
    return {
        "version": CACHE_VERSION,
        "dataset": cfg.dataset,
        "folder": os.path.abspath(cfg.folder) if cfg.folder else None,
        "image_size": cfg.image_size,
        "num_channels": cfg.num_channels,
        "levels": cfg.num_levels,
        "fit_split": "train",
        "eval_split": exp.eval.bpd_dataset,
        "max_examples": exp.eval.bpd_max_examples,
    }


def cache_path(exp: Experiment) -> str:
    """Where the baselines of ``exp``'s data and evaluation split are cached."""
    key = _key(exp)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{exp.data.dataset.replace('/', '_')}-{digest}.json"
    return os.path.join(exp.data.resolved_data_dir, "sde_jax_baselines", name)


def _level_batches(exp: Experiment, split: str, limit: int = 0) -> Iterator[np.ndarray]:
    """The level indices ``int [B, H, W, C]`` of one pass over ``split`` (no flips), in the
    data set's order, read whole by this process; at most ``limit`` images when positive."""
    cfg = dataclasses.replace(exp.data, random_flip=False)
    batches = data_lib.make_dataset(
        cfg,
        split,
        shuffle=False,
        repeat=False,
        batch_size=exp.eval.batch_size,
        drop_remainder=False,
        uniform_dequantization=False,
        process_index=0,
        process_count=1,
    )
    seen = 0
    for batch in batches:
        images = np.asarray(batch["image"], np.float32)
        if "mask" in batch:
            images = images[np.asarray(batch["mask"], bool)]
        if limit:
            images = images[: limit - seen]
        seen += len(images)
        if len(images):
            yield data_lib.level_indices(images, cfg.num_levels).astype(np.int64)
        if limit and seen >= limit:
            return


def _summary(bits: np.ndarray) -> dict[str, Any]:
    return {
        "bpd": float(np.mean(bits)),
        "stderr": float(np.std(bits, ddof=1) / np.sqrt(len(bits))) if len(bits) > 1 else 0.0,
        "per_image": [float(b) for b in bits],
    }


def compute_baselines(exp: Experiment) -> dict[str, Any]:
    """Fits both models to the training split and scores the evaluation images (uncached)."""
    levels = exp.data.num_levels
    stats = baselines.pixel_statistics(_level_batches(exp, "train"), levels)
    held_out = np.concatenate(
        list(_level_batches(exp, exp.eval.bpd_dataset, exp.eval.bpd_max_examples))
    )
    mean, cov = baselines.fit_gaussian(stats)
    return {
        "key": _key(exp),
        "levels": levels,
        "fit_examples": stats.count,
        "eval_examples": len(held_out),
        "histogram": _summary(baselines.histogram_bits(stats, held_out)),
        "gaussian": _summary(baselines.gaussian_bits(mean, cov, held_out, levels)),
    }


def likelihood_baselines(exp: Experiment) -> dict[str, Any]:
    """The baselines of ``exp``'s evaluation images, from the cache or computed and cached."""
    path = cache_path(exp)

    def cached_or_computed() -> dict[str, Any]:
        if os.path.exists(path):
            with open(path) as f:
                found = json.load(f)
            if found.get("key") == json.loads(json.dumps(_key(exp))):
                return found
        result = compute_baselines(exp)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, result)
        return result

    return first_then_others(cached_or_computed, "compute the likelihood baselines")
