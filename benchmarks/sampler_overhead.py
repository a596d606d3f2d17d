"""The samplers' own overhead: total sampling time over (NFE x time of one score evaluation).

A ratio near 1.0 means the sampler adds almost nothing to the network's cost: no host round trips,
no per-step dispatch. Run: ``python benchmarks/sampler_overhead.py [--batch 16] [--size 16]``.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
from common import best_time, block, hardware, small_score_fn

from sde_jax.sampling import ode_sample, pc_sample
from sde_jax.sde import VESDE, VPSDE


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="N of the SDE (PC steps)")
    args = parser.parse_args()
    shape = (args.batch, args.size, args.size, 3)
    print(hardware())
    print(f"score network: SmallScoreNet, batch {shape}")

    # One score evaluation, timed inside a device loop so that dispatch is not counted.
    reps = 50

    rows = []
    x0 = jnp.ones(shape)
    for sde in (VPSDE(N=args.steps), VESDE(N=args.steps)):
        name = type(sde).__name__
        score_fn = small_score_fn(sde, shape)

        @jax.jit
        def chain(x, score_fn=score_fn):
            t = jnp.full((shape[0],), 0.5)
            return jax.lax.fori_loop(0, reps, lambda i, y: y + 1e-3 * score_fn(y, t), x)

        t_eval = best_time(lambda chain=chain: block(chain(x0))) / reps
        print(f"{name}: one score evaluation {t_eval * 1e3:.3f} ms")
        for pred, corr in (("reverse_diffusion", "langevin"), ("euler_maruyama", "none")):
            run = functools.partial(
                pc_sample, score_fn=score_fn, sde=sde, shape=shape, predictor=pred, corrector=corr
            )
            nfe = int(run(jax.random.key(0))[1])
            t = best_time(lambda run=run: block(run(jax.random.key(1))))
            rows.append((f"pc {name} {pred}+{corr}", nfe, t, t_eval))
        run = functools.partial(
            ode_sample, score_fn=score_fn, sde=sde, shape=shape, rtol=1e-3, atol=1e-3
        )
        nfe = int(run(jax.random.key(0))[1])
        t = best_time(lambda run=run: block(run(jax.random.key(0))))
        rows.append((f"ode {name} dopri5 (tol 1e-3)", nfe, t, t_eval))
    print(f"{'sampler':44s} {'NFE':>6s} {'time s':>8s} {'NFE x eval s':>13s} {'ratio':>6s}")
    for name, nfe, t, t_eval in rows:
        ideal = nfe * t_eval
        print(f"{name:44s} {nfe:6d} {t:8.3f} {ideal:13.3f} {t / ideal:6.2f}")


if __name__ == "__main__":
    main()
