"""The random Inception weights of the parity fixture (``tests/data/inception/``), rebuilt from the
procedure recorded in its JSON, so that the 95 MB state dict need not be stored."""

import json
import pathlib

import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "inception"


def random_state_dict() -> dict[str, np.ndarray]:
    """The fixture's PyTorch-layout state dict: one PCG64 generator, entries drawn in order."""
    spec = json.loads((DATA / "inception_state_dict_order.json").read_text())
    assert spec["bit_generator"] == "numpy PCG64"
    rng = np.random.Generator(np.random.PCG64(spec["seed"]))
    out = {}
    for name, shape, _ in spec["params"]:
        if name.endswith("num_batches_tracked"):
            continue
        leaf = name.rsplit(".", 1)[1]
        if leaf == "running_var":
            value = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
        elif leaf in ("running_mean", "bias"):
            value = 0.1 * rng.standard_normal(shape)
        elif leaf == "weight" and len(shape) == 1:
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        out[name] = value.astype(np.float32)
    return out


def reference_outputs() -> dict[str, np.ndarray]:
    with np.load(DATA / "inception_random_weights_outputs.npz") as f:
        return {k: f[k] for k in f.files}
