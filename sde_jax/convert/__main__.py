"""``python -m sde_jax.convert --checkpoint X.pth --config CONFIG --out DIR``: converts a released
score_sde_pytorch checkpoint; with one of this project's configs the output is also a run workdir."""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from sde_jax.convert.files import (
    checkpoint_state_dict,
    load_config_file,
    load_score_sde_pytorch,
    read_checkpoint,
    save_converted,
)
from sde_jax.convert.layout import is_project_config
from sde_jax.convert.run import save_as_run


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sde_jax.convert",
        description="Convert a score_sde_pytorch checkpoint (.pth) to an sde_jax checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="released .pth checkpoint")
    parser.add_argument("--config", required=True, help="the paper's config (.py or .json)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)

    config = load_config_file(args.config)
    ckpt = read_checkpoint(args.checkpoint)
    model, variables = load_score_sde_pytorch(
        checkpoint_state_dict(ckpt, config, ema=False), config
    )
    _, ema_variables = load_score_sde_pytorch(checkpoint_state_dict(ckpt, config, ema=True), config)
    out = save_converted(
        args.out,
        model,
        variables["params"],
        ema_variables["params"],
        config=config,
        step=ckpt["step"],
        source={"checkpoint": str(args.checkpoint), "config": str(args.config)},
    )
    if is_project_config(config):
        save_as_run(args.out, config, variables["params"], ema_variables["params"], ckpt["step"])
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"wrote {out} ({type(model).__name__}, {n:,} parameters, step {ckpt['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
