r"""Multistep solvers of the data-prediction ODE in :math:`(y, s)`: DPM-Solver++ (2M, and 3M of
order up to 3) and UniPC.

With :math:`\lambda = -\log s` (half the log-SNR), :math:`h_i = \lambda_{i+1} - \lambda_i` and
:math:`D_i = D(y_i; s_i)`, each step is exact for :math:`D` held at a polynomial extrapolation of
the last denoiser values, so every step costs one score evaluation: NFE :math:`= n`. The options
they share with the other few-step samplers (``num_steps``, ``rho``, ``schedule``, ``eps``,
``s_max``, ``levels``, ``query_levels``, ``z``) and their return value are described in
:mod:`sde_jax.sampling.levels`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sde_jax._checks import check_bool
from sde_jax.sampling.levels import (
    Grid,
    check_levels,
    check_z,
    denoiser,
    jump_to_s_max,
    scaled_prior_sample,
)
from sde_jax.sde import SDE, ScoreFn

Array = jax.Array


def dpm_solver_2m_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    rho: float | None = None,
    schedule: str | None = None,
    eps: float | None = None,
    s_max: float | None = None,
    levels: Array | None = None,
    query_levels: Array | None = None,
    z: Array | None = None,
) -> tuple[Array, Array]:
    r"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of
    diffusion probabilistic models", Algorithm 2).

    The exact solution of the data-prediction ODE with :math:`D` held at a linear extrapolation is

    .. math:: y_{i+1} = \tfrac{s_{i+1}}{s_i}\,y_i + \big(1 - \tfrac{s_{i+1}}{s_i}\big)\,
              \big[(1 + \tfrac{1}{2r_i})D_i - \tfrac{1}{2r_i}D_{i-1}\big],
              \qquad r_i = h_{i-1}/h_i

    (:math:`x = \alpha y` turns this into the paper's form). The first step has no
    :math:`D_{i-1}` and the last (to :math:`s = 0`, :math:`h = \infty`) no finite :math:`r`, so
    both are first order (:math:`D_i` alone), as in the reference algorithm.
    """
    shape, schedule, args = check_levels(
        sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels,
        default_steps=20, default_schedule="edm",
    )  # fmt: skip
    return _dpm_solver_2m_sample(
        key, sde, args, check_z(z, shape), score_fn=score_fn, shape=shape, schedule=schedule
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "schedule"))
def _dpm_solver_2m_sample(key, sde, args, z0, *, score_fn, shape, schedule):
    grid = Grid(sde, schedule, args)
    y = scaled_prior_sample(sde, key, shape, z0)

    def step(i, carry):
        y, d_prev, h_prev = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        d = denoiser(sde, score_fn, y, grid.query(i, s))
        h = jnp.log(s / s_next)
        # r = h_prev / h; the first step (h_prev = 0 marks it) is first order.
        half_inv_r = jnp.where(h_prev == 0, 0.0, 0.5 * h / jnp.where(h_prev == 0, 1.0, h_prev))
        d_ext = (1.0 + half_inv_r) * d - half_inv_r * d_prev
        ratio = s_next / s
        return ratio * y + (1.0 - ratio) * d_ext, d, h

    y, first = jump_to_s_max(sde, score_fn, grid, y)
    carry = (y, jnp.zeros_like(y), jnp.zeros((), y.dtype))
    y, _, _ = grid.loop(first, grid.n - 1, step, carry)
    return denoiser(sde, score_fn, y, grid.query(grid.n - 1, grid.s_min)), grid.count(grid.n)


# DPM-Solver++(3M) and UniPC: multistep solvers of order up to 3.
#
# Both keep the denoiser values D_i, D_{i-1}, D_{i-2} and the log-ratios h_{i-1}, h_{i-2} of the
# last steps; an order is usable at step i only once that many values exist, hence the traced
# order k_i = min(order, i + 1) (and, with lower_order_final, min(k_i, n - i)), and each update's
# coefficients are scalars picked by jnp.where, so no unused (possibly 0/0) term touches the
# samples.


def _step_order(i, first, n, order, lower_order_final):
    """The order of step ``i`` when the multistep history starts at step ``first``."""
    k = jnp.minimum(order, i - first + 1)
    return jnp.where(lower_order_final, jnp.minimum(k, n - i), k)


def _safe_div(a, b):
    """a / b, and 0 where b == 0 (steps that have no history yet)."""
    return jnp.where(b == 0, 0.0, a / jnp.where(b == 0, 1.0, b))


def _history(h, h1, h2, k):
    """``(h1, h2)`` with the log-ratios a step of order ``k`` does not use replaced by ``h``.

    The unused coefficients are computed too (and then not selected); from zero log-ratios their
    linear systems are singular, and once compiled their determinants need not round to exactly 0,
    so the gradients of the unselected terms (with respect to the levels) could be 0 * inf. Equal
    steps keep every system well conditioned and change no used coefficient."""
    return jnp.where(k >= 2, h1, h), jnp.where(k >= 3, h2, h)


def _dpm_3m_coefs(h, h1, h2, k):
    r"""The coefficients :math:`(c_1, c_2)` of :math:`D_i - D_{i-1}` and :math:`D_{i-1} - D_{i-2}`
    in a DPM-Solver++ step of order ``k``: :math:`y' = r y + (1 - r) D_i + c_1 (D_i - D_{i-1}) +
    c_2 (D_{i-1} - D_{i-2})`, :math:`r = e^{-h}`."""
    h1, h2 = _history(h, h1, h2, k)
    r0, r1 = h1 / h, h2 / h
    phi_2 = jnp.expm1(-h) / h + 1.0
    phi_3 = phi_2 / h - 0.5
    # Order 2 (the 2M update): (1 - r) / (2 r0) on D_i - D_{i-1}.
    c1_2 = _safe_div(-0.5 * jnp.expm1(-h), r0)
    # Order 3: phi_2 D1 - phi_3 D2 with D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),
    # D2 = (D1_0 - D1_1)/(r0 + r1), D1_0 = (D_i - D_{i-1})/r0, D1_1 = (D_{i-1} - D_{i-2})/r1.
    c1_3 = _safe_div(phi_2 * (1.0 + _safe_div(r0, r0 + r1)) - _safe_div(phi_3, r0 + r1), r0)
    c2_3 = _safe_div(_safe_div(phi_3 - phi_2 * r0, r0 + r1), r1)
    c1 = jnp.select([k == 2, k == 3], [c1_2, c1_3], 0.0)
    c2 = jnp.where(k == 3, c2_3, 0.0)
    return c1, c2


def _unipc_b(h):
    r"""UniPC's :math:`b_1, b_2, b_3` for the data prediction with :math:`B(h) = e^{-h} - 1`
    (the bh2 variant): :math:`b_j = j!\,\varphi_{j+1}(-h)/B(h)`, with :math:`\varphi_1(z) =
    (e^z - 1)/z` and :math:`\varphi_{j+1}(z) = (\varphi_j(z) - 1/j!)/z`."""
    hh = -h
    big_b = jnp.expm1(hh)
    g1 = big_b / hh - 1.0
    g2 = g1 / hh - 0.5
    g3 = g2 / hh - 1.0 / 6.0
    return g1 / big_b, 2.0 * g2 / big_b, 6.0 * g3 / big_b


def _solve2(a11, a12, a21, a22, b1, b2):
    det = a11 * a22 - a12 * a21
    return _safe_div(b1 * a22 - a12 * b2, det), _safe_div(a11 * b2 - a21 * b1, det)


def _unipc_coefs(h, h1, h2, k):
    r"""UniPC-:math:`k` (bh2) coefficients for the differences :math:`D_{i-1} - D_i`,
    :math:`D_{i-2} - D_i` (predictor: ``p1, p2``; corrector: ``q1, q2``) and
    :math:`D_{i+1} - D_i` (corrector: ``q0``), each multiplying :math:`(1 - r)`.

    With :math:`r_1 = -h_{i-1}/h` and :math:`r_2 = -(h_{i-1} + h_{i-2})/h` (that is,
    :math:`r_j = (\lambda_{i-j} - \lambda_i)/h`) the relative positions of the past values and
    :math:`r = 1` the new one, the predictor of order :math:`k` solves
    :math:`\sum_j a_j r_j^{m-1} = b_m` over the :math:`k - 1` past values (:math:`m < k`; order 2
    takes :math:`a = 1/2`, as UniPC does), and the corrector the same system with the new value as
    well (:math:`m \le k`; order 1 takes :math:`1/2`); the weight of a difference is
    :math:`a_j / r_j`.
    """
    h1, h2 = _history(h, h1, h2, k)
    b1, b2, b3 = _unipc_b(h)
    rk1, rk2 = -h1 / h, -(h1 + h2) / h
    # Predictor.
    p1_2 = _safe_div(0.5, rk1)
    a1, a2 = _solve2(1.0, 1.0, rk1, rk2, b1, b2)
    p1 = jnp.select([k == 2, k == 3], [p1_2, _safe_div(a1, rk1)], 0.0)
    p2 = jnp.where(k == 3, _safe_div(a2, rk2), 0.0)
    # Corrector, order 2: [[1, 1], [rk1, 1]] (a1, a0) = (b1, b2).
    c1_2, c0_2 = _solve2(1.0, 1.0, rk1, 1.0, b1, b2)
    # Order 3: [[1, 1, 1], [rk1, rk2, 1], [rk1^2, rk2^2, 1]] (a1, a2, a0) = (b1, b2, b3);
    # subtracting the first row from the others leaves two equations in (a1, a2), and
    # a0 = b1 - a1 - a2.
    c1_3, c2_3 = _solve2(rk1 - 1.0, rk2 - 1.0, rk1**2 - 1.0, rk2**2 - 1.0, b2 - b1, b3 - b1)
    c0_3 = b1 - c1_3 - c2_3
    q0 = jnp.select([k == 1, k == 2, k == 3], [0.5, c0_2, c0_3])
    q1 = jnp.select([k == 2, k == 3], [_safe_div(c1_2, rk1), _safe_div(c1_3, rk1)], 0.0)
    q2 = jnp.where(k == 3, _safe_div(c2_3, rk2), 0.0)
    return (p1, p2), (q0, q1, q2)


def _check_order(order) -> int:
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"`order` must be 1, 2 or 3; got {order!r}.")
    return order


def dpm_solver_3m_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    order: int = 3,
    lower_order_final: bool = True,
    rho: float | None = None,
    schedule: str | None = None,
    eps: float | None = None,
    s_max: float | None = None,
    levels: Array | None = None,
    query_levels: Array | None = None,
    z: Array | None = None,
) -> tuple[Array, Array]:
    r"""Multistep DPM-Solver++ of order up to 3 (Lu et al. 2022, the multistep third-order update).

    With :math:`r = e^{-h_i}`, :math:`r_0 = h_{i-1}/h_i`, :math:`r_1 = h_{i-2}/h_i`, the step of
    order 3 is

    .. math:: y_{i+1} = r\,y_i + (1 - r) D_i + \varphi_2 D^{(1)} - \varphi_3 D^{(2)},

    :math:`\varphi_2 = (e^{-h} - 1)/h + 1`, :math:`\varphi_3 = \varphi_2/h - 1/2`,
    :math:`D^{(1)}_0 = (D_i - D_{i-1})/r_0`, :math:`D^{(1)}_1 = (D_{i-1} - D_{i-2})/r_1`,
    :math:`D^{(1)} = D^{(1)}_0 + \tfrac{r_0}{r_0 + r_1}(D^{(1)}_0 - D^{(1)}_1)`,
    :math:`D^{(2)} = (D^{(1)}_0 - D^{(1)}_1)/(r_0 + r_1)`; order 2 is
    :func:`dpm_solver_2m_sample`'s update and order 1 DDIM's. Step :math:`i` (from 0) uses order
    :math:`\min(\text{order}, i + 1)`, and with ``lower_order_final`` also at most :math:`n - i`
    (the last steps before the denoising step are of lower order, which the reference solver
    recommends for few steps). The default schedule is ``logsnr``, the reference solver's.

    Args:
        order: 1, 2 or 3.
        lower_order_final: lower the order of the final steps (above).
    """
    return _multistep(
        key, score_fn, sde, shape, num_steps, order, lower_order_final, rho, schedule, eps, s_max,
        levels, query_levels, z, unipc=False,
    )  # fmt: skip


def unipc_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    order: int = 3,
    lower_order_final: bool = True,
    rho: float | None = None,
    schedule: str | None = None,
    eps: float | None = None,
    s_max: float | None = None,
    levels: Array | None = None,
    query_levels: Array | None = None,
    z: Array | None = None,
) -> tuple[Array, Array]:
    r"""UniPC (Zhao et al. 2023, "UniPC: A unified predictor-corrector framework for fast sampling
    of diffusion models"), the multistep UniP predictor with the UniC corrector, variant bh2
    (:math:`B(h) = e^{h} - 1`), data prediction.

    Step :math:`i` predicts :math:`\tilde y_{i+1} = r y_i + (1 - r)\big(D_i + \sum_j a_j
    (D_{i-j} - D_i)/r_j\big)` from the past denoiser values (order :math:`k_i`), evaluates
    :math:`D_{i+1} = D(\tilde y_{i+1}; s_{i+1})` there, and corrects with it:
    :math:`y_{i+1} = r y_i + (1 - r)\big(D_i + \sum_j c_j (D_{i-j} - D_i)/r_j + c_0 (D_{i+1} -
    D_i)\big)` (coefficients from the linear systems of the paper's Algorithms 2 and 3; see
    :func:`_unipc_coefs`). :math:`D_{i+1}` is then reused by the next step, so the corrector costs
    no evaluation. The order is :math:`k_i = \min(\text{order}, i + 1)`, with
    ``lower_order_final`` at most :math:`n - i`. The last step, to :math:`s = 0`, returns the
    denoiser value at the last predicted point (uncorrected: a correction would need one more
    evaluation, as in the reference, whose last step has no corrector). The default schedule is
    ``logsnr``.

    Args:
        order: the predictor's order, 1, 2 or 3 (the corrector's is one more).
        lower_order_final: lower the order of the final steps.
    """
    return _multistep(
        key, score_fn, sde, shape, num_steps, order, lower_order_final, rho, schedule, eps, s_max,
        levels, query_levels, z, unipc=True,
    )  # fmt: skip


def _multistep(
    key, score_fn, sde, shape, num_steps, order, lower_order_final, rho, schedule, eps, s_max,
    levels, query_levels, z, *, unipc,
):  # fmt: skip
    """Checks the arguments of :func:`dpm_solver_3m_sample` / :func:`unipc_sample` and runs
    their shared compiled loop."""
    shape, schedule, args = check_levels(
        sde, shape, eps, num_steps, rho, schedule, s_max, levels, query_levels,
        default_steps=20, default_schedule="logsnr",
    )  # fmt: skip
    return _multistep_sample(
        key,
        sde,
        args,
        check_z(z, shape),
        jnp.asarray(_check_order(order), jnp.int32),
        jnp.asarray(check_bool("lower_order_final", lower_order_final)),
        score_fn=score_fn,
        shape=shape,
        schedule=schedule,
        unipc=unipc,
    )


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "schedule", "unipc"))
def _multistep_sample(
    key, sde, args, z0, order, lower_order_final, *, score_fn, shape, schedule, unipc
):
    grid = Grid(sde, schedule, args)
    n = grid.n
    denoise = functools.partial(denoiser, sde, score_fn)
    y, first = jump_to_s_max(sde, score_fn, grid, scaled_prior_sample(sde, key, shape, z0))
    zero, zeros = jnp.zeros((), y.dtype), jnp.zeros_like(y)

    def dpm_step(i, carry):
        # d1, d2: D at steps i-1, i-2; h1, h2: the log-ratios of those steps.
        y, d1, d2, h1, h2 = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        d0 = denoise(y, grid.query(i, s))
        h = jnp.log(s / s_next)
        c1, c2 = _dpm_3m_coefs(h, h1, h2, _step_order(i, first, n, order, lower_order_final))
        ratio = s_next / s
        y_next = ratio * y + (1.0 - ratio) * d0 + c1 * (d0 - d1) + c2 * (d1 - d2)
        return y_next, d0, d1, h, h1

    def unipc_step(i, carry):
        # d0: D at step i (at its predicted point), d1, d2 at steps i-1, i-2.
        y, d0, d1, d2, h1, h2 = carry
        s, s_next = grid.level(i), grid.level(i + 1)
        h = jnp.log(s / s_next)
        ratio = s_next / s
        (p1, p2), (q0, q1, q2) = _unipc_coefs(
            h, h1, h2, _step_order(i, first, n, order, lower_order_final)
        )
        base = ratio * y + (1.0 - ratio) * d0
        y_pred = base + (1.0 - ratio) * (p1 * (d1 - d0) + p2 * (d2 - d0))
        d_new = denoise(y_pred, grid.query(i + 1, s_next))
        y_next = base + (1.0 - ratio) * (q1 * (d1 - d0) + q2 * (d2 - d0) + q0 * (d_new - d0))
        return y_next, d_new, d0, d1, h, h1

    if not unipc:
        y, *_ = grid.loop(first, n - 1, dpm_step, (y, zeros, zeros, zero, zero))
        return denoise(y, grid.query(n - 1, grid.s_min)), grid.count(n)
    carry = (y, denoise(y, grid.query(first, grid.level(first))), zeros, zeros, zero, zero)
    _, d, *_ = grid.loop(first, n - 1, unipc_step, carry)
    # d was evaluated at the last predicted point, at s_{n-1} = s_min: it is D(y; s_min) there.
    return d, grid.count(n)
