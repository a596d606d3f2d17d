"""sde_jax: train, sample from and evaluate score-based generative models.

  python main.py --mode=train --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=sample --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=eval --config=configs/digits.py --workdir=runs/digits
  python main.py --mode=fid_stats --config=configs/vp_cifar10.py

Any config field can be overridden, e.g. ``--config.training.batch_size=64``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, logs, samples, reports (not used by fid_stats)."
)
flags.DEFINE_enum(
    "mode", None, ["train", "sample", "eval", "fid_stats", "train_classifier"], "What to do."
)
flags.DEFINE_integer("step", None, "Checkpoint step for --mode=sample (default: the newest).")
flags.mark_flags_as_required(["config", "mode"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.mode != "fid_stats" and not FLAGS.workdir:
        raise app.UsageError(f"--workdir is required for --mode={FLAGS.mode}")
    if not FLAGS["verbosity"].present:
        # Orbax and TFDS log every checkpoint and file at INFO; keep the progress lines readable.
        logging.set_verbosity(logging.WARNING)
    from sde_jax import host_malloc

    # Before anything creates JAX's backend, whose threads would otherwise get their own arenas.
    host_malloc.apply_policy(FLAGS.config.get("host_malloc", "auto"))
    import jax

    from sde_jax.config import Experiment

    if jax.process_count() == 1 and _multi_process_env():
        jax.distributed.initialize()
    if FLAGS.mode == "train_classifier":
        from sde_jax.train_classifier import train_classifier

        train_classifier(FLAGS.config, FLAGS.workdir)
        return
    exp = Experiment.from_config(FLAGS.config)
    if FLAGS.mode == "train":
        from sde_jax.train import train

        train(exp, FLAGS.workdir)
    elif FLAGS.mode == "sample":
        from sde_jax.generate import run_sample_mode

        run_sample_mode(exp, FLAGS.workdir, step=FLAGS.step)
    elif FLAGS.mode == "fid_stats":
        from sde_jax.metrics.programs import run_fid_stats_mode

        run_fid_stats_mode(exp)
    else:
        from sde_jax.evaluate import run_eval_mode

        run_eval_mode(exp, FLAGS.workdir)


def _multi_process_env() -> bool:
    """True when launched as one of several processes: an explicit coordinator, a SLURM job with
    more than one task, or a multi-host TPU slice. ``jax.distributed.initialize()`` then reads the
    addresses and process ids from that environment."""
    import os

    env = os.environ
    return (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )


if __name__ == "__main__":
    app.run(main)
