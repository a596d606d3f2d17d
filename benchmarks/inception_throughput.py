"""Throughput of the FID Inception network (images/s) at a few batch sizes.

Times :class:`sde_jax.metrics.FeatureExtractor` on uint8 images: TF1 bilinear resizing to 299x299
and the network (pool_3 and the logits, as ``--mode=eval`` computes them), jitted, with the batch
split over every device. Weights are random (same compute as the real ones; no download). Reports
the compile time, XLA's FLOP count per image, the best wall time over ``--repeats`` calls and the
process CPU time of the same calls (on a shared machine the CPU time is the more robust figure).

Usage::

    python benchmarks/inception_throughput.py [--batches 1 8 32] [--image-size 32] [--repeats 3]

On a GPU, ``JAX_PLATFORMS=cuda``; the network runs at ``Precision.HIGHEST`` (float32 matmuls, no
TF32) as in evaluation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import hardware
from sde_jax.metrics import FeatureExtractor, InceptionV3
from sde_jax.sharding import make_mesh


def random_params(seed: int = 0):
    shape = jax.ShapeDtypeStruct((1, 299, 299, 3), np.float32)
    return jax.jit(lambda k, x: InceptionV3().init(k, x)["params"])(jax.random.key(seed), shape)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--image-size", type=int, default=32, help="input images (resized to 299)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    print(hardware())
    params = random_params()
    rng = np.random.default_rng(0)
    print(f"input {args.image_size}x{args.image_size}x3 uint8 -> 299x299; outputs pool_3, logits")
    print(f"{'batch':>6s} {'compile s':>10s} {'GFLOP/img':>10s} {'best s':>8s} {'images/s':>9s} "
          f"{'CPU s':>7s} {'images/CPU s':>13s}")  # fmt: skip
    mesh = make_mesh()
    for batch in args.batches:
        if batch % mesh.size:
            print(f"{batch:6d} skipped: not divisible by {mesh.size} devices")
            continue
        fx = FeatureExtractor(
            params, mesh=mesh, batch_size=batch, layers=("2048", "logits_unbiased")
        )
        images = rng.integers(0, 256, (batch, args.image_size, args.image_size, 3), np.uint8)
        x = fx._prep(jax.device_put(images, fx._batch))
        start = time.perf_counter()
        compiled = fx._net.lower(fx._params, x).compile()
        compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        gflop = float(cost.get("flops", float("nan"))) / batch / 1e9 if cost else float("nan")
        fx(images)  # warm-up (also compiles the resizing)
        best, cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fx(images)
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        print(
            f"{batch:6d} {compile_s:10.1f} {gflop:10.2f} {best:8.3f} {batch / best:9.2f} {cpu:7.2f} "
            f"{batch / cpu:13.2f}"
        )


if __name__ == "__main__":
    main()
