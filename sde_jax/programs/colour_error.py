r"""How close colorizations come to the true colours.

``--mode=sample`` with ``task=colorize`` on colour inputs (whose true colours are known) writes
``colour_error.json``: the root-mean-square error of the chroma (the two colour coordinates of
:func:`sde_jax.controllable.decoupling_matrix`, in [0, 1] units) of the completions against the
truth, of the average of each input's completions, and of the baseline that paints every pixel the
mean chroma of the training split over the given gray. A sample of the exact conditional has
:math:`\sqrt 2` times the conditional spread as its expected error, so a single completion can be
right and still lose to the mean on this number; the average of the completions estimates the
conditional mean, which can only beat the baseline by knowing more than the gray.
"""

from __future__ import annotations

import numpy as np

from sde_jax import controllable
from sde_jax.data import make_dataset
from sde_jax.programs.experiment import Experiment


def chroma(images01: np.ndarray) -> np.ndarray:
    """The ``C - 1`` colour coordinates ``[..., C - 1]`` of images ``[..., C]`` in the decoupled
    colour space (the gray coordinate left out)."""
    basis = controllable.decoupling_matrix(images01.shape[-1]).astype(np.float64)
    return images01.astype(np.float64) @ basis[:, 1:]


def chroma_error(exp: Experiment, truth: np.ndarray, completions: np.ndarray) -> dict:
    """Chroma RMSE of ``completions [K, N, H, W, C]`` against ``truth [N, H, W, C]`` (both in
    [0, 1]), of the average of each input's completions, and of the mean-chroma baseline (the
    training split of ``exp``'s data)."""
    train = make_dataset(
        exp.data, "train", shuffle=False, repeat=False, batch_size=exp.eval.batch_size,
        drop_remainder=False, uniform_dequantization=False, process_index=0, process_count=1,
    )  # fmt: skip
    total, count = 0.0, 0
    for batch in train:
        coords = chroma(np.asarray(batch["image"]))
        keep = np.asarray(batch.get("mask", np.ones(len(coords), bool)))
        total = total + coords[keep].sum(axis=(0, 1, 2))
        count += int(keep.sum()) * coords.shape[1] * coords.shape[2]
    mean_chroma = total / count
    true = chroma(truth)
    rmse = lambda c: float(np.sqrt(np.mean((c - true) ** 2)))
    return {
        "num_inputs": len(truth),
        "num_completions": len(completions),
        "completions": rmse(chroma(completions)),
        "average_completion": rmse(chroma(completions.mean(axis=0))),
        "mean_chroma_baseline": rmse(np.broadcast_to(mean_chroma, true.shape)),
        "train_mean_chroma": [float(v) for v in mean_chroma],
    }
