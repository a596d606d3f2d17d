"""Kept for old import paths: the few-step samplers now live in :mod:`sde_jax.sampling`."""

from sde_jax.sampling import (
    SCHEDULES,
    ddim_sample,
    denoiser,
    dpm_solver_2m_sample,
    dpm_solver_3m_sample,
    edm_heun_sample,
    edm_schedule,
    edm_stochastic_sample,
    noise_to_signal,
    prior_level,
    schedule_level,
    time_of,
    unipc_sample,
)

__all__ = [
    "SCHEDULES",
    "ddim_sample",
    "denoiser",
    "dpm_solver_2m_sample",
    "dpm_solver_3m_sample",
    "edm_heun_sample",
    "edm_schedule",
    "edm_stochastic_sample",
    "noise_to_signal",
    "prior_level",
    "schedule_level",
    "time_of",
    "unipc_sample",
]
