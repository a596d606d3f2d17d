"""Fault injection: diverged training, failed and killed saves, damaged checkpoints, workdirs of
another model, changed evaluation settings, and what a failing command leaves behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from program_runs import ROOT, _env, _main, load_config

from sde_jax.programs.checkpoint import Checkpoints, abstract_state, is_finite
from sde_jax.programs.evaluate import run_eval_mode
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.sample import run_sample_mode
from sde_jax.programs.train import run_train_mode
from sde_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _exp(data_dir, **overrides):
    overrides = {"data.data_dir": data_dir, "training.snapshot_sampling": False, **overrides}
    return Experiment.from_config(load_config("tiny", **overrides))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny run of 8 steps: snapshots 4 and 8, pre-emption checkpoint 6."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    run_train_mode(_exp(data_dir), workdir)
    return workdir


def _copy(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    return workdir


def _restore(exp, workdir, **kwargs):
    ckpts = Checkpoints(workdir, **kwargs)
    try:
        return ckpts.restore(abstract_state(exp, exp.build_model(), make_mesh()))
    finally:
        ckpts.close()


def _all_steps(workdir):
    return {
        (kind, int(name))
        for kind in ("checkpoints", "checkpoints-meta")
        if os.path.isdir(os.path.join(workdir, kind))
        for name in os.listdir(os.path.join(workdir, kind))
        if name.isdigit()
    }


# ---------------------------------------------------------------------------------------------
# NaN.


def test_a_nan_is_reported_at_its_step_and_never_saved(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    steps = {"training.n_iters": 16, "training.log_freq": 16, "training.snapshot_freq": 16}
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step \d+") as error:
        run_train_mode(_exp(data_dir, **steps, **{"optim.lr": 1e6}), workdir)
    nan_step = int(str(error.value).split("at step ")[1].split(";")[0])
    saved = _all_steps(workdir)
    assert saved and all(step < nan_step for _, step in saved)
    assert f"(step {max(s for _, s in saved)}) is kept" in str(error.value)
    # Every checkpoint left is finite (the old code wrote all-NaN pre-emption checkpoints here).
    exp = _exp(data_dir, **steps)
    for kind, step in saved:
        state, _ = Checkpoints(workdir, writable=False).restore(
            abstract_state(exp, exp.build_model(), make_mesh()), step
        )
        assert is_finite(state), (kind, step)


def test_a_non_finite_state_is_not_saved(tmp_path, data_dir):
    exp = _exp(data_dir)
    state = jax.tree.map(jnp.zeros_like, abstract_state(exp, exp.build_model(), make_mesh()))
    bad = state.replace(ema_params=jax.tree.map(lambda p: p + jnp.nan, state.ema_params))
    ckpts = Checkpoints(str(tmp_path / "run"))
    with pytest.raises(FloatingPointError, match="non-finite values at step 3: not saved"):
        ckpts.save(3, bad, {}, snapshot=False)
    ckpts.close()
    assert _all_steps(str(tmp_path / "run")) == set()


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints: checksums at save, fallback to the newest intact one at restore.


def _damage(path, how):
    size = os.path.getsize(path)
    if how == "random_bytes":
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(np.random.default_rng(0).bytes(64))
    elif how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    elif how == "zeroed":
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
    else:
        os.remove(path)


def _largest_data_file(directory):
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if not name.endswith(".json") and "METADATA" not in name
    ]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize(
    "how",
    [
        "random_bytes",
        "truncated",
        # Each variant retrains two steps; these two run with the slow tests.
        pytest.param("zeroed", marks=pytest.mark.slow),
        pytest.param("deleted", marks=pytest.mark.slow),
    ],
)
def test_a_damaged_checkpoint_is_passed_over_for_the_newest_intact_one(
    tmp_path, data_dir, trained, how, caplog
):
    workdir = _copy(trained, tmp_path)
    exp = _exp(data_dir)
    _damage(_largest_data_file(os.path.join(workdir, "checkpoints", "8")), how)
    _, extra = _restore(exp, workdir, writable=False)
    assert extra["step"] == 6  # The pre-emption checkpoint, the newest intact one.
    assert "checkpoint of step 8 is damaged" in caplog.text
    # A reader leaves the damaged checkpoint in place; training sets it aside and replaces it.
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "8"))
    state = run_train_mode(exp, workdir)
    assert int(state.step) == 8
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "8.damaged"))
    _, extra = _restore(exp, workdir, writable=False)
    assert extra["step"] == 8


def test_a_named_damaged_checkpoint_is_an_error(tmp_path, data_dir, trained):
    workdir = _copy(trained, tmp_path)
    _damage(_largest_data_file(os.path.join(workdir, "checkpoints", "4")), "random_bytes")
    exp = _exp(data_dir)
    ckpts = Checkpoints(workdir, writable=False)
    with pytest.raises(ValueError, match="does not match its checksum"):
        ckpts.restore(abstract_state(exp, exp.build_model(), make_mesh()), 4)


def test_a_non_finite_checkpoint_of_an_older_version_is_passed_over(tmp_path, data_dir, trained):
    """Written without the finiteness check (as before it existed): never resumed from."""
    workdir = _copy(trained, tmp_path)
    exp = _exp(data_dir)
    state, extra = _restore(exp, workdir, writable=False)
    nan_state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints-meta"))
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(nan_state), extra=ocp.args.JsonSave(dict(extra, step=9))
    )
    manager.save(9, args=args)
    manager.wait_until_finished()
    manager.close()
    _, extra = _restore(exp, workdir, writable=False)
    assert extra["step"] == 8


# ---------------------------------------------------------------------------------------------
# Saves that fail, and kills.


def test_a_failed_save_stops_the_run_within_seconds_naming_the_folder(tmp_path, data_dir):
    """The pre-emption folder becomes unwritable mid-run (a file in its place, which stops root
    too): the run exits with one line naming it, instead of training on and then hanging."""
    workdir = tmp_path / "run"
    meta = workdir / "checkpoints-meta"
    cmd = [
        sys.executable, "main.py", "--mode=train", "--config=configs/tiny.py",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.training.n_iters=100000", "--config.training.snapshot_sampling=False",
        "--config.training.snapshot_freq=100000", "--config.training.log_freq=2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (meta.exists() and any(p.name.isdigit() for p in meta.iterdir())):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        shutil.move(str(meta), str(tmp_path / "moved"))
        meta.write_text("not a folder")
        failed_at = time.time()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert time.time() - failed_at < 60
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not save the checkpoint" in errors[0], err[-2000:]
    assert str(meta) in errors[0]
    assert "Traceback" not in err


@pytest.mark.slow  # Tens of seconds on 2 CPU cores; run with -m slow.
def test_repeated_kills_resume_to_the_parameters_of_an_uninterrupted_run(tmp_path, data_dir):
    """SIGKILL twice, each time as soon as a newer checkpoint exists (often mid-save): the run
    still ends bit-identical to the uninterrupted one."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["--config.training.snapshot_sampling=False"]
    _main("train", straight, data_dir, *args)
    for round_ in range(2):
        cmd = [
            sys.executable, "main.py", "--mode=train", "--config=configs/tiny.py",
            f"--workdir={killed}", f"--config.data.data_dir={data_dir}", *args,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.time() + 300
            start = max((s for _, s in _all_steps(str(killed))), default=0)
            while max((s for _, s in _all_steps(str(killed))), default=0) <= start:
                assert proc.poll() is None and time.time() < deadline, f"round {round_}"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    _main("train", killed, data_dir, *args)
    exp = _exp(data_dir)
    a, _ = _restore(exp, str(straight), writable=False)
    b, _ = _restore(exp, str(killed), writable=False)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------
# The workdir's model check, and what failing commands leave behind.


def test_a_run_with_other_data_centering_is_refused(tmp_path, data_dir, trained):
    workdir = _copy(trained, tmp_path)
    flipped = _exp(data_dir, **{"data.centered": not _exp(data_dir).data.centered})
    with pytest.raises(ValueError, match=r"different model.*centered"):
        run_train_mode(flipped, workdir)


def test_a_wrong_model_without_run_json_writes_nothing(tmp_path, data_dir, trained):
    workdir = _copy(trained, tmp_path)
    os.remove(os.path.join(workdir, "run.json"))
    before = sorted(os.listdir(workdir))
    with pytest.raises(ValueError):
        run_train_mode(_exp(data_dir, **{"model.nf": 16}), workdir)
    assert sorted(os.listdir(workdir)) == before
    # The right config still resumes, and records run.json with its next checkpoint.
    state = run_train_mode(_exp(data_dir, **{"training.n_iters": 10}), workdir)
    assert int(state.step) == 10 and os.path.exists(os.path.join(workdir, "run.json"))


def test_a_command_that_fails_writes_nothing_into_the_workdir(tmp_path, data_dir):
    workdir = tmp_path / "run"
    unprepared = {"data.dataset": "cifar10", "data.data_dir": str(tmp_path / "empty")}
    exp = Experiment.from_config(load_config("vp_cifar10", **unprepared))
    with pytest.raises(FileNotFoundError, match="prepare"):
        run_train_mode(exp, str(workdir))
    assert not workdir.exists() or not os.listdir(workdir)
    workdir.mkdir()
    for mode in (run_sample_mode, run_eval_mode):
        with pytest.raises(FileNotFoundError):
            mode(_exp(data_dir), str(workdir))
    assert os.listdir(workdir) == []


def test_sample_mode_refuses_to_overwrite_samples_of_other_settings(tmp_path, data_dir, trained):
    workdir = _copy(trained, tmp_path)
    exp = _exp(data_dir, **{"sampling.num_samples": 4})
    out = run_sample_mode(exp, workdir)
    first = np.load(os.path.join(out, "samples.npz"))["images"]
    assert np.array_equal(np.load(os.path.join(run_sample_mode(exp, workdir), "samples.npz"))[
        "images"
    ], first)  # fmt: skip
    with pytest.raises(FileExistsError, match=r"sampling.num_samples: 4 -> 8"):
        run_sample_mode(_exp(data_dir, **{"sampling.num_samples": 8}), workdir)
    assert np.array_equal(np.load(os.path.join(out, "samples.npz"))["images"], first)


def test_user_errors_are_one_line_and_the_traceback_is_on_request(tmp_path, data_dir):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    proc = _main("sample", workdir, data_dir, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert "no checkpoint" in errors[0] and str(workdir) in errors[0]
    assert "Traceback" not in proc.stderr
    proc = _main("sample", workdir, data_dir, check=False, env={"SDE_JAX_TRACEBACK": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Evaluation answers the question asked.


def _eval(data_dir, workdir, **eval_fields):
    fields = {"eval.end_step": 8, "eval.begin_step": 8, **eval_fields}
    return run_eval_mode(_exp(data_dir, **fields), workdir)["8"]


def test_a_resumed_loss_evaluation_with_another_batch_size_is_not_mixed(
    tmp_path, data_dir, trained
):
    workdir = _copy(trained, tmp_path)
    only_loss = {"eval.enable_bpd": False}
    _eval(data_dir, workdir, **only_loss, **{"eval.batch_size": 64})
    # As if killed after the first batch of 64.
    path = os.path.join(workdir, "eval", "step_8.json")
    progress = json.loads(open(path).read())
    progress["loss"]["batches"] = progress["loss"]["batches"][:1]
    del progress["loss"]["mean"]
    with open(path, "w") as f:
        json.dump(progress, f)
    resumed = _eval(data_dir, workdir, **only_loss, **{"eval.batch_size": 32})
    fresh = _eval(data_dir, _copy(trained, tmp_path / "fresh"), **only_loss, **{
        "eval.batch_size": 32
    })  # fmt: skip
    assert resumed["test_loss"] == fresh["test_loss"]


@pytest.mark.slow
def test_bits_per_dim_follow_the_settings_of_each_rerun(tmp_path, data_dir, trained):
    workdir = _copy(trained, tmp_path)
    only_bpd = {"eval.enable_loss": False, "eval.bpd_max_examples": 8}
    one = _eval(data_dir, workdir, **only_bpd, **{"eval.num_repeats": 1})
    two = _eval(data_dir, workdir, **only_bpd, **{"eval.num_repeats": 2})
    assert len(one["bpd_per_repeat"]) == 1 and len(two["bpd_per_repeat"]) == 2
    assert two["bpd_per_repeat"][0] == one["bpd_per_repeat"][0]
    loose = _eval(data_dir, workdir, **only_bpd, **{"eval.num_repeats": 1, "eval.rtol": 1e-1})
    fresh = _eval(
        data_dir,
        _copy(trained, tmp_path / "fresh"),
        **only_bpd,
        **{"eval.num_repeats": 1, "eval.rtol": 1e-1},
    )
    assert loose["bpd"] == fresh["bpd"] != one["bpd"]
