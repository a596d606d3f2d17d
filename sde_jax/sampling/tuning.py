r"""Noise levels fitted to one model, one sampler and one budget.

A few-step sampler with :math:`n` levels (:mod:`sde_jax.sampling.levels`) maps each prior sample
:math:`y_T` to a sample through a fixed chain of :math:`n` denoiser calls; how close that map is to
the probability-flow ODE's depends on where the steps are and on the bias each coarse step leaves,
and both depend on the model (where its denoiser bends) and on :math:`n`. :func:`optimize_levels`
fits the step levels :math:`s_i` and the levels :math:`q_i` at which each step evaluates the
denoiser (the samplers' ``levels`` and ``query_levels``) by gradient descent on the distance to the
ODE's own solution from the same prior samples, as LD3 does for the steps (Tong et al. 2025,
"Learning to discretize denoising diffusion ODEs"):

.. math:: \min_{s, q}\ \frac{1}{M}\sum_{m=1}^{M} \log\Big(
          \frac{\lVert \Phi_{s,q}(y_T^{(m)}) - \Phi_{\mathrm{ODE}}(y_T^{(m)}) \rVert^2}{d}
          + \tau\Big),

with :math:`\Phi_{s,q}` the sampler on levels :math:`s_0 = s(T) > s_1 > \dots > s_{n-1} =
s(\epsilon)` (then 0), :math:`\Phi_{\mathrm{ODE}}` an adaptive Dopri5 solve of the same ODE
(:func:`teacher_solve`) to :math:`s(\epsilon)` followed by the same final denoising step, and
:math:`d` the event size. The logarithm makes the loss the geometric mean of the samples' errors
rather than their mean: the mean square is dominated by the few prior samples whose trajectory ends
at another mode than the ODE's (errors of the size of the distance between modes), and fitting it
trades the accuracy of all the others for them. Measured on a 5-D mixture with component scales
0.05 to 0.5 (VP, DPM-Solver++(2M), 10 levels): fitted to the mean square, the held-out error fell
tenfold but the samples' log-density gap to exact samples was -0.40; fitted to the geometric mean,
-0.02 (PC with 1,000 steps: -0.06). The floor :math:`\tau` (``error_floor``, default
:math:`10^{-4}`: an error of 0.01 per coordinate, about one grey level of 8-bit images scaled to
:math:`[-1, 1]`) stops the fit from trading the samples between modes for ever finer agreement of
the others below anything visible: with the floor at sub-VP's :math:`s(\epsilon)^2 \approx 10^{-8}`
the ring mixture's samples came out too concentrated (gap +0.059 at 10 levels; with
:math:`10^{-4}`, -0.014; PC with 1,000 steps: -0.016).

Both ends of the steps stay fixed: a free last level would let the fit stop early, since the
posterior mean :math:`D(y; s)` at a larger :math:`s` is closer in mean square to any target and too
concentrated as a sample (measured with the mean-square loss on the ring mixture, VP, 10 levels,
steps only: with a free last level DPM-Solver++(2M) stopped at :math:`s = 0.16` and its samples'
log-density gap was +0.35; with the last level fixed, DPM-Solver++(3M)'s was -0.065). For the same
reason the last query level stays :math:`s(\epsilon)`, so the final step is the teacher's denoising
step (free, it ended at :math:`s = 0.13` in one fit, and with the default settings the samples came
out too concentrated, gap +0.056; fixed, -0.029 ± 0.009, against +0.005 ± 0.009 for exact samples).
The inner levels are :math:`\lambda_i = -\log s_i = \lambda_T + (\lambda_\epsilon -
\lambda_T)\sum_{j \le i}\operatorname{softmax}(\theta)_j` (:math:`n - 1` weights, one per step), so
any :math:`\theta` gives valid levels, and :math:`q_i = s_i e^{\delta_i}` (:math:`\delta_{n-1} =
0`). The start is one step from :math:`s(T)` to the largest distance between two of the teacher's
samples (Song & Ermon's rule for the largest noise level, applied to the model's own samples; at
most :math:`s(T)/2`), then equal steps in :math:`\log s`, with :math:`q = s`; on the digits model
it ended at a third lower held-out error than the same fit from the ``logsnr`` schedule (0.00102
against 0.00155). Nothing is needed beyond the score: the gradient flows through the sampler's own
compiled loop (its length is static when ``levels`` is given). A quarter of the prior samples are
held out and their loss is reported before and after, so an over-fitted schedule would show.

The result is a dict of the sampler's options ``levels`` and ``query_levels``, for the same method
and method options; the NFE is the method's for :math:`n` levels (``edm_heun``: :math:`2n - 1`, the
others :math:`n`).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sde_jax._checks import (
    check_bool,
    check_choice,
    check_eps,
    check_int,
    check_positive,
    check_sde,
)
from sde_jax.sampling.levels import denoiser, noise_to_signal, prior_level, scaled_prior_sample
from sde_jax.sampling.methods import sample
from sde_jax.sampling.ode import solve_ode
from sde_jax.sde import SDE, ScoreFn

Array = jax.Array

# The samplers whose output is a deterministic function of the prior sample: the ones a schedule
# can be fitted to sample by sample (``ddim`` only with ``eta = 0``).
TUNABLE_METHODS: tuple[str, ...] = ("edm_heun", "dpm_solver_2m", "dpm_solver_3m", "unipc", "ddim")


def teacher_solve(
    score_fn: ScoreFn,
    sde: SDE,
    y: Array,
    s_min: Array,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> tuple[Array, Array]:
    r"""The probability-flow ODE from the prior sample ``y`` (scaled, :math:`s = s(T)`) to
    :math:`s_{\min}` by Dopri5 with adaptive steps, in :math:`\lambda = -\log s`, where it reads
    :math:`\mathrm{d}y/\mathrm{d}\lambda = D(y; e^{-\lambda}) - y`, then the denoising step
    :math:`D(y; s_{\min})`: what a few-step sampler approximates. Returns ``(x [B, *event], nfe)``.
    """

    def field(lam, y, args):
        return denoiser(sde, score_fn, y, jnp.exp(-lam)) - y

    lam_top, lam_min = -jnp.log(prior_level(sde)), -jnp.log(s_min)
    y, nfe = solve_ode(
        field, y, lam_top, lam_min, solver="dopri5", rtol=rtol, atol=atol, max_steps=max_steps
    )
    return denoiser(sde, score_fn, y, s_min), nfe + 1


def levels_from_weights(sde: SDE, theta: Array, eps: Array) -> Array:
    r"""The levels ``[n]`` of the weights :math:`\theta` ``[n - 1]`` (see the module):
    :math:`s_0 = s(T)`, :math:`s_{n-1} = s(\epsilon)` and :math:`\lambda_i` at the cumulative
    softmax of :math:`\theta` between :math:`\lambda_T` and :math:`\lambda_\epsilon`."""
    lam_top = -jnp.log(prior_level(sde))
    lam_eps = -jnp.log(noise_to_signal(sde, eps))
    fractions = jnp.cumsum(jax.nn.softmax(theta))[:-1]
    lam = lam_top + (lam_eps - lam_top) * fractions
    return jnp.concatenate([prior_level(sde)[None], jnp.exp(-lam), noise_to_signal(sde, eps)[None]])


def _spread(x: Array) -> Array:
    """The largest distance between two of the samples ``x [M, *event]``."""
    x = jnp.reshape(x, (x.shape[0], -1))
    sq = jnp.sum(x**2, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return jnp.sqrt(jnp.max(d2))


def _start_weights(sde: SDE, s_start: Array, eps: Array, n: int) -> Array:
    r"""The weights :math:`\theta` ``[n - 1]`` of the start: one step from :math:`s(T)` to
    ``s_start``, then equal steps in :math:`\log s` to :math:`s(\epsilon)`."""
    lam_top = -jnp.log(prior_level(sde))
    lam_start = -jnp.log(s_start)
    lam_eps = -jnp.log(noise_to_signal(sde, eps))
    # Kept inside (0, 1) so that every weight is positive, even for collapsed samples (spread 0).
    first = jnp.clip((lam_start - lam_top) / (lam_eps - lam_top), 1e-3, 1.0 - 1e-3)
    rest = jnp.full((n - 2,), (1.0 - first) / (n - 2))
    return jnp.log(jnp.concatenate([first[None], rest])).astype(jnp.float32)


def optimize_levels(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    method: str,
    num_steps: int,
    eps: float | None = None,
    fit_queries: bool = True,
    iterations: int = 2000,
    learning_rate: float = 0.05,
    error_floor: float = 1e-4,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    **options: Any,
) -> tuple[dict[str, Array], dict[str, Any]]:
    r"""Levels for ``method`` with ``num_steps`` levels, fitted to ``score_fn`` (see the module).

    Args:
        key: PRNG key of the prior samples (the first three quarters fit, the rest validate).
        score_fn: ``score_fn(x, t) -> score``.
        sde: the forward SDE.
        shape: ``(M, *event)``: ``M`` prior samples (at least 4), each of the event shape.
        method: a key of :data:`TUNABLE_METHODS`.
        num_steps: the number of levels :math:`n \ge 2`.
        eps: the smallest time: the last level is :math:`s(\epsilon)`, where the teacher ends
            too (default ``sde.sampling_eps``).
        fit_queries: fit the query levels :math:`q` too; False fits the steps alone.
        iterations: Adam steps on the full fitting set; the parameters with the lowest fitting
            loss seen are kept.
        learning_rate: Adam's step size on :math:`(\theta, \delta)`.
        error_floor: the floor of the loss, a squared distance per coordinate in data units
            (see the module).
        rtol, atol: the teacher's tolerances.
        **options: the method's other options (``order``, ``lower_order_final``; ``eta`` must be 0
            if given); not those of the levels or ``z``.

    Returns:
        ``(fitted, report)``: ``fitted`` the sampler options ``{"levels": [n], "query_levels":
        [n]}`` (float32; without ``query_levels`` when ``fit_queries`` is False), to pass as
        ``sample(..., method=method, **options, **fitted)``; ``report`` a dict of the run (plain
        numbers): the error (the geometric mean over samples of the squared distance per coordinate
        to the teacher, plus ``error_floor``) on the fitting and held-out samples at the
        start and the end, the teacher's and the sampler's NFE, and
        the seconds taken.
    """
    check_sde(sde)
    check_choice("method", method, TUNABLE_METHODS)
    n = check_int("num_steps", num_steps, 2)
    check_int("iterations", iterations, 1)
    check_positive("learning_rate", learning_rate)
    check_positive("error_floor", error_floor)
    check_bool("fit_queries", fit_queries)
    if len(shape) < 2 or shape[0] < 4:
        raise ValueError(f"`shape` must be (M, *event) with M >= 4 samples; got {shape}.")
    own = {"num_steps", "rho", "schedule", "s_max", "levels", "query_levels", "eps", "z"}
    taken = sorted(set(options) & own)
    if taken:
        raise ValueError(f"`optimize_levels` sets {taken} itself; do not pass them as options.")
    if options.get("eta", 0.0) != 0.0:
        raise ValueError("`optimize_levels` needs a deterministic sampler: `eta` must be 0.")
    eps = jnp.asarray(check_eps(sde, eps), jnp.float32)
    start = time.perf_counter()
    n_fit = shape[0] - shape[0] // 4
    z = sde.prior_sampling(key, shape)
    teacher, teacher_nfe = jax.jit(
        functools.partial(teacher_solve, score_fn, sde, rtol=rtol, atol=atol)
    )(scaled_prior_sample(sde, key, shape, z), noise_to_signal(sde, eps))
    # The sampler starts from the teacher's prior samples (its `z`).
    sampler = functools.partial(sample, key, score_fn, sde, shape, method=method, z=z, **options)

    def fitted(params):
        theta, delta = params
        levels = levels_from_weights(sde, theta, eps)
        if not fit_queries:
            return {"levels": levels}
        # The last query stays at s(eps): the final step is the teacher's denoising step.
        return {"levels": levels, "query_levels": levels * jnp.exp(delta.at[-1].set(0.0))}

    def losses(params):
        x, _ = sampler(**fitted(params))
        err = jnp.mean(jnp.reshape((x - teacher) ** 2, (shape[0], -1)), axis=1)
        log_err = jnp.log(err + error_floor)
        return jnp.mean(log_err[:n_fit]), jnp.mean(log_err[n_fit:])

    s_start = jnp.minimum(_spread(teacher[:n_fit]), 0.5 * prior_level(sde))
    params = (_start_weights(sde, s_start, eps, n), jnp.zeros((n,), jnp.float32))
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state):
        (fit, _), grads = jax.value_and_grad(losses, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, fit

    first_fit, first_held = jax.jit(losses)(params)
    opt_state, best, best_fit = optimizer.init(params), params, float(first_fit)
    for _ in range(iterations):
        new_params, opt_state, fit = step(params, opt_state)
        if float(fit) < best_fit:  # the loss at `params`, before this update
            best, best_fit = params, float(fit)
        params = new_params
    result = jax.jit(fitted)(best)
    fit, held = jax.jit(losses)(best)
    _, nfe = sampler(**result)
    report = {
        "method": method,
        "options": dict(options),
        "num_levels": n,
        "fit_queries": fit_queries,
        "nfe": int(nfe),
        "fit_samples": n_fit,
        "held_out_samples": shape[0] - n_fit,
        "iterations": iterations,
        "learning_rate": learning_rate,
        "teacher": {"solver": "dopri5", "rtol": rtol, "atol": atol, "nfe": int(teacher_nfe)},
        "eps": float(eps),
        "error_floor": error_floor,
        # The geometric means, exp(loss): squared distances per coordinate.
        "error_start": {"fit": math.exp(first_fit), "held_out": math.exp(first_held)},
        "error_end": {"fit": math.exp(fit), "held_out": math.exp(held)},
        "seconds": time.perf_counter() - start,
    }
    return result, report
