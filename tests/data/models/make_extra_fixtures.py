"""Regenerates ``extra_*.json`` / ``extra_*.npz``: option combinations of the reference networks
that the shared fixtures do not cover, evaluated with random weights (needs PyTorch and a checkout
of score_sde_pytorch); run once by hand.

Three defects of the reference code make some of these options unusable as released, so they are
patched here to their evident intent (that of the paper's JAX code): the CUDA-only ``upfirdn2d`` is
replaced by its pure-PyTorch version from the same file; the stand-alone nearest-neighbour
``Upsample`` passes the mode where ``F.interpolate`` expects a scale factor; and the fused FIR
up-sampling convolution flips the kernel with a negative-step slice and passes a 4-element stride.

Usage: python tests/data/models/make_extra_fixtures.py /path/to/score_sde_pytorch
"""

import copy
import json
import pathlib
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).parent
SMALL = {"nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}
COMBOS = {
    # name: (base fixture, model overrides)
    "extra_ncsnpp_ddpm_blocks_fir": (
        "ncsnpp_small_ve",
        {"resblock_type": "ddpm", "progressive_input": "input_skip", "progressive_combine": "cat"},
    ),
    "extra_ncsnpp_prog_residual_fir": ("ncsnpp_small_ve", {"progressive": "residual"}),
    "extra_ncsnpp_ddpm_blocks_nofir": (
        "ncsnpp_small_subvp",
        {
            "resblock_type": "ddpm",
            "fir": False,
            "progressive": "output_skip",
            "skip_rescale": False,
        },
    ),
    "extra_ncsnpp_uncond_elu": (
        "ncsnpp_small_ve",
        {"conditional": False, "nonlinearity": "elu", "init_scale": 0.5, "resamp_with_conv": False},
    ),
    "extra_ncsnpp_positional_sigma": (
        "ncsnpp_small_ve",
        {"embedding_type": "positional", "fir": False, "progressive_input": "none"},
    ),
}


def _patch(repo: pathlib.Path) -> None:
    src = (repo / "op" / "upfirdn2d.py").read_text()
    native = src[src.index("def upfirdn2d_native") :]
    op = types.ModuleType("op")
    exec("import torch\nfrom torch.nn import functional as F\n" + native, op.__dict__)
    op.upfirdn2d = lambda x, k, up=1, down=1, pad=(0, 0): op.upfirdn2d_native(
        x, k, up, up, down, down, pad[0], pad[1], pad[0], pad[1]
    )
    sys.modules["op"] = op

    interpolate = F.interpolate

    def fixed_interpolate(x, size=None, scale_factor=None, mode="nearest", *args, **kwargs):
        if isinstance(scale_factor, str):
            mode, scale_factor = scale_factor, None
        return interpolate(x, size, scale_factor, mode, *args, **kwargs)

    F.interpolate = fixed_interpolate
    sys.path.insert(0, str(repo))
    from models import up_or_down_sampling as uds

    def upsample_conv_2d(x, w, k=None, factor=2, gain=1):
        k = uds._setup_kernel(k) * (gain * factor**2)
        p = (k.shape[0] - factor) - (w.shape[-1] - 1)
        wt = torch.flip(w, [2, 3]).permute(1, 0, 2, 3)
        x = F.conv_transpose2d(x, wt, stride=(factor, factor))
        return uds.upfirdn2d(x, torch.tensor(k), pad=((p + 1) // 2 + factor - 1, p // 2 + 1))

    uds.upsample_conv_2d = upsample_conv_2d


def main(repo: str) -> None:
    _patch(pathlib.Path(repo))
    import ml_collections
    from models import ddpm, ncsnpp  # noqa: F401  (registers the networks)
    from models import utils as mutils

    for name, (base, overrides) in COMBOS.items():
        info = json.loads((OUT / f"{base}.json").read_text())
        cfg = copy.deepcopy(info["config"])
        cfg["model"].update(SMALL, **overrides)
        cfg["data"]["image_size"] = 8
        config = ml_collections.ConfigDict(cfg)
        config.device = "cpu"
        torch.manual_seed(0)
        net = mutils.get_model(config.model.name)(config)
        sd = net.state_dict()
        with torch.no_grad():
            for key, value in sd.items():
                if key != "sigmas":
                    value.copy_(torch.randn_like(value) * 0.2)
        net.eval()
        x = torch.rand(3, 3, 8, 8)
        if config.model.embedding_type == "fourier":
            labels, kind = torch.tensor([0.02, 1.5, 30.0]), "sigma"
        elif config.model.scale_by_sigma:
            labels, kind = torch.tensor([0, 400, 999]), "index"
        else:
            labels, kind = torch.tensor([1.5, 400.25, 998.0]), "999t"
        with torch.no_grad():
            out = net(x, labels)
        arrays = {f"param/{k}": v.numpy() for k, v in sd.items()}
        arrays.update(
            x_nhwc=x.numpy().transpose(0, 2, 3, 1),
            labels=labels.numpy(),
            out_nhwc=out.numpy().transpose(0, 2, 3, 1),
        )
        np.savez(OUT / f"{name}.npz", **arrays)
        meta = {
            "name": name,
            "base": base,
            "overrides": dict(SMALL, image_size=8, **overrides),
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "label_kind": kind,
            "config": cfg,
        }
        (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
