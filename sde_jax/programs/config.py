"""Typed, validated views of the program's ml-collections config sections.

:class:`sde_jax.programs.experiment.Experiment` turns each section of a config (``config.sde``, ``config.model``, ``config.training``,
``config.optim``, ``config.sampling``, ``config.eval``) into one of the frozen dataclasses here; no
library function takes a ConfigDict. Every conversion rejects unknown and missing fields and
out-of-range choices with an error naming the field and the allowed values, so a typo on the command
line (``--config.training.batchsize=64``) fails before any work is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import optax

from sde_jax import sampling
from sde_jax.models import get_model
from sde_jax.sde import SDE, VESDE, VPSDE, SubVPSDE
from sde_jax.training import OPTIMIZERS, make_optimizer

T = TypeVar("T")


def as_dict(section: Any) -> dict[str, Any]:
    """A config section (ConfigDict or mapping) as a plain dict."""
    if hasattr(section, "to_dict"):
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    raise TypeError(f"expected a config section (ConfigDict or mapping); got {type(section)}")


def from_section(cls: type[T], section: Any, name: str) -> T:
    """Builds dataclass ``cls`` from a config ``section`` named ``name`` (for error messages)."""
    values = as_dict(section)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.{name}; known: {sorted(fields)}")
    missing = [
        f.name
        for f in fields.values()
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"config.{name} is missing field(s) {missing}")
    return cls(**values)


def _check_choice(section: str, field: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(
            f"config.{section}.{field} must be one of {sorted(allowed)}; got {value!r}"
        )


def _check_positive(section: str, field: str, value: float, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"config.{section}.{field} must be {bound}; got {value!r}")


SDE_NAMES = ("vesde", "vpsde", "subvpsde")


@dataclasses.dataclass(frozen=True)
class SDEConfig:
    """``config.sde``: which forward SDE, and its constants."""

    name: str
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        _check_choice("sde", "name", self.name, SDE_NAMES)
        _check_positive("sde", "num_scales", self.num_scales)
        if self.name == "vesde" and not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("config.sde needs 0 < sigma_min < sigma_max")
        if self.name != "vesde" and not 0 < self.beta_min <= self.beta_max:
            raise ValueError("config.sde needs 0 < beta_min <= beta_max")

    def build(self) -> SDE:
        if self.name == "vesde":
            return VESDE(self.sigma_min, self.sigma_max, self.num_scales)
        cls = VPSDE if self.name == "vpsde" else SubVPSDE
        return cls(self.beta_min, self.beta_max, self.num_scales)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``config.model``: the network (``name`` and its module fields) and the EMA rate.

    ``fields`` are passed to :func:`sde_jax.models.get_model`, which rejects unknown ones. The
    network's discrete noise table (``sigma_min``, ``sigma_max``, ``num_scales``) is taken from
    ``config.sde`` and its input centering from ``config.data.centered``, so the sections cannot
    disagree.
    """

    name: str
    ema_rate: float
    fields: dict

    @classmethod
    def from_config(cls, section: Any) -> ModelConfig:
        values = as_dict(section)
        for key in ("name", "ema_rate"):
            if key not in values:
                raise ValueError(f"config.model is missing field {key!r}")
        name, ema = values.pop("name"), values.pop("ema_rate")
        out = cls(name, float(ema), values)
        if not 0.0 <= out.ema_rate < 1.0:
            raise ValueError(f"config.model.ema_rate must be in [0, 1); got {out.ema_rate}")
        return out

    def build(self, sde_config: SDEConfig, centered: bool, **runtime):
        """The network; ``runtime`` holds choices that change no parameter (e.g. the convolution
        algorithm), which the config does not record."""
        derived = ("sigma_min", "sigma_max", "num_scales", "centered")
        clash = sorted(set(derived) & set(self.fields))
        if clash:
            raise ValueError(
                f"config.model must not set {clash}: they come from config.sde and "
                "config.data.centered"
            )
        fields = dict(self.fields)
        fields.update(
            sigma_min=sde_config.sigma_min,
            sigma_max=sde_config.sigma_max,
            num_scales=sde_config.num_scales,
            centered=centered,
            **runtime,
        )
        return get_model(self.name, **fields)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``config.training``."""

    batch_size: int
    n_iters: int
    snapshot_freq: int
    log_freq: int
    eval_freq: int
    snapshot_freq_for_preemption: int
    snapshot_sampling: bool = True
    n_snapshot_samples: int = 64
    continuous: bool = True
    reduce_mean: bool = False
    likelihood_weighting: bool = False
    importance_weighting: bool = False
    n_jitted_steps: int = 1
    eps: float = 1e-5
    # Class-conditional models (``config.model.num_classes``) train on the data set's labels, each
    # replaced by the "no label" token with this probability (for classifier-free guidance).
    label_dropout: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(
                f"config.training.label_dropout must be in [0, 1); got {self.label_dropout!r}"
            )
        for f in ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq"):
            _check_positive("training", f, getattr(self, f))
        _check_positive(
            "training", "snapshot_freq_for_preemption", self.snapshot_freq_for_preemption
        )
        _check_positive("training", "n_jitted_steps", self.n_jitted_steps)
        for f in (
            "n_iters",
            "snapshot_freq",
            "log_freq",
            "eval_freq",
            "snapshot_freq_for_preemption",
        ):
            if getattr(self, f) % self.n_jitted_steps:
                raise ValueError(
                    f"config.training.{f} ({getattr(self, f)}) must be a multiple of "
                    f"config.training.n_jitted_steps ({self.n_jitted_steps})"
                )

    def loss_options(self) -> dict[str, Any]:
        """The options of :func:`sde_jax.training.make_loss` that this section sets."""
        names = ("continuous", "reduce_mean", "likelihood_weighting", "importance_weighting", "eps")
        return {name: getattr(self, name) for name in names}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """``config.optim``: Adam (or AdamW when ``weight_decay > 0``) with linear warm-up and
    global-norm gradient clipping (``grad_clip < 0`` disables it)."""

    optimizer: str = "Adam"
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000
    grad_clip: float = 1.0

    def __post_init__(self):
        _check_choice("optim", "optimizer", self.optimizer, OPTIMIZERS)
        _check_positive("optim", "lr", self.lr)
        _check_positive("optim", "warmup", self.warmup, allow_zero=True)
        _check_positive("optim", "weight_decay", self.weight_decay, allow_zero=True)

    def build(self) -> optax.GradientTransformation:
        """The optimizer of :func:`sde_jax.training.make_optimizer` with these settings."""
        return make_optimizer(**dataclasses.asdict(self))


SAMPLING_TASKS = ("unconditional", "inpaint", "colorize", "class_conditional")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``config.sampling``: the sampler for snapshots and ``--mode=sample``.

    ``method`` picks a sampler of :func:`sde_jax.sampling.sample`: ``pc`` (``predictor``,
    ``corrector``, ``snr``, ``n_steps_each``, ``probability_flow``), ``ode`` (``ode_solver`` with
    ``ode_controller="pid"`` and ``rtol``/``atol``, or ``"fixed"`` and ``num_steps``/``rho``),
    ``edm_heun`` (``num_steps``, ``rho``), ``edm_stochastic`` (also ``s_churn``, ``s_tmin``,
    ``s_tmax``, ``s_noise``), ``dpm_solver_2m`` (``num_steps``, ``rho``), ``dpm_solver_3m`` and
    ``unipc`` (``num_steps``, ``order``, ``lower_order_final``, ``rho``) or ``ddim``
    (``num_steps``, ``rho``, ``eta``). ``noise_removal`` applies to ``pc`` and ``ode``; the
    few-step methods always end with the denoising step. ``schedule`` picks the few-step methods'
    noise levels (``edm``, ``logsnr``, ``time_uniform``, ``time_quadratic``; ``rho`` is the
    ``edm`` exponent); empty: the method's default (``logsnr`` for ``dpm_solver_3m`` and
    ``unipc``, ``edm`` for the others). ``s_max`` > 0 starts the few-step methods' schedule at
    that noise-to-signal ratio after one jump from the prior's (``s_max`` of
    :func:`sde_jax.sampling.schedule_level`); 0: no jump.
    """

    method: str = "pc"
    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.16
    n_steps_each: int = 1
    probability_flow: bool = False
    noise_removal: bool = True
    ode_solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    ode_controller: str = "pid"
    num_steps: int = 18
    rho: float = 7.0
    schedule: str = ""
    s_max: float = 0.0
    order: int = 3
    lower_order_final: bool = True
    s_churn: float = 10.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    eta: float = 0.0
    num_samples: int = 64
    batch_size: int = 64
    # Levels fitted to the model (--mode=fit_levels; sde_jax.programs.fitted_levels): use them
    # when present, and the fit's prior samples and Adam steps.
    fitted_levels: bool = True
    fit_samples: int = 64
    fit_iterations: int = 100
    # Controllable generation (--mode=sample, see sde_jax.programs.conditional_sample): the task, its input
    # images (PNG file or folder, .npz, or a data-set split name), the mask (PNG/.npy or a name),
    # completions per input, Langevin steps at t = eps before the final denoising, the class and
    # the guidance scale (classifier-free weight w, or classifier scale with classifier_workdir).
    task: str = "unconditional"
    input: str = ""
    mask: str = "lower_half"
    num_completions: int = 4
    final_corrector_steps: int = 0
    class_label: int = 0
    guidance_scale: float = 1.0
    classifier_workdir: str = ""

    def __post_init__(self):
        _check_choice("sampling", "task", self.task, SAMPLING_TASKS)
        _check_positive("sampling", "num_completions", self.num_completions)
        _check_positive("sampling", "final_corrector_steps", self.final_corrector_steps, True)
        _check_positive("sampling", "guidance_scale", self.guidance_scale, allow_zero=True)
        if self.class_label < -1:
            raise ValueError(
                f"config.sampling.class_label must be >= 0, or -1 for every class; got "
                f"{self.class_label}"
            )

        _check_choice("sampling", "method", self.method, sampling.METHODS)
        _check_choice("sampling", "predictor", self.predictor, sampling.PREDICTORS)
        _check_choice("sampling", "corrector", self.corrector, sampling.CORRECTORS)
        _check_choice("sampling", "ode_solver", self.ode_solver, sampling.SOLVERS)
        _check_choice("sampling", "ode_controller", self.ode_controller, sampling.ODE_CONTROLLERS)
        _check_positive("sampling", "num_samples", self.num_samples)
        _check_positive("sampling", "batch_size", self.batch_size)
        _check_positive("sampling", "n_steps_each", self.n_steps_each)
        if not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise ValueError(
                f"config.sampling.num_steps must be an int >= 2; got {self.num_steps!r}"
            )
        _check_positive("sampling", "rho", self.rho)
        few_step = sampling.FEW_STEP_METHODS
        if self.schedule:
            _check_choice("sampling", "schedule", self.schedule, sampling.SCHEDULES)
            if self.method not in few_step:
                raise ValueError(
                    f"config.sampling.schedule applies to {list(few_step)}, not method "
                    f"{self.method!r}; leave it empty"
                )
        _check_positive("sampling", "s_max", self.s_max, allow_zero=True)
        if self.s_max and self.method not in few_step:
            raise ValueError(
                f"config.sampling.s_max applies to {list(few_step)}, not method "
                f"{self.method!r}; leave it 0"
            )
        if self.order not in (1, 2, 3) or isinstance(self.order, bool):
            raise ValueError(f"config.sampling.order must be 1, 2 or 3; got {self.order!r}")
        for f in ("lower_order_final", "fitted_levels"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"config.sampling.{f} must be a bool; got {getattr(self, f)!r}")
        for f in ("s_churn", "s_tmin", "s_noise"):
            _check_positive("sampling", f, getattr(self, f), allow_zero=True)
        if not self.s_tmax >= self.s_tmin:
            raise ValueError(
                f"config.sampling.s_tmax ({self.s_tmax}) must be >= s_tmin ({self.s_tmin})"
            )
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"config.sampling.eta must lie in [0, 1]; got {self.eta!r}")
        if not isinstance(self.fit_samples, int) or self.fit_samples < 4:
            raise ValueError(
                f"config.sampling.fit_samples must be an int >= 4; got {self.fit_samples!r}"
            )
        _check_positive("sampling", "fit_iterations", self.fit_iterations)
        if self.method in few_step and not self.noise_removal:
            raise ValueError(
                f"config.sampling.noise_removal=False applies to 'pc' and 'ode' only; method "
                f"{self.method!r} always ends with its denoising step"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``config.eval``: which snapshots (steps in ``[begin_step, end_step]``, ``end_step = 0`` for
    up to the newest), and which measurements.

    Sample quality (``enable_sampling``, off by default because it needs the Inception weights, see
    :mod:`sde_jax.metrics`): ``num_samples`` samples in rounds of ``config.sampling.batch_size``,
    then FID and KID against ``fid_stats`` (a statistics file from ``--mode=fid_stats``; empty: the
    default path for the data set in the cache directory) and the Inception Score over ``is_splits``
    splits; KID over ``kid_subsets`` subsets of ``kid_subset_size`` (``kid_subsets = 0``: no KID).
    ``inception_weights`` is a weights file (empty: the cache, downloaded on first use), and
    ``inception_batch_size`` the images per jitted Inception call.
    """

    begin_step: int = 0
    end_step: int = 0
    batch_size: int = 256
    enable_loss: bool = True
    enable_bpd: bool = True
    bpd_dataset: str = "eval"
    num_repeats: int = 5
    bpd_max_examples: int = 0
    trace: str = "rademacher"
    rtol: float = 1e-5
    atol: float = 1e-5
    enable_sampling: bool = False
    num_samples: int = 50000
    fid_stats: str = ""
    inception_weights: str = ""
    inception_batch_size: int = 100
    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def __post_init__(self):
        _check_choice("eval", "bpd_dataset", self.bpd_dataset, ("train", "eval"))
        _check_choice("eval", "trace", self.trace, ("rademacher", "gaussian", "exact"))
        _check_positive("eval", "batch_size", self.batch_size)
        _check_positive("eval", "num_repeats", self.num_repeats)
        _check_positive("eval", "num_samples", self.num_samples)
        _check_positive("eval", "inception_batch_size", self.inception_batch_size)
        _check_positive("eval", "is_splits", self.is_splits)
        _check_positive("eval", "kid_subsets", self.kid_subsets, allow_zero=True)
        if self.kid_subset_size < 2:
            raise ValueError(
                f"config.eval.kid_subset_size must be >= 2; got {self.kid_subset_size}"
            )
        if self.is_splits > self.num_samples:
            raise ValueError(
                f"config.eval.is_splits ({self.is_splits}) must not exceed config.eval.num_samples "
                f"({self.num_samples})"
            )
