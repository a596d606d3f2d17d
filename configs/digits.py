"""The offline default: scikit-learn's 8x8 handwritten digits with a small DDPM++ and the VP SDE.

The 1,797 digits ship inside scikit-learn, so this trains, samples and evaluates with no download:
about 5 minutes of training on 2 CPU cores (1,500 steps of a 1M-parameter DDPM++) gives
recognizable digits.
"""

import ml_collections

from configs.defaults import base_config


def get_config():
    config = base_config()
    config.sde.name = "vpsde"
    config.sde.num_scales = 1000

    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.centered = True
    config.data.random_flip = False  # A mirrored digit is not a digit.
    # Training sees the 17-level digits as bits/dim measures them: (k + U[0, 1)) / 17.
    config.data.uniform_dequantization = True

    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"
    model.ema_rate = 0.995
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (4,)
    model.dropout = 0.0
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = False
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.init_scale = 0.0
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.scale_by_sigma = False
    model.nonlinearity = "swish"

    training = config.training
    training.batch_size = 128
    training.n_iters = 1500
    training.n_jitted_steps = 1  # See sde_jax.training.make_train_step: loops are slow on CPU.
    training.snapshot_freq = 750
    training.snapshot_freq_for_preemption = 250
    training.log_freq = 50
    training.eval_freq = 250
    training.reduce_mean = True
    training.n_snapshot_samples = 64

    config.optim.lr = 2e-3
    config.optim.warmup = 200

    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_samples = 100
    config.sampling.batch_size = 100

    config.eval.batch_size = 100
    config.eval.enable_loss = True
    config.eval.enable_bpd = True
    config.eval.num_repeats = 1
    config.eval.rtol = 1e-4
    config.eval.atol = 1e-4
    return config
