"""The program: configs, train / sample / eval end to end, multi-device equivalence, pre-emption."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from program_runs import ROOT, _env, _main, _run, load_config

from sde_jax.programs.experiment import Experiment
from sde_jax.programs.summary import read_scalars

# Reference parameter counts of the paper's networks (PyTorch, all parameters): exact, or in
# millions rounded to two decimals.
PAPER_CONFIGS = {
    "vp_cifar10": 61_804_419,
    "subvp_cifar10": 61_804_419,
    "ve_cifar10": 62_758_915,
    "vp_cifar10_deep": 106.63,
    "subvp_cifar10_deep": 106.63,
    "ve_cifar10_deep": 107.59,
    "vp_cifar10_ddpmpp_discrete": 61_804_419,
    "ve_cifar10_ncsnpp_discrete": 62.69,
    "vp_cifar10_ddpm": 35.22,
    "ve_celeba64": None,
    "ve_bedroom": 65.57,
    "ve_church": 65.57,
    "ve_celebahq256": 65.57,
    "ve_ffhq256": 65.57,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_build_with_reference_parameter_counts(name):
    from sde_jax.programs.checkpoint import abstract_state
    from sde_jax.sharding import make_mesh

    overrides = {"data.folder": "/nonexistent"} if name == "ve_ffhq256" else {}
    exp = Experiment.from_config(load_config(name, **overrides))
    state = abstract_state(exp, exp.build_model(), make_mesh())
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    expected = PAPER_CONFIGS[name]
    if isinstance(expected, int):
        assert count == expected
    elif expected is not None:
        assert round(count / 1e6, 2) == expected
    assert count > 1e7


@pytest.mark.parametrize(
    "name",
    sorted(
        p.stem
        for p in (ROOT / "configs").glob("*.py")
        # digits_classifier is train_classifier's (tests/test_controllable_program.py).
        if p.stem not in ("__init__", "defaults", "digits_classifier")
        and p.stem not in PAPER_CONFIGS
    ),
)
def test_every_other_config_is_valid(name):
    exp = Experiment.from_config(load_config(name))
    if name == "digits_nll":  # What README says it is.
        assert exp.sde.name == "subvpsde" and exp.data.uniform_dequantization
        assert exp.training.likelihood_weighting and exp.training.importance_weighting
    if name == "photo_patches":
        assert exp.image_shape == (16, 16, 3)


def test_tiny_config_trains_samples_and_evaluates(tmp_path, data_dir):
    workdir = tmp_path / "run"
    _main("train", workdir, data_dir)
    snapshots = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert snapshots == [4, 8]
    assert (workdir / "samples" / "step_8.png").stat().st_size > 0
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    scalars = read_scalars(str(events[0]))
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6, 8]
    assert all(np.isfinite(v) for _, v in scalars["train/loss"])
    assert [s for s, _ in scalars["eval/loss"]] == [4, 8]

    _main("sample", workdir, data_dir)
    out = np.load(workdir / "samples" / "step_8" / "samples.npz")
    assert out["images"].shape == (8, 8, 8, 1) and out["images"].dtype == np.uint8
    # On the digits' 17 stored levels (the model is a density of the dequantized (k + u) / 17).
    stored = np.round(np.arange(17) * 255.0 / 16.0).astype(np.uint8)
    assert np.isin(out["images"], stored).all()
    assert int(out["nfe"]) == 20
    assert (workdir / "samples" / "step_8" / "grid.png").exists()

    _main("eval", workdir, data_dir)
    report = json.loads((workdir / "eval" / "report.json").read_text())
    assert sorted(report) == ["4", "8"]
    for entry in report.values():
        assert np.isfinite(entry["test_loss"]) and entry["test_loss"] > 0
        assert len(entry["bpd_per_repeat"]) == 2
        # Barely trained models: somewhere between 0 and far above the 17 levels' 4.09 bits/dim.
        assert 0 < entry["bpd"] < 100 and entry["bpd_stderr"] > 0
        assert entry["bpd_levels"] == 17 and entry["bpd_trained_dequantized"] is True
    # The baselines: the per-pixel histogram and Gaussian of the training digits (from
    # scikit-learn's copy of them), scored on the first 8 held-out digits in the data's order.
    from sklearn.datasets import load_digits

    from sde_jax.data import DataConfig, make_dataset
    from sde_jax.data.digits import split_indices
    from sde_jax.metrics import baselines

    digits = load_digits()
    train = digits.images[split_indices(digits.target)["train"]].astype(np.int64)
    stats = baselines.pixel_statistics([train], 17)
    cfg = DataConfig(dataset="digits", data_dir=data_dir, batch_size=8)
    first = next(iter(make_dataset(cfg, "eval", shuffle=False, repeat=False)))["image"]
    held_out = np.round(np.asarray(first)[..., 0] * 16).astype(np.int64)
    hist = baselines.histogram_bits(stats, held_out)
    gauss = baselines.gaussian_bits(*baselines.fit_gaussian(stats), held_out, 17)
    for entry in report.values():
        np.testing.assert_allclose(entry["bpd_histogram"], hist.mean(), rtol=1e-12)
        np.testing.assert_allclose(entry["bpd_gaussian"], gauss.mean(), rtol=1e-12)
        ours = entry["bpd_baselines"]["histogram"]
        assert ours["model_minus_baseline"] == pytest.approx(entry["bpd"] - hist.mean())
    assert len(os.listdir(os.path.join(data_dir, "sde_jax_baselines"))) == 1  # Cached once.
    # A model of 17-level data is not evaluated as 256-level data.
    refused = _main("eval", workdir, data_dir, "--config.data.levels=256", check=False)
    assert refused.returncode != 0
    assert "levels: workdir has 17, config has 256" in refused.stderr
    # Finished evaluations are skipped when eval runs again.
    before = (workdir / "eval" / "step_8.json").stat().st_mtime_ns
    _main("eval", workdir, data_dir)
    assert (workdir / "eval" / "step_8.json").stat().st_mtime_ns == before


_TRAIN_PROBE = """
import json, sys, jax, numpy as np
sys.path.insert(0, {root!r})
from configs.tiny import get_config
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.train import run_train_mode
cfg = get_config()
cfg.data.data_dir = {data_dir!r}
cfg.training.snapshot_sampling = False
exp = Experiment.from_config(cfg)
state = run_train_mode(exp, {workdir!r})
leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
print(json.dumps({{"devices": jax.device_count(), "sum": sum(float(l.sum()) for l in leaves),
                  "abs": sum(float(np.abs(l).sum()) for l in leaves),
                  "first": leaves[0].ravel()[:8].tolist()}}))
"""


@pytest.mark.slow  # The default run has 1 against 2 processes (test_multiprocess.py).
def test_training_is_the_same_on_1_2_and_4_devices(tmp_path, data_dir):
    results = {}
    for n in (1, 2, 4):
        code = _TRAIN_PROBE.format(
            root=str(ROOT), data_dir=data_dir, workdir=str(tmp_path / str(n))
        )
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        out = _run(["-c", code], env=env).stdout.strip().splitlines()[-1]
        results[n] = json.loads(out)
        assert results[n]["devices"] == n
        losses = read_scalars(str(next((tmp_path / str(n) / "tensorboard").glob("events*"))))
        results[n]["losses"] = [v for _, v in losses["train/loss"]]
    for n in (2, 4):
        np.testing.assert_allclose(results[n]["losses"], results[1]["losses"], rtol=1e-5)
        np.testing.assert_allclose(results[n]["first"], results[1]["first"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(results[n]["abs"], results[1]["abs"], rtol=1e-5)


@pytest.mark.slow  # The default run has repeated kills (test_faults.py).
def test_killed_run_resumes_to_identical_parameters(tmp_path, data_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    extra = (
        "--config.training.n_iters=40",
        "--config.training.snapshot_sampling=False",
        "--config.training.snapshot_freq=40",
    )
    _main("train", straight, data_dir, *extra)

    env = _env()
    cmd = [
        sys.executable,
        "main.py",
        "--mode=train",
        "--config=configs/tiny.py",
        f"--workdir={killed}",
        f"--config.data.data_dir={data_dir}",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    meta = killed / "checkpoints-meta"
    deadline = time.time() + 300
    # Kill as soon as a pre-emption checkpoint past the start exists, mid-run.
    while time.time() < deadline:
        steps = [int(p.name) for p in meta.iterdir() if p.name.isdigit()] if meta.exists() else []
        if steps and max(steps) >= 6:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "40").exists(), "the run finished before it was killed"
    _main("train", killed, data_dir, *extra)

    from sde_jax.programs.checkpoint import Checkpoints, abstract_state
    from sde_jax.sharding import make_mesh

    exp = Experiment.from_config(load_config("tiny"))
    target = abstract_state(exp, exp.build_model(), make_mesh())
    a, _ = Checkpoints(str(straight)).restore(target, 40)
    b, _ = Checkpoints(str(killed)).restore(target, 40)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_saves_and_exits(tmp_path, data_dir):
    workdir = tmp_path / "run"
    env = _env()
    cmd = [
        sys.executable,
        "main.py",
        "--mode=train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.training.n_iters=100000",
        "--config.training.snapshot_sampling=False",
        "--config.training.snapshot_freq_for_preemption=100000",
        "--config.training.snapshot_freq=100000",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        events = list((workdir / "tensorboard").glob("events*")) if workdir.exists() else []
        if events and "train/loss" in read_scalars(str(events[0])):
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()
    assert "SIGTERM" in out.decode()
    steps = [int(p.name) for p in (workdir / "checkpoints-meta").iterdir() if p.name.isdigit()]
    assert steps and steps[0] > 0


@pytest.mark.parametrize(
    "override, match",
    [
        ("--config.data.dataset=imagenet", "data.dataset"),
        ("--config.sde.name=edm", "config.sde.name must be one of"),
        ("--config.model.name=unet", "unknown model"),
        ("--config.sampling.predictor=heun", "config.sampling.predictor must be one of"),
        ("--config.training.batch_size=7", "divisible by the number of devices"),
        ("--config.training.batchsize=8", "batchsize"),
        ("--config.host_malloc=always", "config.host_malloc"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, data_dir, override, match):
    workdir = tmp_path / "run"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = _main("train", workdir, data_dir, override, check=False, env=env)
    assert proc.returncode != 0
    assert match in proc.stderr, proc.stderr[-2000:]
    assert not (workdir / "checkpoints").exists()


def test_workdir_of_another_model_is_refused_and_kept(tmp_path, data_dir):
    workdir = tmp_path / "run"
    _main(
        "train",
        workdir,
        data_dir,
        "--config.training.n_iters=2",
        "--config.training.snapshot_sampling=False",
        "--config.training.snapshot_freq=2",
    )
    before = sorted(str(p) for p in workdir.rglob("*"))
    proc = _main("train", workdir, data_dir, "--config.model.nf=16", check=False)
    assert proc.returncode != 0 and "different model" in proc.stderr
    assert sorted(str(p) for p in workdir.rglob("*")) == before


def test_unprepared_dataset_names_the_prepare_command(tmp_path):
    workdir = tmp_path / "run"
    proc = _run(
        [
            "main.py",
            "--mode=train",
            "--config=configs/vp_cifar10.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={tmp_path / 'empty'}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "cifar10" in proc.stderr and "prepare" in proc.stderr.lower()
    assert not (workdir / "checkpoints").exists()


def test_converted_weights_are_a_run_that_sample_mode_loads(tmp_path, data_dir):
    """The converter's output directory is a workdir: --mode=sample uses its EMA weights."""
    from sde_jax.convert import save_as_run
    from sde_jax.programs.sample import run_sample_mode
    from sde_jax.training import init_state

    config = load_config("tiny", **{"data.data_dir": data_dir, "sampling.num_samples": 4})
    exp = Experiment.from_config(config)
    model = exp.build_model()
    state = init_state(jax.random.key(3), model, exp.optim.build(), (8, 8, 1))
    ema = jax.tree.map(lambda p: p + 0.01, state.params)
    save_as_run(tmp_path / "converted", config, state.params, ema, step=7)
    out = run_sample_mode(exp, str(tmp_path / "converted"))
    assert out.endswith("step_7")
    images = np.load(os.path.join(out, "samples.npz"))["images"]
    assert images.shape == (4, 8, 8, 1)
    # A config of another model is refused instead of loading mismatched weights.
    other = load_config("tiny", **{"model.nf": 16, "data.data_dir": data_dir})
    with pytest.raises(ValueError, match="different model"):
        run_sample_mode(Experiment.from_config(other), str(tmp_path / "converted"))
