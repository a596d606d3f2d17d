"""A small colour model, offline: 16x16 patches of the two photographs inside scikit-learn
(``sde_jax.data.photos``; 1,550 train and 350 held-out patches), VP SDE, a small DDPM++.

Colorize held-out grey patches with it::

    python main.py --mode=train --config=configs/photo_patches.py --workdir=runs/photos
    python main.py --mode=sample --config=configs/photo_patches.py --workdir=runs/photos \
        --config.sampling.task=colorize --config.sampling.input=eval
"""

from configs.digits import get_config as digits_config


def get_config():
    config = digits_config()
    data = config.data
    data.dataset = "photo_patches"
    data.image_size = 16
    data.num_channels = 3
    data.random_flip = True

    config.model.ch_mult = (1, 2, 2)
    config.model.attn_resolutions = (8,)

    training = config.training
    training.batch_size = 64
    training.n_iters = 3000
    training.snapshot_freq = 1500
    training.eval_freq = 500

    sampling = config.sampling
    sampling.num_samples = 64
    sampling.batch_size = 64
    sampling.num_completions = 4
    config.eval.batch_size = 50
    config.eval.enable_bpd = False
    return config
