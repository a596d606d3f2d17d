"""Converter: strict loading, config handling and the converted-checkpoint directory."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import (
    DATA,
    checkpoint,
    ema_output,
    fixture,
    jitted_apply,
    rel_error,
    state_dict,
)

from sde_jax import convert
from sde_jax.convert import layout
from sde_jax.convert.__main__ import main as convert_main
from sde_jax.models import NCSNpp

NAME = "ncsnpp_small_ve"


def config(**model_overrides):
    cfg = json.loads(json.dumps(fixture(NAME)[0]["config"]))
    cfg["model"].update(model_overrides)
    return cfg


def test_module_prefix_and_torch_order():
    sd = {f"module.{k}": v for k, v in state_dict(NAME).items()}
    model, _ = convert.load_score_sde_pytorch(sd, config())
    assert isinstance(model, NCSNpp)
    table = convert.parameter_table(model, (16, 16, 3))
    # The table lists the PyTorch parameters in the state_dict order (the EMA order relies on it).
    assert list(table) == [k for k in state_dict(NAME) if k != "sigmas"]
    assert [k for k, e in table.items() if e.frozen] == ["all_modules.0.W"]


def test_missing_parameter():
    sd = state_dict(NAME)
    del sd["all_modules.5.Conv_0.weight"]
    with pytest.raises(ValueError, match=r"missing parameters \['all_modules.5.Conv_0.weight'\]"):
        convert.load_score_sde_pytorch(sd, config())


def test_unexpected_parameter():
    sd = dict(state_dict(NAME), **{"all_modules.99.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected parameters \['all_modules.99.weight'\]"):
        convert.load_score_sde_pytorch(sd, config())


def test_wrong_shape():
    sd = state_dict(NAME)
    sd["all_modules.1.weight"] = sd["all_modules.1.weight"].T
    with pytest.raises(
        ValueError, match=r"'all_modules.1.weight' has shape \(32, 64\), expected \(64, 32\)"
    ):
        convert.load_score_sde_pytorch(sd, config())


def test_config_mismatch_is_caught():
    # A config with another width: every shape differs, nothing is loaded silently.
    with pytest.raises(ValueError, match="has shape"):
        convert.load_score_sde_pytorch(state_dict(NAME), config(nf=32))
    # The noise-level buffer disagrees with the config.
    with pytest.raises(ValueError, match="sigmas"):
        convert.load_score_sde_pytorch(state_dict(NAME), config(sigma_max=80.0))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("name", "ncsnv2", "model.name"),
        ("normalization", "InstanceNorm++", "model.normalization"),
        ("resblock_type", "resnet", "resblock_type"),
        ("progressive", "skip", "progressive"),
    ],
)
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        convert.model_from_config(config(**{field: value}))
    cfg = config()
    del cfg["model"]["nf"]
    with pytest.raises(ValueError, match=r"model\.nf"):
        convert.model_from_config(cfg)


def test_ema_shadow_mismatch():
    ckpt = checkpoint(NAME)
    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    with pytest.raises(ValueError, match="shadow parameters"):
        convert.checkpoint_state_dict(ckpt, config())
    ckpt = checkpoint(NAME)
    ckpt["ema"]["shadow_params"][0] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"all_modules\.1\.weight"):
        convert.checkpoint_state_dict(ckpt, config())


def test_save_and_load_converted(tmp_path):
    cfg = fixture(NAME)[0]["config"]
    ckpt = checkpoint(NAME)
    model, v = convert.load_score_sde_pytorch(
        convert.checkpoint_state_dict(ckpt, cfg, ema=False), cfg
    )
    _, ema = convert.load_score_sde_pytorch(convert.checkpoint_state_dict(ckpt, cfg), cfg)
    convert.save_converted(
        tmp_path, model, v["params"], ema["params"], config=cfg, step=ckpt["step"]
    )
    model2, tree, meta = convert.load_converted(tmp_path)
    assert model2 == model.clone(parent=None)
    assert meta["sde"] == {"name": "vesde", "sigma_min": 0.01, "sigma_max": 50.0, "N": 1000}
    assert (
        meta["image_shape"] == [16, 16, 3] and meta["continuous"] and tree["step"] == ckpt["step"]
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(tree["ema_params"]),
        jax.tree_util.tree_leaves(ema["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    _, arrays = fixture(NAME)
    out = jitted_apply(model)(
        {"params": tree["ema_params"]}, jnp.asarray(arrays["x_nhwc"]), jnp.asarray(arrays["labels"])
    )
    assert rel_error(out, ema_output(NAME)) < 1e-5


def test_command_line(tmp_path, capsys):
    pytest.importorskip("torch")
    out_dir = tmp_path / "converted"
    code = convert_main(
        [
            "--checkpoint",
            str(DATA / f"{NAME}_checkpoint.pth"),
            "--config",
            str(DATA / f"{NAME}.json"),
            "--out",
            str(out_dir),
        ]
    )
    assert code == 0 and "323,827 parameters" in capsys.readouterr().out
    model, tree, meta = convert.load_converted(out_dir)
    assert meta["source"]["checkpoint"].endswith(".pth") and meta["step"] == 12345
    _, arrays = fixture(NAME)
    x, labels = jnp.asarray(arrays["x_nhwc"]), jnp.asarray(arrays["labels"])
    apply = jitted_apply(model)
    assert rel_error(apply({"params": tree["params"]}, x, labels), arrays["out_nhwc"]) < 1e-5
    assert rel_error(apply({"params": tree["ema_params"]}, x, labels), ema_output(NAME)) < 1e-5


def test_python_config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "import ml_collections\n"
        f"CFG = {config()!r}\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict(CFG)\n"
    )
    cfg = convert.load_config_file(path)
    assert convert.model_from_config(cfg) == convert.model_from_config(config())


def test_project_config_format():
    # This project's configs: an `sde` section; `model` holds the module fields.
    paper = config()
    fields = {
        k: paper["model"][k]
        for k in layout.NCSNPP_FIELDS
        if k not in ("sigma_min", "sigma_max", "num_scales")
    }
    project = {
        "sde": {"name": "vesde", "sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 1000},
        "model": {"name": "ncsnpp", "ema_rate": 0.999, **fields},
        "data": {"image_size": 16, "num_channels": 3, "centered": False},
        "training": {"continuous": True},
    }
    assert convert.model_from_config(project) == convert.model_from_config(paper)
    assert convert.sde_from_config(project) == convert.sde_from_config(paper)
    _, a = convert.load_score_sde_pytorch(state_dict(NAME), project)
    _, b = convert.load_score_sde_pytorch(state_dict(NAME), paper)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
