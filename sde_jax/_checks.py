"""Argument checks shared by the library's samplers, losses and likelihood.

They run on the host before anything is traced, so that a bad option is a ``ValueError`` naming the
option rather than a tracing error deep inside a compiled program. Each returns the checked value
(normalised where that helps, e.g. ``shape`` as a tuple).
"""

from __future__ import annotations

from collections.abc import Collection

from sde_jax.sde import SDE, VESDE, VPSDE, SubVPSDE


def check_choice(name: str, value: str, allowed: Collection[str]) -> str:
    """``value`` if it is one of ``allowed`` (e.g. the keys of a registry dict)."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {sorted(allowed)}; got {value!r}.")
    return value


def check_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple ``(B, *event)`` of positive ints, with at least one event axis."""
    shape = tuple(shape)
    if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"`shape` must be (B, *event) with positive ints; got {shape}.")
    return shape


def check_sde(sde) -> SDE:
    """``sde`` if it is one of the paper's three SDEs."""
    if not isinstance(sde, VESDE | VPSDE | SubVPSDE):
        raise ValueError(f"`sde` must be a VESDE, VPSDE or SubVPSDE; got {type(sde).__name__}.")
    return sde


def check_eps(sde: SDE, eps: float | None) -> float:
    r"""The smallest time :math:`\epsilon \in (0, T)`; None selects ``sde.sampling_eps``."""
    eps = sde.sampling_eps if eps is None else eps
    if not 0.0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T={sde.T}); got {eps}.")
    return eps


def check_int(name: str, value, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return value


def check_positive(name: str, value) -> float:
    """``value`` as a float if it is > 0."""
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0; got {value!r}.")
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (an int would silently select a branch)."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool; got {value!r}.")
    return value
