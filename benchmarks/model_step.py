"""Forward and training-step time of the paper's CIFAR-10 networks.

For each network: parameter count, XLA's FLOP count of the compiled computation
(``compiled.cost_analysis()``), compile time, and the median wall time of

- ``forward``: the network in eval mode on a batch;
- ``train step``: continuous DSM loss (with dropout), its gradient and an Adam update;

with the process CPU time of the same calls (summed over threads). GFLOP/s is per wall second.

Usage::

    python benchmarks/model_step.py [--batch 8] [--repeats 5] [--models ddpmpp ncsnpp]
        [--threads N] [--json out.json] [--profile] [--host-malloc auto|keep|default]
        [--glibc-tunables glibc.malloc.hugetlb=1] [--conv-algorithm auto|direct|winograd]
        [--materialize-blocks auto|on|off]

The networks' CPU workarounds are switched on explicitly where JAX computes on the CPU, as the
programs do there: ``--conv-algorithm auto`` builds them with ``conv_algorithm='winograd'`` on the
CPU backend (``'direct'`` elsewhere) and ``--materialize-blocks auto`` with
``materialize_blocks=True`` on the CPU backend (``False`` elsewhere); give ``direct`` / ``off`` to
measure without them.

``--threads 1`` restricts XLA's CPU backend to one thread (set before JAX starts), for comparison
with single-core figures; ``taskset -c 0`` additionally pins the process to one core.
``--eigen-convs`` sets ``--xla_cpu_experimental_ynn_fusion_type=``, running convolutions with XLA's
Eigen kernels rather than its YNNPACK fusions (on a 2-core AMD EPYC: slightly faster training
steps with one thread, slower with two). ``--profile`` (CPU backend) traces one training step with
the JAX profiler and sums the time of XLA's operations by kind: convolutions in forward layout (the
forward pass and the input gradient), kernel-gradient convolutions (whose window is the whole
image), layout transposes and copies, matrix products, and the remaining element-wise and reduction
fusions. Convolutions computed by Winograd (``sde_jax.models.winograd``, the wide 3x3 ones with
``conv_algorithm='winograd'``) count as matrix products plus the element-wise fusions of their
transforms.

``--host-malloc`` applies :mod:`sde_jax.programs.host_malloc`'s policy before JAX starts, as ``main.py`` does
with ``config.host_malloc`` (default ``auto``: on the CPU backend, glibc keeps freed memory in the
process, so XLA's per-call temporary buffer, 2.15 GB for the DDPM++ training step at batch 8, is
not mapped and first-touched afresh on every call). ``--host-malloc default`` measures glibc's
own behaviour. ``--glibc-tunables glibc.malloc.hugetlb=1`` re-runs the benchmark with that
``GLIBC_TUNABLES`` setting (transparent huge pages for large mappings), another way to cut those
page faults, which needs the environment variable set before the process starts.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

# Imports no JAX: the malloc policy must be applied before JAX starts.
from sde_jax.programs import host_malloc


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument(
        "--models",
        nargs="+",
        default=["ddpmpp", "ncsnpp"],
        choices=["ddpmpp", "ncsnpp", "ddpm"],
    )
    p.add_argument("--threads", type=int, default=None, help="XLA CPU threads (default: all)")
    p.add_argument(
        "--eigen-convs",
        action="store_true",
        help="CPU: run convolutions with XLA's Eigen kernels instead of its YNNPACK fusions",
    )
    p.add_argument("--skip-train", action="store_true", help="time the forward pass only")
    p.add_argument(
        "--profile",
        action="store_true",
        help="CPU: trace one training step and print where its time goes, by kind of operation",
    )
    p.add_argument(
        "--host-malloc",
        default="auto",
        choices=host_malloc.POLICIES,
        help="glibc malloc policy (sde_jax.programs.host_malloc; main.py's config.host_malloc)",
    )
    p.add_argument(
        "--conv-algorithm",
        default="auto",
        choices=["auto", "direct", "winograd"],
        help="the networks' conv_algorithm; auto: 'winograd' on the CPU backend, else 'direct'",
    )
    p.add_argument(
        "--materialize-blocks",
        default="auto",
        choices=["auto", "on", "off"],
        help="the networks' materialize_blocks; auto: on with the CPU backend, else off",
    )
    p.add_argument(
        "--glibc-tunables",
        default=None,
        help="re-run with this GLIBC_TUNABLES value, e.g. glibc.malloc.hugetlb=1",
    )
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.glibc_tunables is not None and os.environ.get("GLIBC_TUNABLES") != ARGS.glibc_tunables:
    # glibc reads its tunables once, when the process starts: start again with them set.
    os.environ["GLIBC_TUNABLES"] = ARGS.glibc_tunables
    os.execv(sys.executable, [sys.executable, *sys.argv])
# XLA flags must be set before the XLA CPU client is created.
if ARGS.threads is not None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={'false' if ARGS.threads == 1 else 'true'}"
        + f" intra_op_parallelism_threads={ARGS.threads}"
    )
if ARGS.eigen_convs:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type="
    )

HOST_MALLOC_APPLIED = host_malloc.apply_policy(ARGS.host_malloc)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from sde_jax.models import make_score_fn  # noqa: E402
from sde_jax.models.presets import preset  # noqa: E402
from sde_jax.sde import VESDE, VPSDE  # noqa: E402

CONFIGS = {
    # name: (preset key, SDE, reduce_mean)
    "ddpmpp": ("vp/cifar10_ddpmpp_continuous", VPSDE(), True),
    "ncsnpp": ("ve/cifar10_ncsnpp_continuous", VESDE(), False),
    "ddpm": ("vp/ddpm/cifar10_continuous", VPSDE(), True),
}


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "xla_threads": ARGS.threads or "all",
        "xla_flags": os.environ.get("XLA_FLAGS", "").strip(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "host_malloc": f"{ARGS.host_malloc} ({'keep' if HOST_MALLOC_APPLIED else 'glibc default'})",
        **compute_fields(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of one call, in seconds.

    On a shared machine the CPU time of a single-threaded run is the more robust figure: time
    slices lost to other processes inflate the wall time only.
    """
    jax.block_until_ready(fn(*args))  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus)


def dsm_loss(sde, score_fn, reduce_mean, params, key, x0):
    k_t, k_z, k_drop = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (x0.shape[0],), minval=1e-5, maxval=1.0)
    z = jax.random.normal(k_z, x0.shape)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None, None, None] * z
    score = score_fn({"params": params}, xt, t, train=True, key=k_drop)
    sq = ((score * std[:, None, None, None] + z) ** 2).reshape(x0.shape[0], -1)
    per_example = jnp.mean(sq, -1) if reduce_mean else 0.5 * jnp.sum(sq, -1)
    return jnp.mean(per_example)


def compute_fields() -> dict:
    """The networks' compute fields for this backend and the command line."""
    on_cpu = jax.default_backend() == "cpu"
    algorithm = ARGS.conv_algorithm
    materialize = ARGS.materialize_blocks
    return {
        "conv_algorithm": ("winograd" if on_cpu else "direct")
        if algorithm == "auto"
        else algorithm,
        "materialize_blocks": on_cpu if materialize == "auto" else materialize == "on",
    }


def bench(name: str) -> dict:
    key, sde, reduce_mean = CONFIGS[name]
    model = preset(key, **compute_fields())
    b = ARGS.batch
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (b, 32, 32, 3))
    if model.centered:
        x0 = 2 * x0 - 1
    t = jnp.full((b,), 0.5)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x0, t)["params"]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    score_fn = make_score_fn(sde, model)
    result = {"model": name, "preset": key, "batch": b, "params": n_params}

    forward = jax.jit(lambda p, x, t: score_fn({"params": p}, x, t))
    start = time.perf_counter()
    compiled = forward.lower(params, x0, t).compile()
    result["forward_compile_s"] = time.perf_counter() - start
    result["forward_gflop"] = flops_of(compiled) / 1e9
    result["forward_s"], result["forward_cpu_s"] = timed(
        compiled, params, x0, t, repeats=ARGS.repeats
    )
    result["forward_gflops_per_s"] = result["forward_gflop"] / result["forward_s"]
    print_row(result, "forward")

    if not ARGS.skip_train:
        opt = optax.adam(2e-4, b1=0.9, eps=1e-8)
        opt_state = opt.init(params)

        def train_step(params, opt_state, key, x0):
            loss, grads = jax.value_and_grad(
                lambda p: dsm_loss(sde, score_fn, reduce_mean, p, key, x0)
            )(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        step = jax.jit(train_step, donate_argnums=(0, 1))
        k = jax.random.PRNGKey(2)
        start = time.perf_counter()
        compiled = step.lower(params, opt_state, k, x0).compile()
        result["train_compile_s"] = time.perf_counter() - start
        result["train_gflop"] = flops_of(compiled) / 1e9
        state = [params, opt_state]

        def run():
            state[0], state[1], loss = compiled(state[0], state[1], k, x0)
            return loss

        result["first_loss"] = float(run())
        result["train_step_s"], result["train_step_cpu_s"] = timed(run, repeats=ARGS.repeats)
        result["train_gflops_per_s"] = result["train_gflop"] / result["train_step_s"]
        print_row(result, "train")
        if ARGS.profile:
            result["train_step_profile_ms"] = profile(run, compiled.as_text())
    return result


def _classify(body: str) -> str:
    """The kind of one XLA CPU operation, from the HLO text of its fused computation."""
    conv = re.search(r"convolution\(.*window=\{size=(\d+)x(\d+)", body)
    if conv:
        # A kernel gradient is a convolution whose "window" is the image (the activations play
        # the role of the kernel); forward and input-gradient convolutions have a 3x3 or 1x1 one.
        big = int(conv.group(1)) * int(conv.group(2)) > 9
        return "conv kernel-gradient" if big else "conv forward/input-gradient"
    if " dot(" in body:
        return "matrix product"
    if re.search(r" (transpose|copy)\(", body) and not re.search(
        r" (add|multiply|subtract|divide|exponential|reduce)\(", body
    ):
        return "transpose/copy"
    return "element-wise/reduction"


def profile(run, hlo_text: str) -> dict[str, float]:
    """Traces one call of ``run`` and prints (and returns) milliseconds per kind of operation."""
    if jax.default_backend() != "cpu":
        print("--profile: only the CPU backend's operation names are understood; skipped")
        return {}
    computations, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = computations.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    bodies = {}
    for line in hlo_text.splitlines():
        op = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", line)
        if op:
            called = re.search(r"calls=%?([\w.\-]+)", op.group(2))
            bodies[op.group(1)] = (
                "\n".join(computations.get(called.group(1), [])) if called else " " + op.group(2)
            )
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(run())
        (trace_file,) = glob.glob(
            os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True
        )
        with gzip.open(trace_file) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in bodies:
            total[_classify(bodies[e["name"]])] += e.get("dur", 0) / 1e3
    all_ms = sum(total.values())
    for kind, ms in total.most_common():
        print(f"    {kind:28s} {ms:8.1f} ms  {100 * ms / all_ms:5.1f} %")
    return dict(total)


def print_row(r: dict, kind: str) -> None:
    if kind == "forward":
        print(
            f"{r['model']:8s} forward     {r['forward_s']:8.3f} s  "
            f"(cpu {r['forward_cpu_s']:.3f} s)  {r['forward_gflop']:6.1f} GFLOP  "
            f"{r['forward_gflops_per_s']:7.1f} GFLOP/s  (compile {r['forward_compile_s']:.1f} s, "
            f"{r['params']:,} params, batch {r['batch']})",
            flush=True,
        )
    else:
        print(
            f"{r['model']:8s} train step  {r['train_step_s']:8.3f} s  "
            f"(cpu {r['train_step_cpu_s']:.3f} s)  {r['train_gflop']:6.1f} GFLOP  "
            f"{r['train_gflops_per_s']:7.1f} GFLOP/s  (compile {r['train_compile_s']:.1f} s, "
            f"first loss {r['first_loss']:.4g})",
            flush=True,
        )


def main() -> int:
    hw = hardware()
    print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)
    results = [bench(name) for name in ARGS.models]
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"hardware": hw, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
