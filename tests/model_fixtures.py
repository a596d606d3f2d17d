"""Loading the reference-network fixtures of ``tests/data/models`` (see its README)."""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "models"
NAMES = (
    "ddpmpp_small_vp",
    "ncsnpp_small_ve",
    "ncsnpp_small_subvp",
    "ncsnpp_prog_ve",
    "ddpm_small_vp",
)
# Option combinations the shared fixtures leave out (made by make_extra_fixtures.py).
EXTRA_NAMES = (
    "extra_ncsnpp_ddpm_blocks_fir",
    "extra_ncsnpp_prog_residual_fir",
    "extra_ncsnpp_ddpm_blocks_nofir",
    "extra_ncsnpp_uncond_elu",
    "extra_ncsnpp_positional_sigma",
)
CHECKPOINTS = ("ncsnpp_small_ve", "ncsnpp_small_subvp")


@functools.cache
def fixture(name: str) -> tuple[dict, dict]:
    """``(info, arrays)``: the fixture JSON and the npz contents."""
    info = json.loads((DATA / f"{name}.json").read_text())
    with np.load(DATA / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return info, arrays


def state_dict(name: str) -> dict[str, np.ndarray]:
    """The PyTorch state_dict of fixture ``name`` (no ``module.`` prefix)."""
    _, arrays = fixture(name)
    return {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}


def checkpoint(name: str) -> dict:
    """The released-checkpoint structure of ``name`` rebuilt without PyTorch (as
    :func:`sde_jax.convert.read_checkpoint` returns it)."""
    with np.load(DATA / f"{name}_ema.npz") as z:
        shadow = [z[k] for k in sorted(k for k in z.files if k.startswith("shadow/"))]
        step = int(z["step"])
    model = {f"module.{k}": v for k, v in state_dict(name).items()}
    return {"model": model, "ema": {"shadow_params": shadow}, "step": step}


def ema_output(name: str) -> np.ndarray:
    with np.load(DATA / f"{name}_ema.npz") as z:
        return z["out_nhwc"]


def rel_error(out, ref) -> float:
    """Largest absolute error relative to the largest reference magnitude."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


@functools.cache
def jitted_apply(model):
    return jax.jit(model.apply)
