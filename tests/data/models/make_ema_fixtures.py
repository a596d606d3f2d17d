"""Regenerates ``NAME_ema.npz`` from the reference checkpoints (needs PyTorch); run once by hand.

``NAME_ema.npz`` holds the EMA ``shadow_params`` of ``NAME_checkpoint.pth`` as ``shadow/0000``,
``shadow/0001``, ... (parameter order), the checkpoint's ``step``, and ``out_nhwc``: the reference
network output with the EMA weights on the inputs of ``NAME.npz``. The model weights of the
checkpoints equal the ``param/*`` arrays of ``NAME.npz``, so the tests rebuild the checkpoint
without PyTorch from the two files.

Usage: python tests/data/models/make_ema_fixtures.py /path/to/shared/reference/models
"""

import pathlib
import sys

import numpy as np
import torch


def main(src: str) -> None:
    src_dir = pathlib.Path(src)
    out_dir = pathlib.Path(__file__).parent
    for name in ("ncsnpp_small_ve", "ncsnpp_small_subvp"):
        ckpt = torch.load(src_dir / f"{name}_checkpoint.pth", map_location="cpu", weights_only=True)
        arrays = {f"shadow/{i:04d}": p.numpy() for i, p in enumerate(ckpt["ema"]["shadow_params"])}
        arrays["step"] = np.asarray(ckpt["step"])
        arrays["out_nhwc"] = np.load(src_dir / f"{name}_ema_out.npz")["out_nhwc"]
        np.savez(out_dir / f"{name}_ema.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
