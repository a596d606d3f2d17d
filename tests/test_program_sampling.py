"""The program's config selects any method of `sde_jax.sampling.sample`."""

import re

import jax
import numpy as np
import pytest

from sde_jax.convert import save_as_run
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.sample import run_sample_mode
from sde_jax.programs.sampler import sampler_options
from sde_jax.sampling import METHODS, method_options
from sde_jax.training import init_state


def _tiny_config(tmp_path, **sampling):
    from configs.tiny import get_config

    config = get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    for field, value in sampling.items():
        config.sampling[field] = value
    return config


def test_config_methods_are_the_samplers_methods(tmp_path):
    """The config accepts exactly the samplers' methods: the error lists every one of them."""
    config = _tiny_config(tmp_path, method="no_such_method")
    with pytest.raises(ValueError, match=r"config\.sampling\.method must be one of") as error:
        Experiment.from_config(config)
    listed = re.search(r"\[(.*)\]", str(error.value)).group(1)
    assert {name.strip(" '") for name in listed.split(",")} == set(METHODS)


@pytest.mark.parametrize(
    "sampling, match",
    [
        (dict(method="dpm_solver"), r"config.sampling.method must be one of \[.*'dpm_solver_2m'"),
        (dict(method="ddim", num_steps=1), "config.sampling.num_steps must be an int >= 2"),
        (dict(method="ddim", eta=-0.5), r"config.sampling.eta must lie in \[0, 1\]"),
        (dict(rho=0.0), "config.sampling.rho must be > 0"),
        (dict(s_churn=-1.0), "config.sampling.s_churn must be >= 0"),
        (dict(s_tmin=5.0, s_tmax=1.0), "config.sampling.s_tmax"),
        (dict(ode_controller="constant"), r"config.sampling.ode_controller must be one of"),
        (dict(method="edm_heun", noise_removal=False), "noise_removal=False applies to 'pc'"),
        (dict(method="unipc", schedule="linear"), r"config.sampling.schedule must be one of"),
        (dict(method="pc", schedule="logsnr"), "config.sampling.schedule applies to"),
        (dict(method="unipc", order=0), "config.sampling.order must be 1, 2 or 3"),
        (dict(method="unipc", s_max=-1.0), "config.sampling.s_max must be >= 0"),
        (dict(method="pc", s_max=5.0), "config.sampling.s_max applies to"),
        (dict(num_step=20), r"unknown field\(s\) \['num_step'\] in config.sampling"),
    ],
)
def test_bad_sampling_config_is_a_clear_error(tmp_path, sampling, match):
    config = _tiny_config(tmp_path)
    config.sampling.unlock()  # Lets the misspelled field in, as a wrong --config flag would try.
    for field, value in sampling.items():
        config.sampling[field] = value
    with pytest.raises(ValueError, match=match):
        Experiment.from_config(config)


def test_sampler_options_pass_only_the_methods_fields(tmp_path):
    def options(**sampling):
        return sampler_options(Experiment.from_config(_tiny_config(tmp_path, **sampling)).sampling)

    assert options(method="pc", predictor="reverse_diffusion", corrector="langevin") == dict(
        predictor="reverse_diffusion",
        corrector="langevin",
        snr=0.16,
        n_steps=1,
        denoise=True,
        probability_flow=False,
    )
    assert options(method="ode") == dict(
        solver="dopri5", controller="pid", rtol=1e-5, atol=1e-5, denoise=True
    )
    assert options(method="ode", ode_controller="fixed", num_steps=12) == dict(
        solver="dopri5", controller="fixed", num_steps=12, rho=7.0, denoise=True
    )
    assert options(method="ddim", eta=0.5, num_steps=9) == dict(num_steps=9, rho=7.0, eta=0.5)
    assert options(method="dpm_solver_2m") == dict(num_steps=18, rho=7.0)
    assert options(method="dpm_solver_2m", schedule="logsnr") == dict(
        num_steps=18, rho=7.0, schedule="logsnr"
    )
    assert options(method="ddim", s_max=5.0) == dict(num_steps=18, rho=7.0, s_max=5.0, eta=0.0)
    assert options(method="unipc", order=2, lower_order_final=False) == dict(
        num_steps=18, rho=7.0, order=2, lower_order_final=False
    )
    assert set(options(method="edm_stochastic")) == {
        "num_steps",
        "rho",
        "s_churn",
        "s_tmin",
        "s_tmax",
        "s_noise",
    }
    for method in METHODS:
        assert set(options(method=method)) <= set(method_options(method))


@pytest.mark.parametrize(
    "sampling", [dict(method="dpm_solver_2m"), dict(method="unipc", s_max=5.0)], ids=str
)
def test_sample_mode_runs_a_fast_method(tmp_path, sampling):
    """--mode=sample with a few-step method (and s_max): NFE = num_steps."""
    config = _tiny_config(tmp_path, num_steps=3, num_samples=4, **sampling)
    exp = Experiment.from_config(config)
    state = init_state(jax.random.key(0), exp.build_model(), exp.optim.build(), (8, 8, 1))
    save_as_run(tmp_path / "run", config, state.params, state.params, step=1)
    out = run_sample_mode(exp, str(tmp_path / "run"))
    saved = np.load(f"{out}/samples.npz")
    assert saved["images"].shape == (4, 8, 8, 1) and int(saved["nfe"]) == 3
