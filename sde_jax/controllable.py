r"""Controllable generation with one unconditional score model (paper Section 5 and Appendix I).

**Inpainting and colorization** (Appendix I). Some coordinates of the data are observed. The
sampler runs the predictor–corrector loop of :func:`sde_jax.sampling.pc_sample` on the full image
and, after every predictor and every corrector update, replaces the observed coordinates by a fresh
sample of the forward process at the current time, :math:`y_t = m(t)\,y + s(t)\,z`. The unknown
coordinates thus follow the reverse SDE driven by :math:`\nabla_u \log p_t(u, y_t)`, the paper's
approximation of the conditional score :math:`\nabla_u \log p_t(u \mid y)`; the approximation is
biased even for Gaussian data, which ``final_corrector_steps`` Langevin steps at
:math:`t = \epsilon` remove (see :func:`pc_masked_sample`). Colorization applies the
same replacement in the paper's decoupled color space: an orthogonal matrix :math:`M` on the channel
axis whose first column is :math:`\mathbf 1/\sqrt C`, so the first decoupled channel
:math:`\sqrt C\,\bar x` is the (scaled) gray level and the other channels are orthogonal to it. Since
the forward kernel is isotropic, the forward process of the decoupled image is the decoupled forward
process, so the replacement is the same operation in either basis. The last update returns the
predictor's noise-free mean in the unknown coordinates and the observation itself, exactly, in the
observed ones.

**Class-conditional sampling** (eq. 14). With a noise-conditional classifier
:math:`\log p_t(y \mid x)`, the conditional score is
:math:`\nabla_x \log p_t(x) + \lambda\,\nabla_x \log p_t(y \mid x)`; :math:`\lambda = 1` is the exact
conditional :math:`p_t(x \mid y)`, :math:`\lambda > 1` sharpens it. **Classifier-free guidance**
uses a class-conditional score model trained with label dropout and
:math:`(1 + w)\,s(x, t, y) - w\,s(x, t, \varnothing)`; :math:`w = 0` is the conditional model,
and with exact scores weight :math:`w` is classifier guidance with :math:`\lambda = 1 + w`.

**Probability-flow variants.** A guided score is a score field like any other, so its probability
flow (eq. 13) is well defined and :func:`guided_ode_sample` solves it; with :math:`\lambda = 1` and
exact scores it maps the prior to :math:`p_0(x \mid y)` exactly. For inpainting the replacement makes
each step random (a fresh :math:`y_t`), so there is no deterministic flow of the conditional
distribution; ``probability_flow=True`` in :func:`pc_inpaint` only makes the predictor follow the
flow of the unknown coordinates (as the paper's code allows), the sampler stays stochastic.

Every sampler here is one jitted program (its loop a :func:`jax.lax.fori_loop`, or a diffrax solve
for the flow) with the labels and guidance scale traced, and returns
``(samples, nfe)`` like :func:`sde_jax.sampling.pc_sample`, ``nfe`` counting evaluations of the
(guided) score.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.sampling import (
    CORRECTORS,
    PREDICTORS,
    SOLVERS,
    _check_eps,
    _check_shape,
    _choice,
    denoise_step,
    pc_loop,
    pc_nfe,
    solve_ode,
)
from sde_jax.sde import SDE, VESDE, VPSDE, ScoreFn, batch_broadcast

Array = jax.Array
# guided_score_fn(x [B, *event], t [B], class_labels int [B], scale scalar) -> score [B, *event].
GuidedScoreFn = Callable[[Array, Array, Array, Array], Array]
# log_prob_fn(x [B, *event], t [B], class_labels int [B]) -> log p_t(y | x) [B].
LogProbFn = Callable[[Array, Array, Array], Array]
# cond_score_fn(x [B, *event], t [B], class_labels int [B] or None) -> score; None: no label.
CondScoreFn = Callable[[Array, Array, Array | None], Array]


def _check_pc(sde: SDE, predictor: str, corrector: str, n_steps: int, probability_flow: bool):
    _choice("predictor", predictor, PREDICTORS)
    _choice("corrector", corrector, CORRECTORS)
    if predictor == "none":
        # The final denoising of the unknown region is the predictor's mean.
        raise ValueError("`predictor` must not be 'none' for controllable generation.")
    if predictor == "ancestral_sampling" and not isinstance(sde, VESDE | VPSDE):
        raise ValueError(
            "`predictor='ancestral_sampling'` is defined for VESDE and VPSDE only; "
            f"got {type(sde).__name__}. Use 'reverse_diffusion' or 'euler_maruyama'."
        )
    if predictor == "ancestral_sampling" and probability_flow:
        raise ValueError("`predictor='ancestral_sampling'` does not support probability_flow=True.")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"`n_steps` must be a positive int; got {n_steps!r}.")


# ---------------------------------------------------------------------------------------------
# Inpainting and colorization.


def decoupling_matrix(num_channels: int) -> np.ndarray:
    r"""The orthogonal ``[C, C]`` matrix :math:`M` of the decoupled color space.

    ``x @ M`` (on the channel axis) decouples, ``x_dec @ M.T`` couples back. The first column is
    :math:`\mathbf 1/\sqrt C` (the gray direction); the others are an orthonormal basis of its
    complement (a Helmert basis: column :math:`j` contrasts channel :math:`j` with channels
    :math:`0..j-1`). For :math:`C = 3` this is the paper's matrix up to the order and signs of the
    two color directions.

    Raises:
        ValueError: if ``num_channels < 2`` (a single channel has no color to recover).
    """
    if not isinstance(num_channels, int) or num_channels < 2:
        raise ValueError(
            "colorization needs color data (num_channels >= 2); got "
            f"num_channels={num_channels!r}: single-channel data is already gray-scale."
        )
    c = num_channels
    m = np.zeros((c, c), np.float64)
    m[:, 0] = 1.0 / np.sqrt(c)
    for j in range(1, c):
        m[:j, j] = 1.0
        m[j, j] = -float(j)
        m[:, j] /= np.sqrt(j * (j + 1))
    return m.astype(np.float32)


def _check_mask(mask, data_shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """A binary mask broadcastable to ``data_shape`` = ``[B, *event]``, as float32 ``[1|B, *event]``."""
    m = np.asarray(mask)
    event = data_shape[1:]
    if m.ndim == len(event):
        m = m[None]
    if m.ndim != len(data_shape) or any(
        d != 1 and d != full for d, full in zip(m.shape, data_shape, strict=True)
    ):
        raise ValueError(
            f"`{name}` must have shape {tuple(data_shape)} or {tuple(event)} (or 1 on any axis, "
            f"e.g. (H, W, 1) for all channels); got {tuple(np.shape(mask))}."
        )
    if not np.all((m == 0) | (m == 1)):
        values = np.unique(m)
        raise ValueError(
            f"`{name}` must be binary (1 = observed, 0 = to generate); got values "
            f"{values[:8].tolist()}{' ...' if len(values) > 8 else ''}."
        )
    return np.broadcast_to(m, (m.shape[0], *event)).astype(np.float32)


def pc_masked_sample(
    key: Array,
    score_fn: ScoreFn,
    sde: SDE,
    observed: Array,
    mask,
    *,
    basis=None,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    eps: float | None = None,
    probability_flow: bool = False,
    final_corrector_steps: int = 0,
) -> tuple[Array, Array]:
    r"""PC sampling of :math:`x` given the coordinates ``mask == 1`` of :math:`x M`.

    The common core of :func:`pc_inpaint` (``basis = None``, :math:`M = I`) and :func:`pc_colorize`.

    Args:
        key: PRNG key.
        score_fn: the unconditional ``score_fn(x, t)``.
        sde: the forward SDE; its ``N`` is the number of PC steps.
        observed: ``[B, *event]``, the observation in the decoupled basis (:math:`x M`); only its
            entries where ``mask == 1`` are used.
        mask: binary, ``[B, *event]`` or ``[*event]`` or 1 on any axis; 1 = observed.
        basis: an orthogonal ``[C, C]`` matrix :math:`M` acting on the last (channel) axis, or
            None for the identity.
        predictor: one of :data:`sde_jax.sampling.PREDICTORS` except ``none``.
        corrector: one of :data:`sde_jax.sampling.CORRECTORS`.
        snr: the corrector's signal-to-noise ratio.
        n_steps: corrector steps per time step.
        eps: the last time of the grid; defaults to ``sde.sampling_eps``.
        probability_flow: the predictor follows the probability-flow ODE of the unknown coordinates
            (the replacement keeps the sampler stochastic).
        final_corrector_steps: Langevin steps (signal-to-noise ratio ``snr``) at :math:`t =
            \epsilon` after the last grid step, before the final denoising, with the observation
            replaced after each. The replacement score :math:`\nabla_u \log p_t(u, y_t)` is not
            the conditional score :math:`\nabla_u \log p_t(u \mid y)` (their covariances differ
            at every :math:`t > 0`, even for Gaussian data), so the paper's sampler
            (``final_corrector_steps = 0``) is biased: measured on a 48-d Gaussian, the completions'
            mean is off by 25x the sampling error with the predictor alone and 4x with one
            Langevin step per time (VP). At :math:`t = \epsilon` the two scores agree up to
            :math:`s(\epsilon)`, so these steps equilibrate the unknown coordinates to the exact
            conditional; a few hundred sufficed there for every SDE (``tests/test_controllable.py``).

    Returns:
        ``(samples [B, *event], nfe)`` in the data basis; the observed coordinates of
        ``samples @ M`` equal ``observed`` there.
    """
    _check_pc(sde, predictor, corrector, n_steps, probability_flow)
    if not isinstance(final_corrector_steps, int) or final_corrector_steps < 0:
        raise ValueError(
            f"`final_corrector_steps` must be a non-negative int; got {final_corrector_steps!r}."
        )
    observed = jnp.asarray(observed, jnp.float32)
    shape = _check_shape(observed.shape)
    mask = _check_mask(mask, shape)
    c = shape[-1]
    # The identity is applied as a matrix too, so that inpainting and colorization share one
    # compiled program (a [C, C] product per pixel is negligible next to the score).
    basis = np.eye(c, dtype=np.float32) if basis is None else np.asarray(basis, np.float32)
    if basis.shape != (c, c):
        raise ValueError(f"`basis` must be [C, C] = [{c}, {c}]; got {basis.shape}.")
    if not np.allclose(basis.T @ basis, np.eye(c), atol=1e-5):
        raise ValueError("`basis` must be orthogonal (basis.T @ basis = I).")
    samples = _pc_masked(
        key,
        sde,
        observed,
        jnp.asarray(mask),
        jnp.asarray(basis),
        jnp.asarray(snr, jnp.float32),
        jnp.asarray(_check_eps(sde, eps), jnp.float32),
        score_fn=score_fn,
        predictor=predictor,
        corrector=corrector,
        n_steps=n_steps,
        probability_flow=probability_flow,
        final_corrector_steps=final_corrector_steps,
    )
    nfe = pc_nfe(sde, predictor, corrector, n_steps) + final_corrector_steps
    return samples, jnp.asarray(nfe, jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=(
        "score_fn",
        "predictor",
        "corrector",
        "n_steps",
        "probability_flow",
        "final_corrector_steps",
    ),
)
def _pc_masked(
    key, sde, observed, mask, basis, snr, eps, *, score_fn, predictor, corrector, n_steps,
    probability_flow, final_corrector_steps,
):  # fmt: skip
    predict = PREDICTORS[predictor]
    correct = CORRECTORS[corrector]
    shape = observed.shape
    b = shape[0]

    def to_data(v):
        return v @ basis.T

    def to_obs(v):
        return v @ basis

    def replace(key, x, t):
        """Observed coordinates of ``x`` replaced by a forward sample at ``t`` ``[B]``."""
        m, s = sde.marginal_coefs(t)
        y_t = batch_broadcast(m, observed) * observed + batch_broadcast(s, observed) * (
            jax.random.normal(key, shape)
        )
        xo = to_obs(x)
        return to_data(mask * y_t + (1.0 - mask) * xo)

    k_prior, k_loop = jax.random.split(key)
    k_prior, k_obs = jax.random.split(k_prior)
    times = jnp.linspace(sde.T, eps, sde.N)
    x = replace(k_obs, sde.prior_sampling(k_prior, shape), jnp.full((b,), sde.T))

    def body(i, x):
        t = jnp.full((b,), times[i])
        k_corr, k_pred, k_r1, k_r2 = jax.random.split(jax.random.fold_in(k_loop, i), 4)
        if corrector != "none":
            x, _ = correct(k_corr, sde, score_fn, x, t, snr, n_steps)
            x = replace(k_r1, x, t)
        x, _ = predict(k_pred, sde, score_fn, x, t, probability_flow)
        # The predictor moved x to the next grid time; the known part follows it there.
        t_next = jnp.full((b,), times[jnp.minimum(i + 1, sde.N - 1)])
        return replace(k_r2, x, t_next)

    x = jax.lax.fori_loop(0, sde.N - 1, body, x)
    # The last step: corrector, then the predictor's noise-free mean in the unknown coordinates
    # and the observation itself in the known ones.
    t = jnp.full((b,), eps)
    k_corr, k_pred, k_r1 = jax.random.split(jax.random.fold_in(k_loop, sde.N - 1), 3)
    if corrector != "none":
        x, _ = correct(k_corr, sde, score_fn, x, t, snr, n_steps)
        x = replace(k_r1, x, t)
    if final_corrector_steps:
        k_fin = jax.random.fold_in(k_loop, sde.N)

        def fin(j, x):
            k1, k2 = jax.random.split(jax.random.fold_in(k_fin, j))
            x, _ = CORRECTORS["langevin"](k1, sde, score_fn, x, t, snr, 1)
            return replace(k2, x, t)

        x = jax.lax.fori_loop(0, final_corrector_steps, fin, x)
    _, x_mean = predict(k_pred, sde, score_fn, x, t, probability_flow)
    return to_data(mask * observed + (1.0 - mask) * to_obs(x_mean))


def pc_inpaint(
    key: Array, score_fn: ScoreFn, sde: SDE, data: Array, mask, **kwargs
) -> tuple[Array, Array]:
    r"""Inpainting (paper Appendix I): samples the pixels where ``mask == 0`` given ``data`` where
    ``mask == 1``.

    Args:
        key: PRNG key.
        score_fn: the unconditional ``score_fn(x, t)``.
        sde: the forward SDE.
        data: ``[B, *event]`` images in the model's scale; values where ``mask == 0`` are ignored.
        mask: binary ``[B, *event]``, ``[*event]``, or 1 on any axis (``[H, W, 1]`` masks every
            channel of a pixel); 1 = observed.
        **kwargs: the sampler options of :func:`pc_masked_sample`.

    Returns:
        ``(samples [B, *event], nfe)``: ``data`` where ``mask == 1``, completions elsewhere.
    """
    return pc_masked_sample(key, score_fn, sde, data, mask, **kwargs)


def gray_scale(images: Array) -> Array:
    """The gray level (mean over channels) ``[B, H, W, 1]`` of ``images`` ``[B, H, W, C]``."""
    return jnp.mean(images, axis=-1, keepdims=True)


def pc_colorize(
    key: Array, score_fn: ScoreFn, sde: SDE, gray: Array, num_channels: int, **kwargs
) -> tuple[Array, Array]:
    r"""Colorization (paper Appendix I): samples color images whose channel mean is ``gray``.

    In the decoupled space :math:`x M` (:func:`decoupling_matrix`) the observation is the first
    channel, :math:`\sqrt C\,\text{gray}`; the other channels are generated.

    Args:
        key: PRNG key.
        score_fn: the unconditional ``score_fn(x, t)`` of ``num_channels``-channel images.
        sde: the forward SDE.
        gray: ``[B, H, W, 1]`` gray levels (the mean of the channels) in the model's scale.
        num_channels: the model's channel count ``C >= 2``.
        **kwargs: the sampler options of :func:`pc_masked_sample`.

    Returns:
        ``(samples [B, H, W, C], nfe)`` with ``gray_scale(samples) == gray``.
    """
    basis = decoupling_matrix(num_channels)
    gray = jnp.asarray(gray, jnp.float32)
    if gray.ndim != 4 or gray.shape[-1] != 1:
        raise ValueError(f"`gray` must be [B, H, W, 1]; got {tuple(gray.shape)}.")
    observed = jnp.concatenate(
        [np.sqrt(num_channels) * gray, jnp.zeros((*gray.shape[:-1], num_channels - 1))], axis=-1
    )
    mask = np.zeros((1, 1, num_channels), np.float32)
    mask[..., 0] = 1.0
    return pc_masked_sample(key, score_fn, sde, observed, mask, basis=basis, **kwargs)


# ---------------------------------------------------------------------------------------------
# Class-conditional sampling.


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
    _check_pc(sde, predictor, corrector, n_steps, probability_flow)
    shape = _check_shape(shape)
    labels = _check_labels(class_labels, shape[0], num_classes)
    samples = _guided_pc(
        key,
        sde,
        labels,
        jnp.asarray(guidance_scale, jnp.float32),
        jnp.asarray(snr, jnp.float32),
        jnp.asarray(_check_eps(sde, eps), jnp.float32),
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
    score_fn = lambda x, t: guided_score_fn(x, t, labels, scale)
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
    _choice("solver", solver, SOLVERS)
    shape = _check_shape(shape)
    labels = _check_labels(class_labels, shape[0], num_classes)
    return _guided_ode(
        key,
        sde,
        labels,
        jnp.asarray(guidance_scale, jnp.float32),
        jnp.asarray(_check_eps(sde, eps), jnp.float32),
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
    score_fn = lambda x, t: guided_score_fn(x, t, labels, scale)
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vector_field(t, x, args):
        return rsde.sde(x, jnp.full((shape[0],), t))[0]

    x = sde.prior_sampling(key, shape)
    x, nfe = solve_ode(
        vector_field, x, sde.T, eps, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps
    )
    if denoise:
        x = denoise_step(sde, score_fn, x, jnp.full((shape[0],), eps))
        nfe = nfe + 1
    return x, nfe.astype(jnp.int32)
