"""A tiny config for tests: the digits data, a minimal network and a short SDE grid, so that
train, sample and eval each finish in seconds on a CPU."""

from configs.digits import get_config as digits_config


def get_config():
    config = digits_config()
    config.sde.num_scales = 20
    model = config.model
    model.nf = 8
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)

    training = config.training
    training.batch_size = 8
    training.n_iters = 8
    training.n_jitted_steps = 1
    training.snapshot_freq = 4
    training.snapshot_freq_for_preemption = 2
    training.log_freq = 2
    training.eval_freq = 4
    training.n_snapshot_samples = 4

    config.optim.warmup = 2
    config.sampling.num_samples = 8
    config.sampling.batch_size = 4
    config.eval.batch_size = 64
    config.eval.bpd_max_examples = 8
    config.eval.num_repeats = 2
    config.eval.rtol = 1e-3
    config.eval.atol = 1e-3
    return config
