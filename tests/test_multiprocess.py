"""Several real JAX processes on 127.0.0.1 as one run (``main.py --num_processes=2``, gloo CPU
collectives): the same answers as one process, and failures that stop every process.

Every launch runs in its own process group with a bounded timeout, and the whole group is killed
when a test ends, pass or fail.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from inception_weights import random_state_dict
from PIL import Image
from program_runs import ROOT, _env, load_config

from sde_jax.metrics import scores, weights
from sde_jax.programs.checkpoint import Checkpoints, abstract_state
from sde_jax.programs.classifier import load_classifier
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.launch import free_port
from sde_jax.programs.summary import read_scalars
from sde_jax.sharding import make_mesh

TIMEOUT = 600


def _start(workdir, data_dir, mode, *extra, num_processes=2, env=None, config="tiny"):
    cmd = [
        sys.executable, "main.py", f"--mode={mode}", f"--config=configs/{config}.py",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.training.snapshot_sampling=False", f"--num_processes={num_processes}", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # One process group: the launcher and its processes.
    )


def _finish(proc, timeout=TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    return proc.returncode, out, err


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run(workdir, data_dir, mode, *extra, **kwargs):
    code, out, err = _finish(_start(workdir, data_dir, mode, *extra, **kwargs))
    assert code == 0, f"{mode} failed ({code}):\n{out[-3000:]}\n{err[-3000:]}"
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The tiny run trained by 1 process to step 8, and by 2 processes to step 4, then resumed
    by 2 processes to step 8."""
    root = tmp_path_factory.mktemp("runs")
    one, two = str(root / "one"), str(root / "two")
    _run(one, data_dir, "train", num_processes=1)
    _run(two, data_dir, "train", "--config.training.n_iters=4")
    _run(two, data_dir, "train")
    return one, two


def _state(workdir, data_dir, step=8):
    exp = Experiment.from_config(load_config("tiny", **{"data.data_dir": data_dir}))
    target = abstract_state(exp, exp.build_model(), make_mesh())
    ckpts = Checkpoints(workdir, writable=False)
    try:
        return ckpts.restore(target, step)[0]
    finally:
        ckpts.close()


def _losses(workdir):
    # A resumed run appends a second event file; together they hold every logged step.
    scalars = {}
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events*"))):
        scalars.update(read_scalars(path)["train/loss"])
    return [v for _, v in sorted(scalars.items())]


def test_two_processes_train_and_resume_to_the_parameters_of_one(runs, data_dir):
    """Float32 round-off only: the gradient's all-reduce over 2 devices sums in another order
    than 1 device does (the same holds for 2 devices in 1 process)."""
    one, two = runs
    assert _losses(one) and len(_losses(one)) == len(_losses(two)) == 4
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
    a, b = _state(one, data_dir), _state(two, data_dir)
    # Adam divides each gradient by its own running scale, so a parameter's error is lr times its
    # gradient's relative error per step, not the gradient's absolute error: a gradient that is a
    # near-cancelling sum (relative round-off up to ~1e-3) moves it by up to lr * 1e-3 per step.
    # Nearly all parameters agree far closer than that.
    lr = load_config("tiny").optim.lr
    bound = lr * 8 * 1e-3
    close = total = 0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.max(np.abs(y - x)) <= bound
        close += int(np.sum(np.abs(y - x) <= 1e-6 + 1e-4 * np.abs(x)))
        total += x.size
    assert close >= 0.999 * total, (close, total)
    # Process 0 alone wrote the run's files; nothing was written twice.
    assert sorted(os.listdir(two)) == ["checkpoints", "checkpoints-meta", "run.json", "tensorboard"]
    assert len(glob.glob(os.path.join(two, "tensorboard", "events*"))) == 2  # One per launch.


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """The random-weight Inception file and a folder of 10 grey 8x8 images to take statistics of
    (batches of 4: the last is padded)."""
    root = tmp_path_factory.mktemp("inception")
    wfile = str(root / "w.npz")
    weights.save_params(wfile, weights.params_from_state_dict(random_state_dict()), "random")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return wfile, str(folder)


@pytest.mark.slow  # 90 s; two-process training and resume stay in the default run.
def test_two_processes_sample_and_evaluate_like_one(runs, data_dir, inception, tmp_path):
    one, _ = runs
    wfile, folder = inception
    quality = (
        f"--config.eval.inception_weights={wfile}", "--config.eval.inception_batch_size=4",
        "--config.eval.num_samples=8", "--config.eval.is_splits=2", "--config.eval.kid_subsets=2",
    )  # fmt: skip
    folder_data = ("--config.data.dataset=folder", f"--config.data.folder={folder}")
    evaluate = (
        "--config.eval.begin_step=8", "--config.eval.num_repeats=1",
        "--config.eval.enable_sampling=True", *quality,
    )  # fmt: skip
    single, double = str(tmp_path / "single"), str(tmp_path / "double")
    shutil.copytree(one, single)
    shutil.copytree(one, double)
    for workdir, n in ((single, 1), (double, 2)):
        stats = f"--config.eval.fid_stats={workdir}/stats.npz"
        _run(workdir, data_dir, "fid_stats", *quality, *folder_data, stats, num_processes=n)
        _run(workdir, data_dir, "sample", num_processes=n)
        _run(workdir, data_dir, "eval", *evaluate, stats, num_processes=n)
    # Samples: identical (each sample's computation is the same on any device; its noise is drawn
    # at the global batch's shape).
    images = [
        np.load(os.path.join(w, "samples", "step_8", "samples.npz")) for w in (single, double)
    ]
    np.testing.assert_array_equal(images[0]["images"], images[1]["images"])
    assert int(images[0]["nfe"]) == int(images[1]["nfe"])
    # Evaluation: the same examples and dequantization noise; the loss's mean and the ODE
    # solver's error norm reduce over 2 devices in another order (2 devices in one process give
    # bit-identical numbers to 2 processes), which moves the adaptive solve within its tolerance.
    reports = [
        json.load(open(os.path.join(w, "eval", "report.json")))["8"] for w in (single, double)
    ]
    np.testing.assert_allclose(reports[1]["test_loss"], reports[0]["test_loss"], rtol=1e-6)
    np.testing.assert_allclose(reports[1]["bpd"], reports[0]["bpd"], rtol=1e-3)
    # The baselines are computed once per data set (process 0) and read by the other process.
    for name in ("histogram", "gaussian"):
        assert reports[1][f"bpd_{name}"] == reports[0][f"bpd_{name}"] > 0
    # The FID path: identical statistics of the same 10 images in the data set's order, and
    # identical features of the same samples (no reduction crosses images), hence identical scores.
    stats = [scores.load_stats(os.path.join(w, "stats.npz")) for w in (single, double)]
    assert stats[0].num_examples == stats[1].num_examples == 10
    np.testing.assert_array_equal(stats[1].features, stats[0].features)
    rounds = [
        [np.load(os.path.join(w, "eval", "step_8", f"samples_round_{r}.npz")) for r in (0, 1)]
        for w in (single, double)
    ]
    for a, b in zip(*rounds, strict=True):
        for k in ("images", "pool_3", "logits_unbiased", "nfe"):
            np.testing.assert_array_equal(b[k], a[k])
    for k in ("fid", "inception_score", "inception_score_std", "kid", "kid_std"):
        assert reports[1][k] == reports[0][k], k
    # Process 0 alone wrote the evaluation's files.
    assert sorted(os.listdir(os.path.join(double, "eval", "step_8"))) == [
        "samples.json", "samples_round_0.npz", "samples_round_1.npz"
    ]  # fmt: skip


@pytest.mark.slow  # Two launches that compile the classifier; the default run tests the rest.
def test_two_processes_train_the_classifier_of_one(tmp_path, data_dir):
    """The classifier's step over a global batch split across processes: the same classifier as
    one process trains, to float32 round-off of the gradient's all-reduce."""
    small = (
        "--config.classifier.n_iters=4", "--config.classifier.batch_size=16",
        "--config.classifier.log_freq=2", "--config.classifier.snapshot_freq=2",
        "--config.classifier.eval_batches=1", "--config.classifier.width=4",
        "--config.classifier.embedding_size=16",
    )  # fmt: skip
    workdirs = [str(tmp_path / f"clf{n}") for n in (1, 2)]
    for workdir, n in zip(workdirs, (1, 2), strict=True):
        _run(workdir, data_dir, "train_classifier", *small, num_processes=n,
             config="digits_classifier")  # fmt: skip
    exp = Experiment.from_config(load_config("digits", **{"data.data_dir": data_dir}))
    x = jax.random.normal(jax.random.key(0), (6, *exp.image_shape))
    t, labels = jax.numpy.linspace(0.05, 0.9, 6), jax.numpy.arange(6)
    log_probs = [np.asarray(load_classifier(w, exp)[0](x, t, labels)) for w in workdirs]
    np.testing.assert_allclose(log_probs[1], log_probs[0], rtol=1e-4, atol=1e-5)
    accuracy = [json.load(open(os.path.join(w, "eval.json"))) for w in workdirs]
    assert accuracy[0].keys() == accuracy[1].keys()
    for k in accuracy[0]:
        np.testing.assert_allclose(accuracy[1][k], accuracy[0][k], atol=1 / 16 + 1e-6)
    assert sorted(os.listdir(workdirs[1])) == sorted(os.listdir(workdirs[0]))


def test_a_launch_with_another_config_per_process_fails_fast(tmp_path, data_dir):
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        _start(
            tmp_path / "run",
            data_dir,
            "train",
            f"--process_id={i}",
            f"--coordinator={coordinator}",
            f"--config.training.n_iters={4 + 4 * i}",
        )
        for i in range(2)
    ]
    start = time.time()
    results = [_finish(p, timeout=300) for p in procs]
    assert time.time() - start < 300
    assert all(code == 1 for code, _, _ in results)
    errors = "".join(err for _, _, err in results)
    assert "launched with another config than process 0" in errors, errors[-3000:]
    assert not (tmp_path / "run").exists()


def test_a_missing_process_stops_the_others_at_the_join_timeout(tmp_path, data_dir):
    """Process 0 alone (its coordinator waits for process 1), and process 1 alone (nothing
    listens at its coordinator): both stop after --join_timeout with a message naming it."""
    procs = [
        _start(
            tmp_path / f"run{i}", data_dir, "train", f"--process_id={i}",
            f"--coordinator=127.0.0.1:{free_port()}", "--join_timeout=5",
        )
        for i in range(2)
    ]  # fmt: skip
    start = time.time()
    results = [_finish(p, timeout=120) for p in procs]
    assert time.time() - start < 120
    for i, (code, _, err) in enumerate(results):
        assert code == 1, err[-3000:]
        assert f"process {i} could not join the run" in err and "within 5 s" in err, err[-3000:]
        assert "are all 2 processes started" in err
        assert not (tmp_path / f"run{i}").exists()


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_run_resumes(tmp_path, data_dir, runs):
    _, two = runs
    workdir = tmp_path / "run"
    launcher = _start(workdir, data_dir, "train")
    try:
        deadline = time.time() + TIMEOUT
        while not (workdir / "checkpoints-meta" / "2").exists():
            assert launcher.poll() is None and time.time() < deadline
            time.sleep(0.1)
        children = subprocess.run(
            ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2
        os.kill(int(children[1]), signal.SIGKILL)
        killed_at = time.time()
        code, _, err = _finish(launcher, timeout=120)
    finally:
        _kill_group(launcher)
    assert code != 0 and time.time() - killed_at < 120
    assert "stopping the others" in err
    _run(workdir, data_dir, "train")
    a, b = _state(two, data_dir), _state(str(workdir), data_dir)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
