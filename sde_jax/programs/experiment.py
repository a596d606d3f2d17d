"""The whole config, typed: :class:`Experiment`, what ``main.py`` hands to every mode."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from sde_jax.data import DataConfig
from sde_jax.programs.config import (
    EvalConfig,
    ModelConfig,
    OptimConfig,
    SamplingConfig,
    SDEConfig,
    TrainConfig,
    as_dict,
    from_section,
)
from sde_jax.programs.host_malloc import check_policy


def cpu_model_options() -> dict[str, Any]:
    """The networks' XLA:CPU workarounds when JAX computes on the CPU, none elsewhere: Winograd
    convolutions and materialized block outputs (:mod:`sde_jax.models.layers`; measured faster on
    CPU, never measured on accelerators, where ``materialize`` would add a collective per block)."""
    if jax.default_backend() != "cpu":
        return {}
    return {"conv_algorithm": "winograd", "materialize_blocks": True}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Every section of a config, typed: what ``main.py`` hands to the modes.

    Besides the sections, ``seed`` seeds every random stream of a run, and ``host_malloc`` is the
    process's glibc malloc policy (:mod:`sde_jax.programs.host_malloc`; ``main.py`` applies it first).
    """

    sde: SDEConfig
    model: ModelConfig
    training: TrainConfig
    optim: OptimConfig
    sampling: SamplingConfig
    eval: EvalConfig
    data: Any
    seed: int = 42
    host_malloc: str = "auto"

    @classmethod
    def from_config(cls, config: Any) -> Experiment:
        values = as_dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; known: {sorted(known)}")
        for name in ("sde", "model", "training", "data"):
            if name not in values:
                raise ValueError(f"the config has no `{name}` section")
        training = from_section(TrainConfig, values["training"], "training")
        seed = int(values.get("seed", 42))
        exp = cls(
            sde=from_section(SDEConfig, values["sde"], "sde"),
            model=ModelConfig.from_config(values["model"]),
            training=training,
            optim=from_section(OptimConfig, values.get("optim", {}), "optim"),
            sampling=from_section(SamplingConfig, values.get("sampling", {}), "sampling"),
            eval=from_section(EvalConfig, values.get("eval", {}), "eval"),
            # The data section's batch size and seed are the training ones, set in one place.
            data=DataConfig.from_config(values["data"], batch_size=training.batch_size, seed=seed),
            seed=seed,
            host_malloc=str(values.get("host_malloc", "auto")),
        )
        check_policy(exp.host_malloc)
        if not exp.training.continuous and exp.sde.name == "subvpsde":
            raise ValueError("config.training.continuous=False is not defined for subvpsde")
        if exp.training.label_dropout > 0 and not exp.model.fields.get("num_classes"):
            raise ValueError(
                "config.training.label_dropout > 0 (classifier-free guidance) needs a "
                "class-conditional model: set config.model.num_classes to the data set's classes"
            )
        if exp.sampling.predictor == "ancestral_sampling" and exp.sde.name == "subvpsde":
            raise ValueError(
                "config.sampling.predictor='ancestral_sampling' is defined for vesde and vpsde only"
            )
        return exp

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the data and of every sample."""
        return (self.data.image_size, self.data.image_size, self.data.num_channels)

    def build_model(self):
        """The network of this experiment, with the CPU workarounds where JAX computes on the CPU."""
        return self.model.build(self.sde, self.data.centered, **cpu_model_options())

    def signature(self) -> dict[str, Any]:
        """What a checkpoint's contents depend on: the network, the SDE, the image shape, the
        data's scaling (``centered`` changes the network's input mapping) and what the model was
        trained to be a density of (the data's level count and whether it was dequantized), so
        that bits/dim is never measured at another level count than the model was trained for."""
        return {
            "model": self.model.name,
            "model_fields": self.model.fields,
            "sde": dataclasses.asdict(self.sde),
            "image_shape": list(self.image_shape),
            "continuous": self.training.continuous,
            "centered": self.data.centered,
            "levels": self.data.num_levels,
            "uniform_dequantization": self.data.uniform_dequantization,
        }
