"""The digits for likelihood: the techniques of Song et al. (2021), "Maximum likelihood training of
score-based diffusion models", on the offline digits.

Training sees the digits as bits/dim measures them, uniformly dequantized at their 17 levels; the
loss weights time by the likelihood weight g(t)^2 and samples t in proportion to it (importance
sampling), which makes it a bound on the negative log-likelihood with low variance. The sub-VP SDE
gave the paper's best likelihoods. See README's "Likelihood on the digits" for what it reaches.
"""

from configs.digits import get_config as digits_config


def get_config():
    config = digits_config()
    config.sde.name = "subvpsde"
    config.data.uniform_dequantization = True

    training = config.training
    training.likelihood_weighting = True
    training.importance_weighting = True
    training.reduce_mean = False
    training.n_iters = 6000
    training.snapshot_freq = 1500
    training.snapshot_freq_for_preemption = 500
    training.eval_freq = 500

    config.model.dropout = 0.1
    config.model.ema_rate = 0.999
    config.optim.lr = 1e-3
    config.optim.warmup = 500

    config.eval.begin_step = training.n_iters
    config.eval.enable_loss = True
    config.eval.enable_bpd = True
    config.eval.num_repeats = 1
    config.eval.rtol = 1e-5
    config.eval.atol = 1e-5
    return config
