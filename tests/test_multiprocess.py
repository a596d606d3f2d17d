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
from program_runs import ROOT, _env, load_config

from sde_jax.programs.checkpoint import Checkpoints, abstract_state
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.launch import free_port
from sde_jax.programs.summary import read_scalars
from sde_jax.sharding import make_mesh

TIMEOUT = 600


def _start(workdir, data_dir, mode, *extra, num_processes=2, env=None):
    cmd = [
        sys.executable, "main.py", f"--mode={mode}", "--config=configs/tiny.py",
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


@pytest.mark.slow  # Three cold two-process launches: about 3 minutes of CI.
def test_two_processes_train_and_resume_to_the_parameters_of_one(runs, data_dir):
    """Float32 round-off only: the gradient's all-reduce over 2 devices sums in another order
    than 1 device does (the same holds for 2 devices in 1 process)."""
    one, two = runs
    assert _losses(one) and len(_losses(one)) == len(_losses(two)) == 4
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
    a, b = _state(one, data_dir), _state(two, data_dir)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)
    # Process 0 alone wrote the run's files; nothing was written twice.
    assert sorted(os.listdir(two)) == ["checkpoints", "checkpoints-meta", "run.json", "tensorboard"]
    assert len(glob.glob(os.path.join(two, "tensorboard", "events*"))) == 2  # One per launch.


@pytest.mark.slow  # Four launches; the default run keeps training with resume.
def test_two_processes_sample_and_evaluate_like_one(runs, data_dir, tmp_path):
    one, _ = runs
    single, double = str(tmp_path / "single"), str(tmp_path / "double")
    shutil.copytree(one, single)
    shutil.copytree(one, double)
    evaluate = ("--config.eval.begin_step=8", "--config.eval.num_repeats=1")
    for workdir, n in ((single, 1), (double, 2)):
        _run(workdir, data_dir, "sample", num_processes=n)
        _run(workdir, data_dir, "eval", *evaluate, num_processes=n)
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
