r"""``--mode=fid_stats`` and the sample-quality part of ``--mode=eval`` (FID, IS and KID).

``--mode=fid_stats`` runs the FID Inception over every image of the data set's training split (no
random flips) and writes the mean and covariance of pool_3, and the pool_3 features themselves (for
KID), to ``config.eval.fid_stats`` (default: :func:`default_stats_path`).

With ``config.eval.enable_sampling``, ``--mode=eval`` generates ``config.eval.num_samples`` samples
per snapshot in rounds of ``config.sampling.batch_size`` over the device mesh. Each round is written
to ``<workdir>/eval/step_<step>/samples_round_<r>.npz`` (uint8 ``images``, their ``pool_3`` and
``logits_unbiased`` features) before the next starts, so a pre-empted evaluation resumes at the first
missing round. The samples are quantized as the paper's evaluation does, :math:`\lfloor 255 x
\rfloor` after clipping to ``[0, 1]``; the fraction of clipped values is reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sde_jax import data as data_lib
from sde_jax.metrics import FeatureExtractor
from sde_jax.metrics.scores import (
    check_stats,
    feature_stats,
    frechet_distance_to,
    inception_score,
    kernel_inception_distance,
    load_stats,
    save_stats,
)
from sde_jax.metrics.weights import InceptionWeights, cache_dir, load_inception
from sde_jax.programs.distributed import any_process, first_then_others, gather
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.images import to_uint8_floored
from sde_jax.programs.sampler import experiment_sample_fn, sample_round
from sde_jax.programs.summary import Progress
from sde_jax.programs.workdir import write_json
from sde_jax.sharding import check_batch_size, make_mesh

# Below this many samples FID is strongly biased upwards; the paper uses 50,000.
MIN_RELIABLE_SAMPLES = 10_000
# Trained models put a small fraction of pixel values slightly outside [0, 1]; many more suggest
# samples on the wrong scale, and the report says so.
MAX_CLIPPED_FRACTION = 0.01
_SAMPLING_SALT = 5_000_011  # Separates the sampling keys from the loss and bits/dim keys of a step.


def default_stats_path(exp) -> str:
    """``<cache>/fid_stats/<dataset>_<size>px_train.npz``."""
    if exp.data.dataset == "folder":
        raise ValueError(
            "config.eval.fid_stats must be set for data.dataset='folder': a default path cannot "
            "tell image folders apart"
        )
    name = exp.data.dataset.replace("/", "_")
    return os.path.join(cache_dir(), "fid_stats", f"{name}_{exp.data.image_size}px_train.npz")


def stats_path(exp) -> str:
    """``config.eval.fid_stats``, or :func:`default_stats_path`."""
    return os.path.expanduser(exp.eval.fid_stats) if exp.eval.fid_stats else default_stats_path(exp)


def _load_weights(exp) -> InceptionWeights:
    """The Inception weights, fetched and converted into the cache by process 0 alone; the others
    read them once it has (they share the cache, as they share the workdir)."""
    return first_then_others(
        lambda: load_inception(exp.eval.inception_weights), "load the Inception weights"
    )


def _extractor(exp, weights: InceptionWeights, mesh: Mesh, layers) -> FeatureExtractor:
    check_batch_size(exp.eval.inception_batch_size, mesh, "config.eval.inception_batch_size")
    return FeatureExtractor(
        weights.params, mesh=mesh, batch_size=exp.eval.inception_batch_size, layers=layers
    )


def run_fid_stats_mode(exp: Experiment, path: str | None = None) -> str:
    """``--mode=fid_stats``: pool_3 statistics of the training split, written to ``path`` (default
    :func:`stats_path`); returns the path."""
    path = path or stats_path(exp)
    weights = _load_weights(exp)
    extractor = _extractor(exp, weights, make_mesh(), ("2048",))
    data_cfg = dataclasses.replace(exp.data, random_flip=False)
    batches = data_lib.make_dataset(
        data_cfg,
        "train",
        shuffle=False,
        repeat=False,
        batch_size=exp.eval.inception_batch_size,
        drop_remainder=False,
        uniform_dequantization=False,
    )
    progress = Progress(data_lib.dataset_info(data_cfg).num_examples["train"])
    features, count = [], 0
    for batch in batches:
        # Each process reads its rows of the global batch; every process extracts the features of
        # the whole batch, in the data set's order.
        images = gather(np.asarray(batch["image"], np.float32))
        if "mask" in batch:
            images = images[gather(np.asarray(batch["mask"], bool))]
        # The data are 8-bit images scaled by 1/255: rounding recovers them exactly.
        features.append(extractor(np.round(images * 255.0).astype(np.uint8))["2048"])
        count += len(images)
        progress.update(count, "images through the Inception network")
    stats = feature_stats(
        np.concatenate(features),
        feature_layer="2048",
        image_size=(exp.data.image_size, exp.data.image_size),
        weights=weights.fingerprint,
        dataset=exp.data.dataset,
        split="train",
        weights_source=weights.source,
    )
    if jax.process_index() == 0:
        save_stats(path, stats)
        print(f"wrote statistics of {stats.num_examples} images to {path}")
    return path


_KEPT = ("pool_3", "logits_unbiased", "nfe", "clipped_fraction")


def _agreed_existing(paths: list[str], directory: str) -> list[bool]:
    """Which of ``paths`` exist, as every process sees it: processes that disagree (a workdir
    that is not one shared folder) would sample different rounds and wait on each other."""
    exist = [os.path.exists(p) for p in paths]
    if jax.process_count() > 1:
        mine = np.asarray(exist, np.int32)
        first = np.asarray(multihost_utils.broadcast_one_to_all(mine))
        if any_process(not np.array_equal(mine, first)):
            raise RuntimeError(
                f"the processes see different sample rounds in {directory}: --workdir must be "
                "one folder shared by every process"
            )
    return exist


class SampleEvaluator:
    """FID, IS and KID of a snapshot's samples against the data statistics.

    Construction loads and checks everything that does not depend on the snapshot (statistics file,
    Inception weights, their compatibility), so that a bad setting fails before any sampling.
    """

    def __init__(self, exp: Experiment, mesh: Mesh):
        cfg = exp.eval
        check_batch_size(exp.sampling.batch_size, mesh, "config.sampling.batch_size")
        self.exp, self.mesh = exp, mesh
        self.stats_file = stats_path(exp)
        self.stats = load_stats(self.stats_file)
        self.weights = _load_weights(exp)
        if not self.weights.with_logits:
            raise ValueError(
                f"the Inception weights {self.weights.source} have no classifier, which the "
                "Inception Score needs: use the full weights (weights-inception-2015-12-05-"
                "6726825d.pth)"
            )
        size = exp.data.image_size
        self.notes = check_stats(
            self.stats,
            feature_layer="2048",
            image_size=(size, size),
            weights=self.weights.fingerprint,
            source=f"the statistics {self.stats_file}",
        )
        if cfg.kid_subsets and self.stats.features is None:
            raise ValueError(
                f"KID needs the data set's features, but {self.stats_file} holds only their mean "
                "and covariance: recompute it with --mode=fid_stats, or set "
                "config.eval.kid_subsets=0 to skip KID"
            )
        for note in self.notes:
            logging.warning(note)
        self.extractor = _extractor(exp, self.weights, mesh, ("2048", "logits_unbiased"))
        self._sample_fn = None

    def _signature(self) -> dict[str, Any]:
        # What the saved rounds depend on: resuming with different settings must not mix samples.
        return {
            "sampling": dataclasses.asdict(self.exp.sampling),
            "seed": self.exp.seed,
            "inception_weights": self.weights.fingerprint,
        }

    def _round(self, params: Any, key: jax.Array, r: int, step: int) -> dict[str, np.ndarray]:
        if self._sample_fn is None:
            self._sample_fn = experiment_sample_fn(self.exp, self.exp.build_model(), self.mesh)
        try:
            x, nfe = sample_round(self._sample_fn, params, key, r)
        except FloatingPointError as e:
            raise FloatingPointError(f"step {step}, {e}") from None
        x01 = data_lib.inverse_scaler(self.exp.data)(x)
        clipped = float(np.mean((x01 < 0.0) | (x01 > 1.0)))
        images = to_uint8_floored(x01, clip=True)
        features = self.extractor(images)
        return {
            "images": images,
            "pool_3": features["2048"],
            "logits_unbiased": features["logits_unbiased"],
            "nfe": np.int64(nfe),
            "clipped_fraction": np.float64(clipped),
        }

    def __call__(self, workdir: str, step: int, params: Any) -> dict[str, Any]:
        """Samples (resuming from saved rounds) and scores snapshot ``step`` with ``params``."""
        exp, cfg = self.exp, self.exp.eval
        directory = os.path.join(workdir, "eval", f"step_{step}")
        signature_file = os.path.join(directory, "samples.json")
        signature = json.loads(json.dumps(self._signature()))
        if os.path.exists(signature_file):
            with open(signature_file) as f:
                saved = json.load(f)
            if saved != signature:
                raise ValueError(
                    f"the sample rounds in {directory} were made with other settings ({saved}); "
                    f"now: {signature}. Delete that directory to sample again"
                )
        batch = exp.sampling.batch_size
        rounds = -(-cfg.num_samples // batch)
        paths = [os.path.join(directory, f"samples_round_{r}.npz") for r in range(rounds)]
        saved = _agreed_existing(paths, directory)
        if jax.process_index() == 0:
            os.makedirs(directory, exist_ok=True)
            if not os.path.exists(signature_file):
                write_json(signature_file, signature)

        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(exp.seed), step), _SAMPLING_SALT)
        progress = Progress(rounds)
        records = []
        for r, path in enumerate(paths):
            if saved[r]:
                with np.load(path) as f:
                    record = {k: f[k] for k in _KEPT}
            else:
                # Every process samples its rows and gets the whole round; process 0 saves it.
                record = self._round(params, key, r, step)
                if jax.process_index() == 0:
                    tmp = f"{path}.tmp.npz"
                    np.savez(tmp, **record)
                    os.replace(tmp, path)
                progress.update(r + 1, f"sampling rounds of snapshot {step}")
            if record["pool_3"].shape != (batch, 2048):
                raise ValueError(f"{path} holds {record['pool_3'].shape[0]} samples, not {batch}")
            records.append(record)

        n = cfg.num_samples
        pool = np.concatenate([r["pool_3"] for r in records])[:n]
        logits = np.concatenate([r["logits_unbiased"] for r in records])[:n]
        result: dict[str, Any] = {
            "num_samples": n,
            "nfe": int(records[-1]["nfe"]),
            "clipped_fraction": float(np.mean([r["clipped_fraction"] for r in records])),
            "fid_stats": self.stats_file,
            "fid_stats_examples": self.stats.num_examples,
            "fid": frechet_distance_to(pool, self.stats.mu, self.stats.sigma),
        }
        result["inception_score"], result["inception_score_std"] = inception_score(
            logits, cfg.is_splits
        )
        warnings = list(self.notes)
        if cfg.kid_subsets:
            ref = self.stats.features
            size = min(cfg.kid_subset_size, n, len(ref))
            if size < cfg.kid_subset_size:
                warnings.append(
                    f"KID subsets of {size} (config.eval.kid_subset_size={cfg.kid_subset_size} "
                    f"exceeds the {min(n, len(ref))} available)"
                )
            result["kid"], result["kid_std"] = kernel_inception_distance(
                ref, pool, num_subsets=cfg.kid_subsets, subset_size=size, seed=step
            )
            result["kid_subset_size"] = size
        if n < MIN_RELIABLE_SAMPLES:
            warnings.append(
                f"FID from {n} samples is biased upwards and not comparable with 50,000-sample "
                f"values (the paper's); use at least {MIN_RELIABLE_SAMPLES}"
            )
        if result["clipped_fraction"] > MAX_CLIPPED_FRACTION:
            warnings.append(
                f"{result['clipped_fraction']:.1%} of the sample values were outside [0, 1] and "
                "clipped: check config.data.centered and the model"
            )
        for w in warnings[len(self.notes) :]:
            logging.warning("step %d: %s", step, w)
        result["warnings"] = warnings
        return result
