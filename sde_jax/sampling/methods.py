r"""One entry point for every sampler: ``sample(key, score_fn, sde, shape, method=..., **options)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax

from sde_jax._checks import check_choice
from sde_jax.sampling.ddim import ddim_sample
from sde_jax.sampling.edm import edm_heun_sample, edm_stochastic_sample
from sde_jax.sampling.multistep import dpm_solver_2m_sample, dpm_solver_3m_sample, unipc_sample
from sde_jax.sampling.ode import ode_sample
from sde_jax.sampling.pc import pc_sample
from sde_jax.sde import SDE, ScoreFn

Array = jax.Array

METHODS: dict[str, Callable] = {
    "pc": pc_sample,
    "ode": ode_sample,
    "edm_heun": edm_heun_sample,
    "edm_stochastic": edm_stochastic_sample,
    "dpm_solver_2m": dpm_solver_2m_sample,
    "dpm_solver_3m": dpm_solver_3m_sample,
    "unipc": unipc_sample,
    "ddim": ddim_sample,
}


def method_options(method: str) -> tuple[str, ...]:
    """The keyword options that ``method`` (a key of :data:`METHODS`) takes."""
    check_choice("method", method, METHODS)
    params = inspect.signature(METHODS[method]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


# The samplers on the noise levels of sde_jax.sampling.levels: those taking its `s_max` option.
FEW_STEP_METHODS: tuple[str, ...] = tuple(m for m in METHODS if "s_max" in method_options(m))


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
    compiled program. The few-step methods (:data:`FEW_STEP_METHODS`) share the options of
    :mod:`sde_jax.sampling.levels`: ``num_steps``, a ``schedule`` of noise levels, ``rho``, ``eps``
    and ``s_max``, a noise level to jump to from the prior's before the schedule starts.

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
