"""Training throughput (images/s) of the CIFAR-10 DDPM++ config at batch 8, on 1 and 2 devices.

Each device count runs in its own process (``--xla_force_host_platform_device_count`` splits the
CPU into that many XLA devices; on a GPU/TPU host the real devices are used). Synthetic batches, so
the figure is the train step itself: forward, backward, Adam, EMA, and the all-reduce.
Run: ``python benchmarks/train_throughput.py [--steps 5] [--config vp_cifar10]``.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

_PROBE = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import importlib, jax, numpy as np
from jax.sharding import PartitionSpec
from common import hardware
from sde_jax.programs.experiment import Experiment
from sde_jax import sharding, training as T
cfg = importlib.import_module("configs.{config}").get_config()
cfg.training.batch_size = {batch}
cfg.training.n_jitted_steps = 1
exp = Experiment.from_config(cfg)
model, mesh = exp.build_model(), sharding.make_mesh()
opt = exp.optim.build()
shape = exp.image_shape
state = jax.jit(lambda k: T.init_state(k, model, opt, shape), out_shardings=sharding.replicated(mesh))(jax.random.key(0))
loss_fn = T.make_loss(exp.sde.build(), model, **exp.training.loss_options())
step = T.make_train_step(loss_fn, opt, exp.model.ema_rate, mesh)
x = np.random.default_rng(0).uniform(-1, 1, (1, {batch}, *shape)).astype(np.float32)
batch = sharding.global_batch(x, mesh, PartitionSpec(None, "data"))
t0 = time.perf_counter(); state, loss = step(state, batch, jax.random.key(1)); loss.block_until_ready()
compile_s = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range({steps}):
    state, loss = step(state, batch, jax.random.key(1))
loss.block_until_ready()
dt = (time.perf_counter() - t0) / {steps}
print(json.dumps(dict(devices=jax.device_count(), hardware=hardware(), step_s=dt,
                      images_per_s={batch} / dt, compile_s=compile_s)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="vp_cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--devices", default="1,2")
    args = parser.parse_args()
    rows = []
    for n in [int(d) for d in args.devices.split(",")]:
        code = _PROBE.format(
            root=str(ROOT),
            bench=str(ROOT / "benchmarks"),
            config=args.config,
            batch=args.batch,
            steps=args.steps,
        )
        env = dict(os.environ)
        if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(rows[0]["hardware"])
    print(f"config {args.config}, global batch {args.batch}")
    print(
        f"{'devices':>7s} {'step s':>8s} {'images/s':>9s} {'compile s':>10s} {'vs 1 device':>12s}"
    )
    for r in rows:
        print(
            f"{r['devices']:7d} {r['step_s']:8.3f} {r['images_per_s']:9.2f} {r['compile_s']:10.1f} "
            f"{r['images_per_s'] / rows[0]['images_per_s']:12.2f}"
        )


if __name__ == "__main__":
    main()
