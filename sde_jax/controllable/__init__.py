"""Controllable generation with score models (paper Section 5 and Appendix I): inpainting and
colorization (:mod:`~sde_jax.controllable.masked`), classifier and classifier-free guidance
(:mod:`~sde_jax.controllable.guidance`)."""

from sde_jax.controllable.guidance import (
    CondScoreFn,
    GuidedScoreFn,
    LogProbFn,
    classifier_free_guidance,
    classifier_guidance,
    guided_ode_sample,
    guided_pc_sample,
    null_label_score_fn,
)
from sde_jax.controllable.masked import (
    decoupling_matrix,
    gray_scale,
    pc_colorize,
    pc_inpaint,
    pc_masked_sample,
)

__all__ = [
    "CondScoreFn",
    "GuidedScoreFn",
    "LogProbFn",
    "classifier_free_guidance",
    "classifier_guidance",
    "decoupling_matrix",
    "gray_scale",
    "guided_ode_sample",
    "guided_pc_sample",
    "null_label_score_fn",
    "pc_colorize",
    "pc_inpaint",
    "pc_masked_sample",
]
