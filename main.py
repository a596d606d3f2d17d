"""sde_jax: train, sample from and evaluate score-based generative models.

  python main.py --mode=train --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=sample --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=fit_levels --config=configs/digits.py --workdir=runs/digits \
      --config.sampling.method=dpm_solver_3m --config.sampling.num_steps=10
  python main.py --mode=eval --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=fid_stats --config=configs/vp_cifar10.py

Any config field can be overridden, e.g. ``--config.training.batch_size=64``.

A problem with the config, the workdir, the data or a file is reported in one line naming it;
``--verbosity=1`` (or ``SDE_JAX_TRACEBACK=1``) shows the traceback as well.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sde_jax.programs import host_malloc

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, logs, samples, reports (not used by fid_stats)."
)
flags.DEFINE_enum(
    "mode",
    None,
    ["train", "sample", "eval", "fid_stats", "train_classifier", "fit_levels"],
    "What to do.",
)
flags.DEFINE_integer(
    "step", None, "Checkpoint step for --mode=sample and fit_levels (default: the newest)."
)
flags.DEFINE_integer(
    "num_processes",
    1,
    "Run as this many cooperating processes on this machine (or, with "
    "--process_id and --coordinator, the number of processes of a run launched by hand).",
)
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0's coordinator (multi-process).")
flags.DEFINE_integer(
    "join_timeout",
    120,
    "Seconds a multi-process run waits for all its processes to join before it stops.",
)
flags.mark_flags_as_required(["config", "mode"])


# What bad input, a missing file or a diverged run raise: reported in one line. Anything else is a
# bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, NotImplementedError)


def main(argv):
    try:
        run(argv)
    except USER_ERRORS as e:
        if FLAGS.verbosity >= 1 or os.environ.get("SDE_JAX_TRACEBACK"):
            raise
        message = " ".join(str(e).split())  # One line, whatever the exception held.
        print(f"error: --mode={FLAGS.mode}: {message}", file=sys.stderr)
        sys.exit(1)


def run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.num_processes < 1:
        raise app.UsageError(f"--num_processes must be >= 1; got {FLAGS.num_processes}")
    if FLAGS.join_timeout < 1:
        raise app.UsageError(f"--join_timeout must be >= 1 second; got {FLAGS.join_timeout}")
    if FLAGS.num_processes > 1 and FLAGS.process_id is None:
        from sde_jax.programs.launch import launch  # Starts no JAX: it only runs the others.

        status = launch(sys.argv, FLAGS.num_processes)
        sys.exit(status if status >= 0 else 128 - status)
    if FLAGS.mode != "fid_stats" and not FLAGS.workdir:
        raise app.UsageError(f"--workdir is required for --mode={FLAGS.mode}")
    if not FLAGS["verbosity"].present:
        # Orbax and TFDS log every checkpoint and file at INFO; keep the progress lines readable.
        logging.set_verbosity(logging.WARNING)
    # Before anything creates JAX's backend or another thread that allocates: the programs import
    # Orbax, grain and TensorStore, whose threads would otherwise get malloc arenas of their own,
    # hence the imports here.
    host_malloc.apply_policy(FLAGS.config.get("host_malloc", "auto"))
    from sde_jax.programs.classifier import run_train_classifier_mode
    from sde_jax.programs.distributed import check_same_run, initialize
    from sde_jax.programs.evaluate import run_eval_mode
    from sde_jax.programs.experiment import Experiment
    from sde_jax.programs.fitted_levels import run_fit_levels_mode
    from sde_jax.programs.quality import run_fid_stats_mode
    from sde_jax.programs.sample import run_sample_mode
    from sde_jax.programs.train import run_train_mode

    initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, FLAGS.join_timeout)
    check_same_run(
        mode=FLAGS.mode,
        config=FLAGS.config.to_dict(),
        workdir=os.path.abspath(FLAGS.workdir or ""),
        step=FLAGS.step,
    )
    if FLAGS.mode == "train_classifier":
        run_train_classifier_mode(FLAGS.config, FLAGS.workdir)
        return
    exp = Experiment.from_config(FLAGS.config)
    if FLAGS.mode == "train":
        run_train_mode(exp, FLAGS.workdir)
    elif FLAGS.mode == "sample":
        run_sample_mode(exp, FLAGS.workdir, step=FLAGS.step)
    elif FLAGS.mode == "fit_levels":
        run_fit_levels_mode(exp, FLAGS.workdir, step=FLAGS.step)
    elif FLAGS.mode == "fid_stats":
        run_fid_stats_mode(exp)
    else:
        run_eval_mode(exp, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
