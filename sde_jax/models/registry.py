"""The score networks by name, built from plain keyword fields."""

from __future__ import annotations

import flax.linen as nn

from sde_jax.models.ddpm import DDPM
from sde_jax.models.ncsnpp import NCSNpp

MODELS: dict[str, type[nn.Module]] = {"ncsnpp": NCSNpp, "ddpm": DDPM}


def get_model(name: str, **fields) -> nn.Module:
    """The network ``name`` ('ncsnpp' or 'ddpm') with the given module fields.

    Raises:
        ValueError: for an unknown name or field, or an invalid option value.
    """
    try:
        cls = MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}") from None
    known = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name")}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
    return cls(**fields)
