"""Samplers for score-based models: predictor–corrector (:mod:`~sde_jax.sampling.pc`), the
probability-flow ODE (:mod:`~sde_jax.sampling.ode`) and few-step solvers on noise levels
(:mod:`~sde_jax.sampling.levels`; :mod:`~sde_jax.sampling.edm`, :mod:`~sde_jax.sampling.multistep`,
:mod:`~sde_jax.sampling.ddim`), with levels fitted to a model (:mod:`~sde_jax.sampling.tuning`). :func:`sample` dispatches to any of them by name (:data:`METHODS`).
"""

from sde_jax.sampling.ddim import ddim_sample
from sde_jax.sampling.edm import edm_heun_sample, edm_stochastic_sample
from sde_jax.sampling.levels import (
    SCHEDULES,
    denoiser,
    edm_schedule,
    noise_to_signal,
    prior_level,
    schedule_level,
    time_of,
)
from sde_jax.sampling.methods import FEW_STEP_METHODS, METHODS, method_options, sample
from sde_jax.sampling.multistep import dpm_solver_2m_sample, dpm_solver_3m_sample, unipc_sample
from sde_jax.sampling.ode import (
    ODE_CONTROLLERS,
    SOLVERS,
    ode_sample,
    solve_flow,
    solve_ode,
    solver_nfe,
)
from sde_jax.sampling.pc import (
    CORRECTORS,
    PREDICTORS,
    ald_corrector,
    ancestral_sampling_predictor,
    check_pc_options,
    denoise_step,
    euler_maruyama_predictor,
    langevin_corrector,
    none_corrector,
    none_predictor,
    pc_loop,
    pc_nfe,
    pc_sample,
    pc_times,
    reverse_diffusion_predictor,
)
from sde_jax.sampling.tuning import (
    TUNABLE_METHODS,
    levels_from_weights,
    optimize_levels,
    teacher_solve,
)

__all__ = [
    "CORRECTORS",
    "FEW_STEP_METHODS",
    "METHODS",
    "ODE_CONTROLLERS",
    "PREDICTORS",
    "SCHEDULES",
    "SOLVERS",
    "TUNABLE_METHODS",
    "ald_corrector",
    "ancestral_sampling_predictor",
    "check_pc_options",
    "ddim_sample",
    "denoise_step",
    "denoiser",
    "dpm_solver_2m_sample",
    "dpm_solver_3m_sample",
    "edm_heun_sample",
    "edm_schedule",
    "edm_stochastic_sample",
    "euler_maruyama_predictor",
    "langevin_corrector",
    "levels_from_weights",
    "method_options",
    "noise_to_signal",
    "none_corrector",
    "none_predictor",
    "ode_sample",
    "optimize_levels",
    "pc_loop",
    "pc_nfe",
    "pc_sample",
    "pc_times",
    "prior_level",
    "reverse_diffusion_predictor",
    "sample",
    "schedule_level",
    "solve_flow",
    "solve_ode",
    "solver_nfe",
    "teacher_solve",
    "time_of",
    "unipc_sample",
]
