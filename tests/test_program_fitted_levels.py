"""--mode=fit_levels writes levels fitted to a run's model; --mode=sample uses them when they were
fitted to the same checkpoint with the same sampler options, and says so."""

import json
import shutil

import jax
import numpy as np
import pytest

from sde_jax.convert import save_as_run
from sde_jax.programs.checkpoint import restore_ema
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.fitted_levels import fitted_path, run_fit_levels_mode
from sde_jax.programs.sample import run_sample_mode
from sde_jax.programs.sampler import experiment_sample_fn
from sde_jax.sharding import make_mesh
from sde_jax.training import init_state


def _run(tmp_path, **sampling):
    from configs.tiny import get_config

    config = get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    defaults = dict(method="dpm_solver_3m", num_steps=4, num_samples=4, fit_samples=8,
                    fit_iterations=3)  # fmt: skip
    sampling = defaults | sampling
    for field, value in sampling.items():
        config.sampling[field] = value
    exp = Experiment.from_config(config)
    state = init_state(jax.random.key(0), exp.build_model(), exp.optim.build(), (8, 8, 1))
    save_as_run(tmp_path / "run", config, state.params, state.params, step=1)
    return exp, str(tmp_path / "run")


@pytest.mark.slow  # Tens of seconds on 2 CPU cores; run with -m slow.
def test_fit_then_sample_uses_the_fitted_levels(tmp_path, capsys):
    exp, workdir = _run(tmp_path)
    path = run_fit_levels_mode(exp, workdir)
    assert path == fitted_path(workdir, exp.sampling)
    with open(path) as f:
        record = json.load(f)
    assert record["step"] == 1 and record["method"] == "dpm_solver_3m"
    assert len(record["levels"]) == len(record["query_levels"]) == 4
    assert record["report"]["nfe"] == 4 and record["report"]["iterations"] == 3
    assert record["options"] == {"order": 3, "lower_order_final": True}

    shutil.copytree(workdir, tmp_path / "plain")
    out = run_sample_mode(exp, workdir)
    assert "sampling on the levels fitted to step 1" in capsys.readouterr().out
    with open(f"{out}/settings.json") as f:
        assert json.load(f)["fitted_levels"]["levels"] == pytest.approx(record["levels"], rel=1e-6)
    fitted = np.load(f"{out}/samples.npz")
    assert int(fitted["nfe"]) == 4

    exp_plain, _ = _run(tmp_path / "other", fitted_levels=False)
    out_plain = run_sample_mode(exp_plain, str(tmp_path / "plain"))
    assert "config.sampling.fitted_levels=False" in capsys.readouterr().out
    plain = np.load(f"{out_plain}/samples.npz")
    assert int(plain["nfe"]) == 4
    # Random weights saturate the uint8 images, and 3 Adam steps on them may keep the logsnr
    # start (the sampler's own default schedule); given levels reach the sampler all the same.
    model, params, _ = restore_ema(exp, workdir, make_mesh())
    levels = {k: np.asarray(record[k], np.float32) for k in ("levels", "query_levels")}
    levels["query_levels"] = 1.5 * levels["query_levels"]
    key = jax.random.key(0)
    x_fit, _ = experiment_sample_fn(exp, model, make_mesh(), levels)(params, key)
    x_plain, _ = experiment_sample_fn(exp, model, make_mesh())(params, key)
    assert float(np.max(np.abs(np.asarray(x_fit) - np.asarray(x_plain)))) > 1e-3


def test_levels_of_another_checkpoint_or_options_are_not_used(tmp_path, capsys):
    exp, workdir = _run(tmp_path)
    path = run_fit_levels_mode(exp, workdir)
    with open(path) as f:
        record = json.load(f)
    record["step"] = 7
    with open(path, "w") as f:
        json.dump(record, f)
    out = run_sample_mode(exp, workdir)
    assert "not using" in capsys.readouterr().out
    with open(f"{out}/settings.json") as f:
        assert "fitted_levels" not in json.load(f)

    exp2, _ = _run(tmp_path / "other", order=2)
    record["step"] = 1
    with open(path, "w") as f:
        json.dump(record, f)
    shutil.rmtree(out)
    run_sample_mode(exp2, workdir)
    assert "fitted with {'order': 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sampling, match",
    [
        (dict(method="pc"), r"config\.sampling\.method must be one of \['edm_heun'"),
        (dict(method="ddim", eta=0.5), r"config\.sampling\.eta must be 0"),
    ],
)
def test_fit_levels_refuses_other_samplers(tmp_path, sampling, match):
    exp, workdir = _run(tmp_path, **sampling)
    with pytest.raises(ValueError, match=match):
        run_fit_levels_mode(exp, workdir)
    assert not (tmp_path / "run" / "fitted_levels").exists()


def test_bad_fit_fields_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"config\.sampling\.fit_samples must be an int >= 4"):
        _run(tmp_path, fit_samples=2)
