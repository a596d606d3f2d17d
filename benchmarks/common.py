"""Shared pieces of the benchmarks: hardware description, timing, a small score network."""

import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp


def hardware() -> str:
    devices = jax.devices()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"jax {jax.__version__} on {devices[0].platform} ({len(devices)} x "
        f"{devices[0].device_kind}); host CPU: {cpu}, {os.cpu_count()} cores visible"
    )


def best_time(fn, repeats: int = 3) -> float:
    """Best wall time of ``fn()`` (which must block) over ``repeats`` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class SmallScoreNet(nn.Module):
    """A small convolutional score network with a sinusoidal time embedding (for timing only)."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, t):
        half = 16
        freqs = jnp.exp(-jnp.log(1000.0) * jnp.arange(half) / half)
        emb = t[:, None] * freqs[None, :]
        emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
        emb = nn.Dense(self.channels)(nn.swish(nn.Dense(self.channels)(emb)))
        h = nn.Conv(self.channels, (3, 3))(x)
        for _ in range(3):
            h = h + emb[:, None, None, :]
            h = h + nn.Conv(self.channels, (3, 3))(nn.swish(nn.GroupNorm(8)(h)))
        return nn.Conv(x.shape[-1], (3, 3))(nn.swish(h))


def small_score_fn(sde, shape, seed: int = 0):
    """A ``score_fn(x, t)`` with the scale of a trained model's: the score of unit-variance data,
    :math:`-x / (m_t^2 + s_t^2)`, perturbed by :class:`SmallScoreNet` with random weights."""
    net = SmallScoreNet()
    params = net.init(jax.random.key(seed), jnp.zeros(shape), jnp.zeros(shape[:1]))

    def score_fn(x, t):
        m, s = sde.marginal_coefs(t)
        var = jnp.reshape(m**2 + s**2, (-1, 1, 1, 1))
        return (0.1 * net.apply(params, x, t) - x) / var

    return score_fn


def block(tree):
    return jax.block_until_ready(tree)
