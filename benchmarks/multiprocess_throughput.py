"""Training and sampling throughput (images/s) on one machine as 1 process and as N processes.

Three layouts run the same programs as ``main.py`` on the same global batch:

* 1 process, 1 device;
* 1 process, N devices (``--xla_force_host_platform_device_count`` splits the CPU; on a GPU/TPU host
  the real devices are used);
* N processes of 1 device each, joined by JAX's distributed runtime (gloo collectives on the CPU),
  as ``main.py --num_processes=N`` runs them.

Training is the digits config's DDPM++ train step (forward, backward, gradient all-reduce, Adam,
EMA) on synthetic batches; sampling is its reverse-diffusion sampler at ``--sample_steps`` steps.
Each figure is process 0's wall time for the run's work, after one compiling call. Needs nothing
downloaded. Run: ``python benchmarks/multiprocess_throughput.py [--processes 2] [--batch 128]``.
"""

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
from common import hardware
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from sde_jax import sharding
from sde_jax import training as T
from sde_jax.programs.distributed import initialize
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.launch import free_port
from sde_jax.programs.sampler import experiment_sample_fn

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # For configs/.

TIMEOUT_S = 1800


def worker(args) -> None:
    """One process of a layout: times the train step and sampling rounds, prints process 0's."""
    if args.num_processes > 1:
        initialize(args.coordinator, args.num_processes, args.process_id)

    cfg = importlib.import_module("configs.digits").get_config()
    cfg.training.batch_size = args.batch
    cfg.sampling.batch_size = args.batch
    cfg.sde.num_scales = args.sample_steps
    exp = Experiment.from_config(cfg)
    model = exp.build_model()
    mesh = sharding.make_mesh()
    optimizer = exp.optim.build()
    shape = exp.image_shape
    state = jax.jit(
        lambda k: T.init_state(k, model, optimizer, shape),
        out_shardings=sharding.replicated(mesh),
    )(jax.random.key(0))
    loss_fn = T.make_loss(exp.sde.build(), model, **exp.training.loss_options())
    step = T.make_train_step(loss_fn, optimizer, exp.model.ema_rate, mesh)
    rows = args.batch // jax.process_count()
    x = np.random.default_rng(jax.process_index()).uniform(-1, 1, (1, rows, *shape))
    batch = sharding.global_batch(x.astype(np.float32), mesh, PartitionSpec(None, "data"))

    def slowest(seconds: float) -> float:
        # The run is as fast as its slowest process.
        return float(np.max(multihost_utils.process_allgather(np.asarray([seconds]))))

    start = time.perf_counter()
    state, loss = step(state, batch, jax.random.key(1))
    loss.block_until_ready()
    train_compile = slowest(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(args.steps):
        state, loss = step(state, batch, jax.random.key(2 + i))
    loss.block_until_ready()
    train_s = slowest((time.perf_counter() - start) / args.steps)

    sample_fn = experiment_sample_fn(exp, model, mesh)
    start = time.perf_counter()
    samples, _ = sample_fn(state.ema_params, jax.random.key(0))
    samples.block_until_ready()
    sample_compile = slowest(time.perf_counter() - start)
    start = time.perf_counter()
    for r in range(args.rounds):
        samples, _ = sample_fn(state.ema_params, jax.random.key(1 + r))
    samples.block_until_ready()
    sample_s = slowest((time.perf_counter() - start) / args.rounds)
    if jax.process_index() == 0:
        print(
            json.dumps(
                dict(
                    processes=jax.process_count(),
                    devices=jax.device_count(),
                    hardware=hardware(),
                    train_images_per_s=args.batch / train_s,
                    train_compile_s=train_compile,
                    sample_images_per_s=args.batch / sample_s,
                    sample_compile_s=sample_compile,
                )
            ),
            flush=True,
        )


def run_layout(args, processes: int, devices: int) -> dict:
    """Runs one layout (``processes`` processes of ``devices`` devices each); its JSON line."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    coordinator = f"127.0.0.1:{free_port()}"
    common = [
        sys.executable, __file__, "--worker", f"--num_processes={processes}",
        f"--coordinator={coordinator}", f"--batch={args.batch}", f"--steps={args.steps}",
        f"--rounds={args.rounds}", f"--sample_steps={args.sample_steps}",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*common, f"--process_id={i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        if p.returncode:
            raise RuntimeError(f"a worker failed ({p.returncode}):\n{err[-3000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="global batch (train and sample)")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("--rounds", type=int, default=2, help="timed sampling rounds")
    parser.add_argument("--sample_steps", type=int, default=100, help="sampler steps (NFE)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    n = args.processes
    if n < 2 or args.batch % n:
        parser.error(f"--processes must be >= 2 and divide --batch ({args.batch}); got {n}")
    layouts = [(1, 1), (1, n), (n, 1)]
    rows = [run_layout(args, p, d) for p, d in layouts]
    print(rows[0]["hardware"])
    print(
        f"digits DDPM++, global batch {args.batch}; sampling at {args.sample_steps} steps; "
        f"{os.cpu_count()} CPU cores visible"
    )
    base = rows[0]
    header = f"{'layout':<28}{'train img/s':>12}{'ratio':>7}{'sample img/s':>14}{'ratio':>7}"
    print(header + f"{'compile s (train, sample)':>28}")
    for (p, d), r in zip(layouts, rows, strict=True):
        name = f"{p} process{'es' if p > 1 else ''} x {d} device{'s' if d > 1 else ''}"
        print(
            f"{name:<28}{r['train_images_per_s']:>12.1f}"
            f"{r['train_images_per_s'] / base['train_images_per_s']:>7.2f}"
            f"{r['sample_images_per_s']:>14.1f}"
            f"{r['sample_images_per_s'] / base['sample_images_per_s']:>7.2f}"
            f"{r['train_compile_s']:>16.1f}{r['sample_compile_s']:>12.1f}"
        )


if __name__ == "__main__":
    main()
