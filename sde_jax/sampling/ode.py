r"""Sampling by the probability-flow ODE (paper eq. 13) with diffrax Runge–Kutta solvers.

:func:`ode_sample` is the sampler; :func:`solve_flow` is its traced body, which samplers with their
own jit (e.g. guided sampling, whose score closes over traced labels) reuse; :func:`solve_ode` is
the diffrax solve underneath, shared with the likelihood computation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from sde_jax._checks import check_choice, check_eps, check_int, check_positive, check_shape
from sde_jax.sampling.levels import edm_schedule, noise_to_signal, prior_level, time_of
from sde_jax.sampling.pc import denoise_step
from sde_jax.sde import SDE, ScoreFn

Array = jax.Array

SOLVERS: dict[str, type[diffrax.AbstractAdaptiveSolver]] = {
    "dopri5": diffrax.Dopri5,
    "tsit5": diffrax.Tsit5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "ralston": diffrax.Ralston,
}
ODE_CONTROLLERS = ("pid", "fixed")


def solver_nfe(solver: diffrax.AbstractSolver, num_steps: Array) -> Array:
    """Exact number of vector-field evaluations of an explicit Runge–Kutta diffrax solve.

    Every step (accepted or rejected) evaluates each stage once, except that a FSAL method reuses
    its last stage as the next step's first, for one evaluation at the start.
    """
    tableau = solver.tableau
    stages = len(tableau.c) + 1
    return (stages - 1) * num_steps + 1 if tableau.fsal else stages * num_steps


def solve_ode(
    vector_field: Callable,
    y0,
    t0: float | Array,
    t1: float | Array,
    *,
    solver: str,
    rtol: float | Array | None = None,
    atol: float | Array | None = None,
    max_steps: int,
    args=None,
    dt0: float | Array | None = None,
):
    """Diffrax solve of ``dy/dt = vector_field(t, y, args)`` from ``t0`` to ``t1``.

    With ``rtol`` and ``atol`` the steps are chosen by a PID controller; with ``dt0`` instead they
    are constant steps of ``dt0`` (one of the two, not both).

    Returns ``(y(t1), nfe)``. Errors (e.g. ``max_steps`` reached) are raised by diffrax.
    """
    check_choice("solver", solver, SOLVERS)
    adaptive = dt0 is None
    if adaptive != (rtol is not None and atol is not None) or (not adaptive and rtol is not None):
        raise ValueError("give either `rtol` and `atol` (adaptive steps) or `dt0` (fixed steps).")
    method = SOLVERS[solver]()
    if adaptive:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    else:
        controller = diffrax.ConstantStepSize()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        method,
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=args,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    y1 = jax.tree.map(lambda v: v[-1], sol.ys)
    return y1, solver_nfe(method, sol.stats["num_steps"])


def ode_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    solver: str = "dopri5",
    controller: str = "pid",
    rtol: float | None = None,
    atol: float | None = None,
    num_steps: int | None = None,
    rho: float | None = None,
    eps: float | None = None,
    denoise: bool = True,
    z: Array | None = None,
    max_steps: int = 4096,
) -> tuple[Array, Array]:
    r"""Samples by solving the probability-flow ODE (paper eq. 13) from :math:`T` to :math:`\epsilon`
    with a Runge–Kutta method, on adaptive steps (a PID controller) or a fixed grid.

    The fixed grid (``controller="fixed"``) has ``num_steps`` steps at the times of the EDM noise
    schedule (Karras et al. 2022, eq. 5; :func:`~sde_jax.sampling.levels.edm_schedule`): the ODE is
    solved in a variable :math:`u \in [0, n]` with :math:`t(u) = t(s_u)`,
    :math:`s_u = (s(T)^{1/\rho} + \tfrac{u}{n}(s(\epsilon)^{1/\rho} - s(T)^{1/\rho}))^\rho` and
    :math:`s = \sigma/\alpha` the noise-to-signal ratio, as
    :math:`\mathrm{d}x/\mathrm{d}u = \bar f(x, t(u))\,t'(u)` with unit steps in :math:`u`. The
    step count is traced, so a new budget does not compile again.

    Args:
        key: PRNG key for the prior sample (unused when ``z`` is given).
        score_fn: ``score_fn(x, t) -> score``.
        sde: the forward SDE.
        shape: ``(B, *event)``.
        solver: one of :data:`SOLVERS`; ``dopri5`` is the paper's RK45.
        controller: ``"pid"`` (adaptive steps; ``rtol``, ``atol``) or ``"fixed"`` (``num_steps``,
            ``rho``).
        rtol: relative tolerance of the PID controller (default 1e-5).
        atol: absolute tolerance of the PID controller (default 1e-5).
        num_steps: the fixed grid's number of steps (required with ``controller="fixed"``).
        rho: the fixed grid's schedule exponent (default 7).
        eps: the end time; defaults to ``sde.sampling_eps``.
        denoise: finish with one noise-free reverse-diffusion step at :math:`\epsilon` (one more
            score evaluation).
        z: a latent ``[B, *event]`` to decode deterministically instead of a prior sample.
        max_steps: the solver's step budget.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe`` the exact number of score evaluations (int32): for
        the fixed grid :func:`solver_nfe` of ``num_steps``, plus one for ``denoise``.
    """
    check_choice("solver", solver, SOLVERS)
    check_choice("controller", controller, ODE_CONTROLLERS)
    shape = check_shape(shape)
    if z is not None and tuple(z.shape) != shape:
        raise ValueError(f"`z` must have shape {shape}; got {tuple(z.shape)}.")
    fixed = {}
    if controller == "pid":
        if num_steps is not None or rho is not None:
            raise ValueError("`num_steps` and `rho` are options of controller='fixed', not 'pid'.")
        rtol = 1e-5 if rtol is None else rtol
        atol = 1e-5 if atol is None else atol
    else:
        if rtol is not None or atol is not None:
            raise ValueError("`rtol` and `atol` are options of controller='pid', not 'fixed'.")
        if num_steps is None:
            raise ValueError("controller='fixed' needs `num_steps`, a positive int.")
        check_int("num_steps", num_steps, 1)
        if num_steps > max_steps:
            raise ValueError(f"`num_steps` ({num_steps}) exceeds `max_steps` ({max_steps}).")
        rho = check_positive("rho", 7.0 if rho is None else rho)
        fixed = dict(num_steps=jnp.asarray(num_steps, jnp.int32), rho=jnp.asarray(rho, jnp.float32))
    return _ode_sample(
        key,
        sde,
        z,
        jnp.asarray(check_eps(sde, eps), jnp.float32),
        None if rtol is None else jnp.asarray(rtol, jnp.float32),
        None if atol is None else jnp.asarray(atol, jnp.float32),
        score_fn=score_fn,
        shape=shape,
        solver=solver,
        denoise=denoise,
        max_steps=max_steps,
        **fixed,
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "solver", "denoise", "max_steps"))
def _ode_sample(
    key, sde, z, eps, rtol, atol, *, score_fn, shape, solver, denoise, max_steps, num_steps=None,
    rho=None,
):  # fmt: skip
    return solve_flow(
        key, sde, score_fn, eps, shape=shape, solver=solver, denoise=denoise, max_steps=max_steps,
        z=z, rtol=rtol, atol=atol, num_steps=num_steps, rho=rho,
    )  # fmt: skip


def solve_flow(
    key, sde, score_fn, eps, *, shape, solver, denoise, max_steps, z=None, rtol=None, atol=None,
    num_steps=None, rho=None,
):  # fmt: skip
    """The traced body of :func:`ode_sample` (checked arguments, no jit of its own), for samplers
    that run it under their own jit: ``(x, nfe)``. Adaptive with ``rtol`` and ``atol``, on the
    fixed grid with ``num_steps`` and ``rho``."""
    x = sde.prior_sampling(key, shape) if z is None else z
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vector_field(t, x, args):
        return rsde.sde(x, jnp.full((shape[0],), t))[0]

    if num_steps is None:
        x, nfe = solve_ode(
            vector_field, x, sde.T, eps, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps
        )
    else:
        time_at = _fixed_grid_time(sde, num_steps, eps, rho)

        def grid_field(u, x, args):
            t, dt_du = jax.jvp(time_at, (u,), (jnp.ones_like(u),))
            return vector_field(t, x, args) * dt_du

        # Integer steps in u are exact in floating point, so the grid has exactly num_steps steps.
        x, nfe = solve_ode(
            grid_field,
            x,
            jnp.zeros((), jnp.float32),
            num_steps.astype(jnp.float32),
            solver=solver,
            dt0=jnp.ones((), jnp.float32),
            max_steps=max_steps,
        )
    if denoise:
        x = denoise_step(sde, score_fn, x, jnp.full((shape[0],), eps))
        nfe = nfe + 1
    return x, nfe.astype(jnp.int32)


def _fixed_grid_time(sde: SDE, num_steps: Array, eps: Array, rho: Array) -> Callable:
    r"""``u -> t(u)``: the time at the (continuous) position ``u`` of an EDM grid of ``num_steps``
    steps from :math:`T` to :math:`\epsilon`."""
    s_max = prior_level(sde)
    s_min = noise_to_signal(sde, eps)
    return lambda u: time_of(sde, edm_schedule(u, num_steps + 1, s_max, s_min, rho))
