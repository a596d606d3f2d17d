"""A class-conditional digits model for classifier-free guidance (``configs/digits.py`` plus labels).

The network embeds the digit class (and a "no label" token); training replaces each label by that
token with probability ``training.label_dropout``, so one network learns both the conditional and
the unconditional score. Sample a chosen class with a guidance weight::

    python main.py --mode=sample --config=configs/digits_cfg.py --workdir=runs/digits_cfg \
        --config.sampling.task=class_conditional --config.sampling.class_label=3 \
        --config.sampling.guidance_scale=1.0
"""

from configs.digits import get_config as digits_config


def get_config():
    config = digits_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.2
    return config
