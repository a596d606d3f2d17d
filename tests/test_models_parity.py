"""Converted reference networks reproduce the original PyTorch outputs (float32, 1e-5 relative)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import (
    CHECKPOINTS,
    DATA,
    EXTRA_NAMES,
    NAMES,
    checkpoint,
    ema_output,
    fixture,
    jitted_apply,
    rel_error,
    state_dict,
)

from sde_jax.convert import checkpoint_state_dict, load_score_sde_pytorch, parameter_table

TOL = 1e-5


@pytest.mark.parametrize("name", NAMES + EXTRA_NAMES)
def test_reference_output(name):
    info, arrays = fixture(name)
    model, variables = load_score_sde_pytorch(state_dict(name), info["config"])
    n_params = sum(v.size for v in jax.tree_util.tree_leaves(variables))
    # Unconditional PyTorch networks keep unused embedding projections, which are not loaded.
    table = parameter_table(model, arrays["x_nhwc"].shape[1:])
    unused = sum(np.prod(e.torch_shape) for e in table.values() if e.flax_path is None)
    assert (unused > 0) == (not model.conditional)
    assert n_params + unused == info["num_parameters"]
    out = jitted_apply(model)(
        variables, jnp.asarray(arrays["x_nhwc"]), jnp.asarray(arrays["labels"])
    )
    assert out.shape == arrays["out_nhwc"].shape
    assert rel_error(out, arrays["out_nhwc"]) < TOL


@pytest.mark.parametrize("name", CHECKPOINTS)
@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_checkpoint_weights(name, ema):
    info, arrays = fixture(name)
    sd = checkpoint_state_dict(checkpoint(name), info["config"], ema=ema)
    model, variables = load_score_sde_pytorch(sd, info["config"])
    out = jitted_apply(model)(
        variables, jnp.asarray(arrays["x_nhwc"]), jnp.asarray(arrays["labels"])
    )
    ref = ema_output(name) if ema else arrays["out_nhwc"]
    assert rel_error(out, ref) < TOL
    if ema:  # the EMA output really differs from the model output
        assert rel_error(out, arrays["out_nhwc"]) > 1e-2


def test_read_pth_checkpoint():
    pytest.importorskip("torch")
    from sde_jax.convert import read_checkpoint

    name = "ncsnpp_small_ve"
    info, _ = fixture(name)
    ckpt = read_checkpoint(DATA / f"{name}_checkpoint.pth")
    expected = checkpoint(name)
    assert ckpt["step"] == expected["step"]
    assert list(ckpt["model"]) == list(expected["model"])
    for ema in (False, True):
        got = checkpoint_state_dict(ckpt, info["config"], ema=ema)
        want = checkpoint_state_dict(expected, info["config"], ema=ema)
        assert got.keys() == want.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
