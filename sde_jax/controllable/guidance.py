r"""Class-conditional sampling with guided scores (paper eq. 14 and classifier-free guidance).

With a noise-conditional classifier :math:`\log p_t(y \mid x)`, the conditional score is
:math:`\nabla_x \log p_t(x) + \lambda\,\nabla_x \log p_t(y \mid x)`; :math:`\lambda = 1` is the exact
conditional :math:`p_t(x \mid y)`, :math:`\lambda > 1` sharpens it. **Classifier-free guidance**
uses a class-conditional score model trained with label dropout and
:math:`(1 + w)\,s(x, t, y) - w\,s(x, t, \varnothing)`; :math:`w = 0` is the conditional model,
and with exact scores weight :math:`w` is classifier guidance with :math:`\lambda = 1 + w`.

A guided score is a score field like any other, so its probability flow (eq. 13) is well defined
and :func:`guided_ode_sample` solves it; with :math:`\lambda = 1` and exact scores it maps the prior
to :math:`p_0(x \mid y)` exactly.

The samplers run the loop of :func:`sde_jax.sampling.pc_sample` (:func:`~sde_jax.sampling.pc_loop`)
or the solve of :func:`sde_jax.sampling.ode_sample` (:func:`~sde_jax.sampling.solve_flow`) in one
jitted program with the labels and guidance scale traced, and return ``(samples, nfe)``, ``nfe``
counting evaluations of the guided score.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax._checks import check_choice, check_eps, check_shape
from sde_jax.sampling.ode import SOLVERS, solve_flow
from sde_jax.sampling.pc import check_pc_options, pc_loop, pc_nfe
from sde_jax.sde import SDE, ScoreFn

Array = jax.Array
# guided_score_fn(x [B, *event], t [B], class_labels int [B], scale scalar) -> score [B, *event].
GuidedScoreFn = Callable[[Array, Array, Array, Array], Array]
# log_prob_fn(x [B, *event], t [B], class_labels int [B]) -> log p_t(y | x) [B].
LogProbFn = Callable[[Array, Array, Array], Array]
# cond_score_fn(x [B, *event], t [B], class_labels int [B] or None) -> score; None: no label.
CondScoreFn = Callable[[Array, Array, Array | None], Array]


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn) -> GuidedScoreFn:
    r"""The guided score :math:`s(x, t) + \lambda\,\nabla_x \log p_t(y \mid x)` (paper eq. 14).

    Args:
        score_fn: the unconditional ``score_fn(x, t)``.
        log_prob_fn: ``log_prob_fn(x, t, class_labels) -> [B]``, the noise-conditional classifier's
            :math:`\log p_t(y \mid x)`.

    Returns:
        ``guided(x, t, class_labels, scale)``; build it once and pass the same object to every
        sampler call (it is a static argument of the compiled samplers).
    """

    def guided(x, t, class_labels, scale):
        grad = jax.grad(lambda v: jnp.sum(log_prob_fn(v, t, class_labels)))(x)
        return score_fn(x, t) + scale * grad

    return guided


def classifier_free_guidance(cond_score_fn: CondScoreFn) -> GuidedScoreFn:
    r"""The classifier-free guided score :math:`(1 + w)\,s(x, t, y) - w\,s(x, t, \varnothing)`.

    Both terms come from one network evaluated on a doubled batch.

    Args:
        cond_score_fn: ``cond_score_fn(x, t, class_labels)`` of a class-conditional model, where
            ``class_labels`` None selects the model's "no label" token.

    Returns:
        ``guided(x, t, class_labels, scale)`` with ``scale`` the guidance weight :math:`w`.
    """

    def guided(x, t, class_labels, scale):
        b = x.shape[0]
        both = cond_score_fn(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([class_labels, jnp.full_like(class_labels, -1)]),
        )
        cond, uncond = both[:b], both[b:]
        return (1.0 + scale) * cond - scale * uncond

    return guided


def null_label_score_fn(cond_score_fn: Callable, num_classes: int) -> CondScoreFn:
    """Adapts ``cond_score_fn(x, t, class_labels)`` whose null token is the label ``num_classes``
    (as :func:`sde_jax.models.ncsnpp.embed_class_labels`) to the ``-1`` = no label convention of
    :func:`classifier_free_guidance`."""

    def score(x, t, class_labels):
        labels = jnp.where(class_labels < 0, num_classes, class_labels)
        return cond_score_fn(x, t, labels)

    return score


def _check_labels(class_labels, batch: int, num_classes: int | None) -> Array:
    if isinstance(class_labels, jax.core.Tracer):
        # Labels traced by an enclosing jit (e.g. one compiled program for every round of a
        # sampling run) have no values to check here; their caller checks them on the host.
        if class_labels.shape != (batch,) or not jnp.issubdtype(class_labels.dtype, jnp.integer):
            raise ValueError(
                f"`class_labels` must be ints of shape [B] = [{batch}]; got "
                f"{class_labels.dtype} {class_labels.shape}."
            )
        return class_labels.astype(jnp.int32)
    labels = np.asarray(class_labels)
    if labels.ndim == 0:
        labels = np.full((batch,), labels)
    if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`class_labels` must be an int or ints of shape [B] = [{batch}]; got "
            f"{labels.dtype} {labels.shape}."
        )
    if num_classes is not None and (np.any(labels < 0) or np.any(labels >= num_classes)):
        raise ValueError(
            f"`class_labels` must lie in [0, {num_classes}) (num_classes={num_classes}); got "
            f"{sorted(set(labels.tolist()))}."
        )
    return jnp.asarray(labels, jnp.int32)


def _fix_labels(guided_score_fn: GuidedScoreFn, labels: Array, scale: Array) -> ScoreFn:
    return lambda x, t: guided_score_fn(x, t, labels, scale)


def guided_pc_sample(
    key: Array,
    guided_score_fn: GuidedScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    class_labels,
    guidance_scale: float,
    *,
    num_classes: int | None = None,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    eps: float | None = None,
    denoise: bool = True,
    probability_flow: bool = False,
) -> tuple[Array, Array]:
    r"""Class-conditional PC sampling with a guided score (:func:`classifier_guidance` or
    :func:`classifier_free_guidance`), on the grid of :func:`sde_jax.sampling.pc_sample`.

    Args:
        key: PRNG key.
        guided_score_fn: ``guided(x, t, class_labels, scale)``.
        sde: the forward SDE.
        shape: ``(B, *event)``.
        class_labels: one int or ints ``[B]``: the class of each sample.
        guidance_scale: :math:`\lambda` of classifier guidance or :math:`w` of classifier-free
            guidance; a traced argument, so changing it does not recompile.
        num_classes: if given, labels outside ``[0, num_classes)`` are an error.
        predictor, corrector, snr, n_steps, eps, denoise, probability_flow: as
            :func:`sde_jax.sampling.pc_sample`.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe`` the evaluations of the guided score per sample.
    """
    check_pc_options(sde, predictor, corrector, n_steps, probability_flow, needs_predictor=True)
    shape = check_shape(shape)
    labels = _check_labels(class_labels, shape[0], num_classes)
    samples = _guided_pc(
        key,
        sde,
        labels,
        jnp.asarray(guidance_scale, jnp.float32),
        jnp.asarray(snr, jnp.float32),
        jnp.asarray(check_eps(sde, eps), jnp.float32),
        guided_score_fn=guided_score_fn,
        shape=shape,
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
        "guided_score_fn",
        "shape",
        "predictor",
        "corrector",
        "n_steps",
        "denoise",
        "probability_flow",
    ),
)
def _guided_pc(
    key, sde, labels, scale, snr, eps, *, guided_score_fn, shape, predictor, corrector, n_steps,
    denoise, probability_flow,
):  # fmt: skip
    score_fn = _fix_labels(guided_score_fn, labels, scale)
    return pc_loop(
        key, sde, score_fn, snr, eps, shape=shape, predictor=predictor, corrector=corrector,
        n_steps=n_steps, denoise=denoise, probability_flow=probability_flow,
    )  # fmt: skip


def guided_ode_sample(
    key: Array,
    guided_score_fn: GuidedScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    class_labels,
    guidance_scale: float,
    *,
    num_classes: int | None = None,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float | None = None,
    denoise: bool = True,
    max_steps: int = 4096,
) -> tuple[Array, Array]:
    r"""Class-conditional sampling by the probability-flow ODE of the guided score.

    With :math:`\lambda = 1` classifier guidance (or a perfect conditional model and :math:`w = 0`)
    the guided score is the score of :math:`p_t(x \mid y)` at every :math:`t`, so the flow maps the
    prior to :math:`p_0(x \mid y)`; other scales give the flow of the guided score field.

    Args:
        key: PRNG key of the prior sample.
        guided_score_fn, class_labels, guidance_scale, num_classes: as :func:`guided_pc_sample`.
        sde: the forward SDE.
        shape: ``(B, *event)``.
        solver, rtol, atol, eps, denoise, max_steps: as :func:`sde_jax.sampling.ode_sample`.

    Returns:
        ``(samples [B, *event], nfe)``, ``nfe`` the exact number of guided-score evaluations.
    """
    check_choice("solver", solver, SOLVERS)
    shape = check_shape(shape)
    labels = _check_labels(class_labels, shape[0], num_classes)
    return _guided_ode(
        key,
        sde,
        labels,
        jnp.asarray(guidance_scale, jnp.float32),
        jnp.asarray(check_eps(sde, eps), jnp.float32),
        jnp.asarray(rtol, jnp.float32),
        jnp.asarray(atol, jnp.float32),
        guided_score_fn=guided_score_fn,
        shape=shape,
        solver=solver,
        denoise=denoise,
        max_steps=max_steps,
    )


@functools.partial(
    jax.jit, static_argnames=("guided_score_fn", "shape", "solver", "denoise", "max_steps")
)
def _guided_ode(
    key, sde, labels, scale, eps, rtol, atol, *, guided_score_fn, shape, solver, denoise, max_steps
):
    score_fn = _fix_labels(guided_score_fn, labels, scale)
    return solve_flow(
        key, sde, score_fn, eps, shape=shape, solver=solver, denoise=denoise, max_steps=max_steps,
        rtol=rtol, atol=atol,
    )  # fmt: skip
