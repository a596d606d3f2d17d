r"""FID, KID and Inception Score from Inception features, and feature-statistics files.

All three are computed on the host in float64 from float32 network outputs:

- **FID** between Gaussians fitted to two feature sets,
  :math:`\|\mu_1 - \mu_2\|^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2})`,
  with :math:`\operatorname{tr}(\Sigma_1 \Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i}` over the
  eigenvalues of the symmetric :math:`\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}` (similar to
  :math:`\Sigma_1 \Sigma_2`), which avoids the complex round-off of a general matrix square root.
- **KID**: the unbiased estimate of the squared MMD with the kernel
  :math:`k(x, y) = (x^\top y / d + 1)^3`, averaged over random subsets (each drawn without
  replacement from each set), with its standard deviation over the subsets.
- **IS**: :math:`\exp(\mathbb{E}_x \operatorname{KL}(p(y|x) \,\|\, p(y)))` in each of ``num_splits``
  consecutive splits, the mean and standard deviation over the splits; :math:`p(y|x)` is the
  softmax of the ``logits_unbiased`` output.

A statistics file (``.npz``) holds the mean and covariance (float64) of one feature layer over a
data set, optionally the features themselves (float32, for KID), and metadata: the layer, the network
and the resizing, the source image size, the weights' fingerprint, the data set and the count.
:func:`check_stats` refuses statistics whose metadata differ from the features they are compared
with. The paper's released files (e.g. ``cifar10_stats.npz``: key ``pool_3`` with the raw pool_3
activations, no metadata) are read too; what they do not record cannot be checked, and
:func:`check_stats` says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from sde_jax.metrics.features import RESIZE_POLICY
from sde_jax.metrics.inception import FEATURE_DIMS, NETWORK

_FORMAT = "sde_jax-feature-stats-v1"


# ---------------------------------------------------------------------------------------------
# The three scores.


def _trace_sqrt(m: np.ndarray) -> float:
    """Sum of the square roots of the eigenvalues of the symmetric PSD matrix ``m``.

    Eigenvalues below ``size * eps * max`` are round-off of zeros (rank-deficient covariances):
    their square roots, ~sqrt(eps) * max, would otherwise bias the sum; a true eigenvalue that small
    contributes no more than that error.
    """
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    floor = m.shape[0] * np.finfo(np.float64).eps * max(float(eig.max()), 0.0)
    return float(np.sum(np.sqrt(np.where(eig > floor, eig, 0.0))))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """FID between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (``[D]``, ``[D, D]``), in
    float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"FID needs means [D] and covariances [D, D] of one dimension; got {mu1.shape}, "
            f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"FID: {name} has non-finite values")
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    tr_sqrt = _trace_sqrt(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def frechet_distance_to(features: Any, mu: Any, sigma: Any) -> float:
    r"""FID between the Gaussian fitted to ``features`` ``[N, D]`` and ``N(mu, sigma)``.

    With fewer features than dimensions the fitted covariance :math:`A^\top A / (N - 1)` (``A``:
    the centered features) has rank below ``D``, and the nonzero eigenvalues of
    :math:`\Sigma_A \Sigma` are those of the ``N x N`` matrix :math:`A \Sigma A^\top / (N - 1)`:
    the same FID as :func:`frechet_distance` at a fraction of the cost of two ``D x D``
    eigendecompositions.
    """
    f = np.asarray(features, np.float64)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    n, d = f.shape
    if n < 2 or mu.shape != (d,) or sigma.shape != (d, d):
        raise ValueError(
            f"FID needs features [N >= 2, D] and a reference of dimension D; got {f.shape}, "
            f"{mu.shape}, {sigma.shape}"
        )
    if n > d:
        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, sigma)
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError("FID: non-finite features or reference statistics")
    a = f - f.mean(0)
    diff = f.mean(0) - mu
    trace_a = np.sum(a * a) / (n - 1)
    return float(
        diff @ diff + trace_a + np.trace(sigma) - 2.0 * _trace_sqrt(a @ sigma @ a.T / (n - 1))
    )


def kernel_inception_distance(
    features1: Any,
    features2: Any,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    r"""KID between two feature sets ``[N1, D]`` and ``[N2, D]``: mean and standard deviation over
    ``num_subsets`` subsets of ``subset_size`` from each set.

    Per subset pair :math:`X, Y` of size :math:`m`, the unbiased estimate is

    .. math:: \frac{1}{m(m-1)} \sum_{i \ne j} [k(x_i, x_j) + k(y_i, y_j)]
              - \frac{2}{m^2} \sum_{i, j} k(x_i, y_j).
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs features [N1, D] and [N2, D]; got {f1.shape} and {f2.shape}")
    m = subset_size
    if not 2 <= m <= min(len(f1), len(f2)):
        raise ValueError(
            f"KID subset size must be in [2, min(N1, N2) = {min(len(f1), len(f2))}]; got {m}"
        )
    if num_subsets < 1:
        raise ValueError(f"KID needs num_subsets >= 1; got {num_subsets}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[s] = within - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def inception_score(logits: Any, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score of ``logits`` ``[N, K]``: mean and standard deviation over ``num_splits``
    consecutive splits."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2:
        raise ValueError(f"IS needs logits [N, K]; got shape {z.shape}")
    if not 1 <= num_splits <= len(z):
        raise ValueError(f"IS needs 1 <= num_splits <= N = {len(z)}; got {num_splits}")
    if not np.all(np.isfinite(z)):
        raise ValueError("IS: the logits have non-finite values")
    scores = []
    for part in np.array_split(z, num_splits):
        log_p = part - part.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        log_marginal = np.log(np.exp(log_p).mean(axis=0))
        kl = np.sum(np.exp(log_p) * (log_p - log_marginal[None, :]), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------
# Statistics files.


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Statistics of one feature layer over a set of images.

    Attributes:
        mu: float64 ``[D]``.
        sigma: float64 ``[D, D]``, the unbiased (``N - 1``) covariance.
        num_examples: ``N``.
        features: float32 ``[N, D]`` (needed for KID), or ``None``.
        meta: ``feature_layer``, ``network``, ``resize``, ``image_size`` (``[H, W]`` of the source
            images), ``weights`` (fingerprint), and free-form entries (``dataset``, ``split``);
            ``None`` where unknown (files in the paper's format).
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_examples: int
    features: np.ndarray | None
    meta: dict[str, Any]


def feature_stats(
    features: Any,
    *,
    feature_layer: str,
    image_size: tuple[int, int] | None,
    weights: str | None,
    keep_features: bool = True,
    **extra: Any,
) -> FeatureStats:
    """Mean and covariance (float64) of ``features`` ``[N, D]`` of ``feature_layer`` of the FID
    Inception (with its standard resizing) with ``weights`` (fingerprint), for images of
    ``image_size``."""
    f = np.asarray(features)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"statistics need features [N >= 2, D]; got shape {f.shape}")
    if feature_layer not in FEATURE_DIMS or FEATURE_DIMS[feature_layer] != f.shape[1]:
        raise ValueError(
            f"features of shape {f.shape} are not from layer {feature_layer!r} "
            f"(dimensions: {FEATURE_DIMS})"
        )
    if not np.all(np.isfinite(f)):
        raise ValueError("statistics: the features have non-finite values")
    f64 = f.astype(np.float64)
    meta = {
        "feature_layer": feature_layer,
        "network": NETWORK,
        "resize": RESIZE_POLICY,
        "image_size": None if image_size is None else [int(s) for s in image_size],
        "weights": weights,
        **extra,
    }
    return FeatureStats(
        mu=f64.mean(axis=0),
        sigma=np.cov(f64, rowvar=False),
        num_examples=len(f),
        features=f.astype(np.float32) if keep_features else None,
        meta=meta,
    )


def save_stats(path: str, stats: FeatureStats) -> None:
    """Writes ``stats`` to ``path`` (``.npz``), atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "num_examples": np.int64(stats.num_examples)}
    if stats.features is not None:
        arrays["features"] = stats.features
    meta = json.dumps({"format": _FORMAT, **stats.meta})
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, __meta__=np.asarray(meta), **arrays)
    os.replace(tmp, path)


def load_stats(path: str) -> FeatureStats:
    """Reads a statistics file of this package, or of the paper (key ``pool_3``: raw pool_3
    activations ``[N, 2048]``; its image size, resizing and weights are unknown).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is neither format, or its arrays have inconsistent shapes.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no feature statistics at {path!r}: compute them with --mode=fid_stats, or set "
            "config.eval.fid_stats to an existing file"
        )
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if "__meta__" in keys:
            meta = json.loads(str(f["__meta__"]))
            if meta.pop("format", None) != _FORMAT:
                raise ValueError(f"{path}: unknown statistics format")
            stats = FeatureStats(
                mu=f["mu"].astype(np.float64),
                sigma=f["sigma"].astype(np.float64),
                num_examples=int(f["num_examples"]),
                features=f["features"] if "features" in keys else None,
                meta=meta,
            )
        elif "pool_3" in keys:
            pool = f["pool_3"]
            if pool.ndim != 2 or pool.shape[1] != FEATURE_DIMS["2048"]:
                raise ValueError(
                    f"{path}: key 'pool_3' has shape {pool.shape}; the paper's statistics files "
                    "hold pool_3 activations [N, 2048]"
                )
            stats = feature_stats(
                pool,
                feature_layer="2048",
                image_size=None,
                weights=None,
                source="paper statistics file (pool_3 activations)",
            )
            stats.meta["resize"] = None
            stats.meta["network"] = NETWORK
        else:
            raise ValueError(
                f"{path} is not a statistics file: it has {sorted(keys)}; expected this package's "
                "format (--mode=fid_stats) or the paper's (key 'pool_3')"
            )
    d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
    if stats.sigma.shape != (d, d) or (stats.features is not None and stats.features.shape[1] != d):
        raise ValueError(
            f"{path}: inconsistent shapes of mu {stats.mu.shape}, sigma {stats.sigma.shape}"
        )
    return stats


def check_stats(
    stats: FeatureStats,
    *,
    feature_layer: str,
    image_size: tuple[int, int] | None,
    weights: str,
    source: str = "the statistics",
) -> list[str]:
    """Raises ``ValueError`` if ``stats`` were computed differently from features of
    ``feature_layer`` of images of ``image_size`` with ``weights`` (a fingerprint); returns notes
    on what the file does not record and so could not be checked."""
    meta = stats.meta
    expected_dim = FEATURE_DIMS[feature_layer]
    if meta.get("feature_layer") != feature_layer or stats.mu.shape != (expected_dim,):
        raise ValueError(
            f"{source} are of feature layer {meta.get('feature_layer')!r} (dimension "
            f"{stats.mu.shape[0]}), not {feature_layer!r} (dimension {expected_dim})"
        )
    if meta.get("network") != NETWORK:
        raise ValueError(f"{source} come from network {meta.get('network')!r}, not {NETWORK!r}")
    notes = []
    for key, want in (
        ("resize", RESIZE_POLICY),
        ("image_size", None if image_size is None else [int(s) for s in image_size]),
        ("weights", weights),
    ):
        have = meta.get(key)
        if have is None:
            notes.append(f"{source} do not record the {key}: it could not be checked")
        elif want is not None and have != want:
            raise ValueError(
                f"{source} were computed with {key} {have!r}, but these features use {want!r}: "
                "recompute the statistics (--mode=fid_stats) with the same settings"
            )
    return notes
