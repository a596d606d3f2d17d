"""On-device likelihood (one diffrax solve) against a host-side scipy RK45 solve.

The host-side solve is how the paper's code computes likelihoods: scipy's ``solve_ivp`` calls a
jitted vector field (drift and Hutchinson divergence) once per evaluation, copying the state between
host and device each time. Both use the same network, data, probe and tolerances.
Run: ``python benchmarks/likelihood_vs_scipy.py [--batch 16] [--size 16]``.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, block, hardware, small_score_fn
from scipy import integrate

from sde_jax.likelihood import log_likelihood
from sde_jax.sde import VPSDE


def scipy_log_likelihood(score_fn, sde, x, probe, rtol, atol, eps):
    shape = x.shape
    rsde = sde.reverse(score_fn, probability_flow=True)

    @jax.jit
    def field(t, y):
        y = jnp.reshape(y[: x.size], shape)
        drift = lambda v: rsde.sde(v, jnp.full((shape[0],), t))[0]
        f, jv = jax.jvp(drift, (y,), (probe,))
        div = jnp.sum(jnp.reshape(jv * probe, (shape[0], -1)), axis=-1)
        return jnp.concatenate([jnp.reshape(f, (-1,)), div])

    calls = [0]

    def host_field(t, y):
        calls[0] += 1
        return np.asarray(field(jnp.float32(t), jnp.asarray(y, jnp.float32)), np.float64)

    y0 = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(shape[0])])
    sol = integrate.solve_ivp(host_field, (eps, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
    z = jnp.reshape(jnp.asarray(sol.y[: x.size, -1], jnp.float32), shape)
    delta = jnp.asarray(sol.y[x.size :, -1], jnp.float32)
    return sde.prior_logp(z) + delta, sol.nfev


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    shape = (args.batch, args.size, args.size, 3)
    sde = VPSDE()
    score_fn = small_score_fn(sde, shape)
    x = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    key = jax.random.key(1)
    probe = jax.random.rademacher(key, shape, jnp.float32)
    tol, eps = 1e-5, 1e-5
    print(hardware())
    print(f"VP SDE, SmallScoreNet, batch {shape}, RK45/Dopri5 at rtol = atol = {tol}")

    run = lambda: block(log_likelihood(key, score_fn, sde, x, rtol=tol, atol=tol, eps=eps))
    logp, _, nfe = run()
    t_diffrax = best_time(run, repeats=2)

    scipy_log_likelihood(score_fn, sde, x, probe, tol, tol, eps)  # Compiles the vector field.
    start = time.perf_counter()
    logp_sp, nfe_sp = scipy_log_likelihood(score_fn, sde, x, probe, tol, tol, eps)
    t_scipy = time.perf_counter() - start

    print(f"{'solver':26s} {'NFE':>6s} {'time s':>8s} {'ms/NFE':>7s}")
    print(
        f"{'diffrax Dopri5 on device':26s} {int(nfe):6d} {t_diffrax:8.3f} "
        f"{1e3 * t_diffrax / int(nfe):7.3f}"
    )
    print(f"{'scipy RK45 on host':26s} {nfe_sp:6d} {t_scipy:8.3f} {1e3 * t_scipy / nfe_sp:7.3f}")
    print(
        f"ratios scipy / diffrax: NFE {nfe_sp / int(nfe):.2f}, wall time {t_scipy / t_diffrax:.2f}"
    )
    # log_likelihood draws its probe from `key` exactly as above, so both solve the same ODE.
    print(
        f"max |logp difference| between the two solves: "
        f"{float(jnp.max(jnp.abs(logp - logp_sp))):.2e} nats"
    )


if __name__ == "__main__":
    main()
