"""Level counts of the data, and the simple density models that bits/dim is read against."""

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sde_jax.data import DataConfig, level_indices, to_levels
from sde_jax.data.transforms import to_unit_interval
from sde_jax.likelihood import bits_per_dim
from sde_jax.metrics import baselines


def _levels_data(seed, n, dims, levels):
    """Correlated level indices: a rounded, clipped Gaussian with a random covariance."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dims, dims)) / math.sqrt(dims)
    z = rng.normal(size=(n, dims)) @ a.T
    return np.clip(np.round((levels - 1) * (0.5 + 0.25 * z)), 0, levels - 1).astype(np.int64)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantization_puts_each_stored_level_in_its_own_bin(levels):
    k = np.arange(levels)
    stored = np.round(k * 255.0 / (levels - 1)).astype(np.uint8).reshape(1, levels, 1)
    undequantized = to_unit_interval(stored, None, flip=False, dequantize=False)
    np.testing.assert_array_equal(level_indices(undequantized, levels).ravel(), k)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = to_unit_interval(stored, rng, flip=False, dequantize=True, levels=levels).ravel()
        np.testing.assert_array_equal(np.floor(x * levels), k)
    if levels == 256:  # The usual 8-bit rule, (255 x + u) / 256, unchanged.
        a = to_unit_interval(stored, np.random.default_rng(1), flip=False, dequantize=True)
        u = np.random.default_rng(1).random(stored.shape, dtype=np.float32)
        np.testing.assert_array_equal(a, (stored.astype(np.float32) + u) / np.float32(256))


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("dequantize", [False, True])
def test_samples_go_back_to_the_stored_levels(levels, dequantize):
    """``to_levels`` inverts ``to_unit_interval``: every value a level can become (any
    dequantization noise, or a small error of an undequantized model) maps back to that level's
    stored value; values outside [0, 1] go to the end levels."""
    k = np.arange(levels)
    stored = np.round(k * 255.0 / (levels - 1)).astype(np.uint8).reshape(1, levels, 1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = to_unit_interval(stored, rng, flip=False, dequantize=dequantize, levels=levels)
        if not dequantize:
            x = x + rng.uniform(-0.45, 0.45, x.shape) / (levels - 1)  # Stored values are rounded.
        back = to_levels(x, levels, dequantized=dequantize).ravel()
        np.testing.assert_array_equal(np.round(back * 255.0), stored.ravel())
    outside = to_levels(np.array([-0.3, 1.2]), levels, dequantized=dequantize)
    np.testing.assert_array_equal(outside, [0.0, 1.0])
    # 17 levels, dequantized: the top bin [16/17, 1) is level 16, stored as 1.0 (not ~0.97).
    if levels == 17 and dequantize:
        np.testing.assert_array_equal(
            to_levels(np.array([0.95, 0.03]), 17, dequantized=True), [1, 0]
        )


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("levels", [17, 256])
def test_bits_per_dim_of_a_single_level_is_zero(levels, data_range):
    # All mass on one level: the dequantized density is uniform on one bin of width w / L.
    dims, width = 64, data_range[1] - data_range[0]
    logp = np.asarray([dims * math.log(levels / width)])
    np.testing.assert_allclose(
        bits_per_dim(logp, (8, 8, 1), data_range=data_range, num_bins=levels), 0.0, atol=1e-12
    )


def test_data_levels_are_the_data_sets_own_unless_set():
    assert DataConfig(dataset="digits").num_levels == 17
    assert DataConfig(dataset="cifar10", image_size=32, num_channels=3).num_levels == 256
    assert DataConfig(dataset="folder", levels=4, num_channels=3).num_levels == 4
    with pytest.raises(ValueError, match=r"data.levels must be 0 .* or in \[2, 256\]; got 1"):
        DataConfig(dataset="digits", levels=1)


def test_histogram_bits_are_the_smoothed_discrete_probabilities():
    levels, train = 5, _levels_data(0, 300, 6, 5)
    held_out = _levels_data(1, 40, 6, 5)
    stats = baselines.pixel_statistics([train[:100], train[100:]], levels)
    assert stats.count == 300
    got = baselines.histogram_bits(stats, held_out)
    for i in range(len(held_out)):
        p = [(np.sum(train[:, d] == held_out[i, d]) + 1) / (300 + levels) for d in range(6)]
        np.testing.assert_allclose(got[i], -np.mean(np.log2(p)), rtol=1e-12)
    # With every level equally frequent in every pixel, the model is uniform: log2 L bits.
    uniform = np.tile(np.arange(levels)[:, None], (4, 6))
    flat = baselines.pixel_statistics([uniform], levels)
    np.testing.assert_allclose(baselines.histogram_bits(flat, held_out), math.log2(levels))


def test_gaussian_fit_is_the_moments_of_the_dequantized_training_data():
    levels, train = 17, _levels_data(2, 200, 5, 17)
    mean, cov = baselines.fit_gaussian(baselines.pixel_statistics([train], levels))
    # Monte Carlo over many dequantizations of the same training set: the sample moments converge
    # to the exact ones at O(1 / sqrt(draws)); the dequantization noise has variance 1/(12 L^2).
    draws = 2000
    rng = np.random.default_rng(3)
    x = (train[None] + rng.random((draws, *train.shape))) / levels  # [draws, N, D]
    mc_mean = x.mean(axis=(0, 1))
    centred = x - mc_mean
    mc_cov = np.einsum("rnd,rne->de", centred, centred) / (draws * len(train))
    # Only the noise u / L is random: the mean's error has sd noise_sd / sqrt(RN); a covariance
    # entry's, from the cross terms (k_d - mean_d) u_e / L^2 and u_d u_e / L^2, at most
    # (2 sd(k / L) noise_sd + noise_sd^2) / sqrt(RN). Five of those.
    noise_sd, samples = 1.0 / (levels * math.sqrt(12.0)), draws * len(train)
    np.testing.assert_allclose(mean, mc_mean, atol=5 * noise_sd / math.sqrt(samples))
    sd_k = np.sqrt(np.max(np.var(train / levels, axis=0)))
    cov_sd = (2 * sd_k * noise_sd + noise_sd**2) / math.sqrt(samples)
    np.testing.assert_allclose(cov, mc_cov, atol=5 * cov_sd)


def test_gaussian_bits_are_the_expectation_over_dequantization():
    levels, dims = 17, 6
    train, held_out = _levels_data(4, 500, dims, levels), _levels_data(5, 10, dims, levels)
    mean, cov = baselines.fit_gaussian(baselines.pixel_statistics([train], levels))
    got = baselines.gaussian_bits(mean, cov, held_out, levels)
    draws = 4000
    rng = np.random.default_rng(6)
    x = (held_out[None] + rng.random((draws, *held_out.shape))) / levels
    bits = -multivariate_normal(mean, cov).logpdf(x) / (dims * math.log(2)) + math.log2(levels)
    mc, se = bits.mean(axis=0), bits.std(axis=0, ddof=1) / math.sqrt(draws)
    assert np.all(np.abs(got - mc) < 5 * se), (got - mc) / se
    # The expectation differs from the density at the bin centres by the trace term alone.
    centre = -multivariate_normal(mean, cov).logpdf((held_out + 0.5) / levels)
    trace = np.trace(np.linalg.inv(cov)) / (24 * levels**2)
    np.testing.assert_allclose(
        got, (centre + trace) / (dims * math.log(2)) + math.log2(levels), rtol=1e-10
    )


def test_bad_level_indices_are_refused():
    with pytest.raises(ValueError, match=r"level indices must be integers in \[0, 4\)"):
        baselines.pixel_statistics([np.array([[0, 4]])], 4)
    with pytest.raises(ValueError, match="at least one image"):
        baselines.pixel_statistics([], 4)
