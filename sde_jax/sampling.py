r"""Samplers for score-based models: predictor–corrector (PC) and probability-flow ODE.

Both take a plain ``score_fn(x, t)`` with ``x`` ``[B, *event]`` and ``t`` ``[B]`` and run as one
compiled program: the PC loop is a :func:`jax.lax.fori_loop`, the ODE solve a diffrax
``diffeqsolve``. Each entry point is jitted with the score function, the shape and the method names
static, so repeated calls with the same arguments reuse one executable. Pass the same
``score_fn`` object on every call (e.g. a ``functools.partial`` built once): a new closure per call is
a new static argument and compiles again.

Predictors (one step of the reverse-time SDE from :math:`t_i` down to the next time):

- ``euler_maruyama``: :math:`x \leftarrow x - \bar f\,\Delta t + \bar g \sqrt{\Delta t}\,z`,
  :math:`\Delta t = T/N`, with the reverse drift :math:`\bar f = f - g^2 s_\theta`;
- ``reverse_diffusion``: the forward discretization reversed (paper eq. 45),
  :math:`x \leftarrow x - f_i + G_i^2 s_\theta + G_i z`;
- ``ancestral_sampling``: the SMLD / DDPM ancestral step (paper eqs. 47 and 48), VE and VP only;
- ``none``.

Correctors (``n_steps`` Langevin MCMC steps at the same time :math:`t_i`):

- ``langevin``: step size :math:`\epsilon = 2\alpha_i(r\|z\|/\|s_\theta\|)^2` from the target
  signal-to-noise ratio :math:`r` (paper Algorithms 4 and 5), with both norms averaged over the batch
  as in the paper's code: per-sample norms make the step explode for samples where the score is
  nearly zero, which is common in low dimension. :math:`\alpha_i = 1 - \beta_i` for VP and sub-VP
  (whose noise schedule is the same) and 1 for VE;
- ``ald``: annealed Langevin dynamics with :math:`\epsilon = 2\alpha_i (r\,s(t))^2`;
- ``none``.

With ``denoise=True`` the sample returned is the mean of the last update, without its noise, which
is Tweedie's denoising step at :math:`t = \epsilon` for ``reverse_diffusion``.

:func:`sample` is one entry point for these and the few-step samplers of
:mod:`sde_jax.fast_sampling` (EDM Heun, DPM-Solver++(2M) and (3M), UniPC, DDIM):
``sample(key, score_fn, sde, shape, method=..., **options)`` with ``method`` a key of
:data:`METHODS`.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from sde_jax import fast_sampling
from sde_jax.sde import SDE, VESDE, VPSDE, ScoreFn, SubVPSDE, batch_broadcast

Array = jax.Array


def _normal(key: Array, x: Array) -> Array:
    return jax.random.normal(key, x.shape, x.dtype)


def _per_sample_norm(v: Array) -> Array:
    return jnp.linalg.norm(jnp.reshape(v, (v.shape[0], -1)), axis=-1)


# ---------------------------------------------------------------------------------------------
# Predictors: (key, sde, score_fn, x, t, probability_flow) -> (x, x_mean).


def euler_maruyama_predictor(key, sde: SDE, score_fn: ScoreFn, x, t, probability_flow=False):
    """One Euler–Maruyama step of the reverse SDE (or Euler step of the probability-flow ODE)."""
    dt = sde.T / sde.N
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x - drift * dt
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(diffusion * math.sqrt(dt), x) * _normal(key, x), x_mean


def reverse_diffusion_predictor(key, sde: SDE, score_fn: ScoreFn, x, t, probability_flow=False):
    """One step of the reversed forward discretization (paper eq. 45)."""
    f, g = sde.reverse(score_fn, probability_flow).discretize(x, t)
    x_mean = x - f
    if probability_flow:
        return x_mean, x_mean
    return x_mean + batch_broadcast(g, x) * _normal(key, x), x_mean


def ancestral_sampling_predictor(key, sde: SDE, score_fn: ScoreFn, x, t, probability_flow=False):
    """The ancestral sampling step of SMLD (VE, paper eq. 47) or DDPM (VP, eq. 48)."""
    del probability_flow  # Rejected by `_validate`: ancestral sampling is stochastic by definition.
    score = score_fn(x, t)
    if isinstance(sde, VESDE):
        sigma, adjacent = sde.adjacent_sigmas(t)
        x_mean = x + batch_broadcast(sigma**2 - adjacent**2, x) * score
        std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    else:
        i = (t * (sde.N - 1) / sde.T).astype(jnp.int32)
        beta = sde.discrete_betas[i]
        x_mean = (x + batch_broadcast(beta, x) * score) / batch_broadcast(jnp.sqrt(1.0 - beta), x)
        std = jnp.sqrt(beta)
    return x_mean + batch_broadcast(std, x) * _normal(key, x), x_mean


def denoise_step(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """The noise-free mean of a reverse-diffusion step, :math:`x - f_i + G_i^2 s_\\theta(x, t)`."""
    f, _ = sde.reverse(score_fn).discretize(x, t)
    return x - f


def none_predictor(key, sde, score_fn, x, t, probability_flow=False):
    """Leaves ``x`` unchanged (corrector-only sampling)."""
    del key, sde, score_fn, t, probability_flow
    return x, x


# ---------------------------------------------------------------------------------------------
# Correctors: (key, sde, score_fn, x, t, snr, n_steps) -> (x, x_mean).


def _corrector_alpha(sde: SDE, t: Array) -> Array:
    if isinstance(sde, VPSDE | SubVPSDE):
        return sde.alphas[(t * (sde.N - 1) / sde.T).astype(jnp.int32)]
    return jnp.ones_like(t)


def _langevin_loop(key, sde: SDE, score_fn: ScoreFn, x, t, n_steps, step_size_fn):
    alpha = _corrector_alpha(sde, t)

    def body(i, carry):
        x, _ = carry
        grad = score_fn(x, t)
        noise = _normal(jax.random.fold_in(key, i), x)
        step = step_size_fn(grad, noise) * alpha
        x_mean = x + batch_broadcast(step, x) * grad
        return x_mean + batch_broadcast(jnp.sqrt(2.0 * step), x) * noise, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


def langevin_corrector(key, sde: SDE, score_fn: ScoreFn, x, t, snr, n_steps):
    """Langevin MCMC with the step size set by the target signal-to-noise ratio ``snr``."""

    def step_size(grad, noise):
        ratio = jnp.mean(_per_sample_norm(noise)) / jnp.mean(_per_sample_norm(grad))
        return jnp.full(grad.shape[:1], 2.0 * (snr * ratio) ** 2)

    return _langevin_loop(key, sde, score_fn, x, t, n_steps, step_size)


def ald_corrector(key, sde: SDE, score_fn: ScoreFn, x, t, snr, n_steps):
    """Annealed Langevin dynamics (Song & Ermon 2019) with step :math:`2(r\\,s(t))^2`."""
    std = sde.marginal_coefs(t)[1]
    return _langevin_loop(key, sde, score_fn, x, t, n_steps, lambda g, z: 2.0 * (snr * std) ** 2)


def none_corrector(key, sde, score_fn, x, t, snr, n_steps):
    """Leaves ``x`` unchanged (predictor-only sampling)."""
    del key, sde, score_fn, t, snr, n_steps
    return x, x


PREDICTORS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama_predictor,
    "reverse_diffusion": reverse_diffusion_predictor,
    "ancestral_sampling": ancestral_sampling_predictor,
    "none": none_predictor,
}
CORRECTORS: dict[str, Callable] = {
    "langevin": langevin_corrector,
    "ald": ald_corrector,
    "none": none_corrector,
}
SOLVERS: dict[str, type[diffrax.AbstractAdaptiveSolver]] = {
    "dopri5": diffrax.Dopri5,
    "tsit5": diffrax.Tsit5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "ralston": diffrax.Ralston,
}


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {sorted(allowed)}; got {value!r}.")


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"`shape` must be (B, *event) with positive ints; got {shape}.")
    return shape


def _check_eps(sde: SDE, eps: float | None) -> float:
    eps = sde.sampling_eps if eps is None else eps
    if not 0.0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T={sde.T}); got {eps}.")
    return eps


def pc_nfe(sde: SDE, predictor: str, corrector: str, n_steps: int) -> int:
    """Score evaluations of one PC sample: ``N`` times (predictor + ``n_steps`` correctors)."""
    return sde.N * ((predictor != "none") + (corrector != "none") * n_steps)


def pc_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    eps: float | None = None,
    denoise: bool = True,
    probability_flow: bool = False,
) -> tuple[Array, Array]:
    r"""Predictor–corrector sampling (paper Algorithm 1) on the time grid
    :math:`t_i = T - i(T - \epsilon)/(N - 1)`, :math:`i = 0, \dots, N-1`.

    Args:
        key: PRNG key.
        score_fn: ``score_fn(x, t) -> score``.
        sde: the forward SDE; its ``N`` is the number of PC steps.
        shape: ``(B, *event)``.
        predictor: one of :data:`PREDICTORS`.
        corrector: one of :data:`CORRECTORS`.
        snr: the correctors' signal-to-noise ratio :math:`r`.
        n_steps: corrector steps per time step.
        eps: the last time of the grid; defaults to ``sde.sampling_eps``.
        denoise: return the last update's mean (no final noise).
        probability_flow: the predictor follows the probability-flow ODE instead of the SDE.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe`` the number of score evaluations per sample.
    """
    _choice("predictor", predictor, PREDICTORS)
    _choice("corrector", corrector, CORRECTORS)
    if predictor == "none" and corrector == "none":
        raise ValueError("`predictor` and `corrector` cannot both be 'none'.")
    if predictor == "ancestral_sampling" and not isinstance(sde, VESDE | VPSDE):
        raise ValueError(
            "`predictor='ancestral_sampling'` is defined for VESDE and VPSDE only; "
            f"got {type(sde).__name__}. Use 'reverse_diffusion' or 'euler_maruyama'."
        )
    if predictor == "ancestral_sampling" and probability_flow:
        raise ValueError("`predictor='ancestral_sampling'` does not support probability_flow=True.")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"`n_steps` must be a positive int; got {n_steps!r}.")
    samples = _pc_sample(
        key,
        sde,
        jnp.asarray(snr, jnp.float32),
        jnp.asarray(_check_eps(sde, eps), jnp.float32),
        score_fn=score_fn,
        shape=_check_shape(shape),
        predictor=predictor,
        corrector=corrector,
        n_steps=n_steps,
        denoise=denoise,
        probability_flow=probability_flow,
    )
    return samples, jnp.asarray(pc_nfe(sde, predictor, corrector, n_steps), jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=(
        "score_fn",
        "shape",
        "predictor",
        "corrector",
        "n_steps",
        "denoise",
        "probability_flow",
    ),
)
def _pc_sample(
    key, sde, snr, eps, *, score_fn, shape, predictor, corrector, n_steps, denoise, probability_flow
):
    return pc_loop(
        key, sde, score_fn, snr, eps, shape=shape, predictor=predictor, corrector=corrector,
        n_steps=n_steps, denoise=denoise, probability_flow=probability_flow,
    )  # fmt: skip


def pc_loop(
    key, sde, score_fn, snr, eps, *, shape, predictor, corrector, n_steps, denoise, probability_flow
):
    """The traced body of :func:`pc_sample` (checked arguments, no jit of its own), for samplers
    that run it under their own jit, e.g. with a score closing over traced labels."""
    predict = PREDICTORS[predictor]
    correct = CORRECTORS[corrector]
    k_prior, k_loop = jax.random.split(key)
    x = sde.prior_sampling(k_prior, shape)
    times = jnp.linspace(sde.T, eps, sde.N)

    def body(i, carry):
        x, _ = carry
        t = jnp.full((shape[0],), times[i])
        k_corr, k_pred = jax.random.split(jax.random.fold_in(k_loop, i))
        x, x_mean = correct(k_corr, sde, score_fn, x, t, snr, n_steps)
        if predictor == "none":
            # Corrector-only sampling denoises with the corrector's last mean.
            return x, x_mean
        return predict(k_pred, sde, score_fn, x, t, probability_flow)

    x, x_mean = jax.lax.fori_loop(0, sde.N, body, (x, x))
    return x_mean if denoise else x


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
    _choice("solver", solver, SOLVERS)
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


ODE_CONTROLLERS = ("pid", "fixed")


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
    schedule (Karras et al. 2022, eq. 5; :func:`sde_jax.fast_sampling.edm_schedule`): the ODE is
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
    _choice("solver", solver, SOLVERS)
    _choice("controller", controller, ODE_CONTROLLERS)
    shape = _check_shape(shape)
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
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(
                f"controller='fixed' needs `num_steps`, a positive int; got {num_steps!r}."
            )
        if num_steps > max_steps:
            raise ValueError(f"`num_steps` ({num_steps}) exceeds `max_steps` ({max_steps}).")
        rho = 7.0 if rho is None else rho
        if not rho > 0:
            raise ValueError(f"`rho` must be > 0; got {rho!r}.")
        fixed = dict(num_steps=jnp.asarray(num_steps, jnp.int32), rho=jnp.asarray(rho, jnp.float32))
    return _ode_sample(
        key,
        sde,
        z,
        jnp.asarray(_check_eps(sde, eps), jnp.float32),
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
    key,
    sde,
    z,
    eps,
    rtol,
    atol,
    *,
    score_fn,
    shape,
    solver,
    denoise,
    max_steps,
    num_steps=None,
    rho=None,
):
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
    s_max = fast_sampling.prior_level(sde)
    s_min = fast_sampling.noise_to_signal(sde, eps)
    return lambda u: fast_sampling.time_of(
        sde, fast_sampling.edm_schedule(u, num_steps + 1, s_max, s_min, rho)
    )


# ---------------------------------------------------------------------------------------------
# One entry point for every sampler.

METHODS: dict[str, Callable] = {
    "pc": pc_sample,
    "ode": ode_sample,
    "edm_heun": fast_sampling.edm_heun_sample,
    "edm_stochastic": fast_sampling.edm_stochastic_sample,
    "dpm_solver_2m": fast_sampling.dpm_solver_2m_sample,
    "dpm_solver_3m": fast_sampling.dpm_solver_3m_sample,
    "unipc": fast_sampling.unipc_sample,
    "ddim": fast_sampling.ddim_sample,
}


def method_options(method: str) -> tuple[str, ...]:
    """The keyword options that ``method`` (a key of :data:`METHODS`) takes."""
    _choice("method", method, METHODS)
    params = inspect.signature(METHODS[method]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    method: str,
    **options,
) -> tuple[Array, Array]:
    r"""Draws samples with any sampler of this library: ``METHODS[method](key, score_fn, sde,
    shape, **options)``.

    ============================  ===========================================  =====================
    ``method``                    reference                                    NFE per sample
    ============================  ===========================================  =====================
    ``pc``                        Song et al. 2021, Algorithm 1                ``N`` x (P + C steps)
    ``ode``                       Song et al. 2021, eq. 13 (diffrax; PID or    measured (PID),
                                  fixed EDM grid)                              ``solver_nfe(n)``
    ``edm_heun``                  Karras et al. 2022, Algorithm 1              ``2n - 1``
    ``edm_stochastic``            Karras et al. 2022, Algorithm 2              ``2n - 1``
    ``dpm_solver_2m``             Lu et al. 2022 (DPM-Solver++), Algorithm 2   ``n``
    ``dpm_solver_3m``             Lu et al. 2022 (DPM-Solver++), multistep,    ``n``
                                  order up to 3 (``order``)
    ``unipc``                     Zhao et al. 2023 (UniPC, bh2, UniP + UniC)   ``n``
    ``ddim``                      Song, Meng & Ermon 2021, eq. 12 (``eta``)    ``n``
    ============================  ===========================================  =====================

    Every method works for VE, VP and sub-VP SDEs (except ``pc`` with
    ``predictor="ancestral_sampling"``, VE and VP only) and any event shape, and runs as one
    compiled program. The few-step methods take a ``schedule`` of noise levels
    (:data:`sde_jax.fast_sampling.SCHEDULES`: ``edm``, ``logsnr``, ``time_uniform``,
    ``time_quadratic``; :func:`sde_jax.fast_sampling.schedule_level`) and ``s_max``, a noise level
    to jump to from the prior's before the schedule starts (about the largest distance between two
    data points: the steps then go where the data's structure forms).

    Args:
        key: PRNG key.
        score_fn: ``score_fn(x, t) -> score``.
        sde: the forward SDE.
        shape: ``(B, *event)``.
        method: a key of :data:`METHODS`.
        **options: the method's keyword options (:func:`method_options`); any other name is an
            error.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe`` the number of score evaluations per sample (int32).
    """
    allowed = method_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {method!r} takes no option(s) {unknown}; its options are {sorted(allowed)}."
        )
    return METHODS[method](key, score_fn, sde, shape, **options)
