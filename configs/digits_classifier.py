"""The noise-conditional classifier for ``configs/digits.py`` (classifier guidance, eq. 14).

The score model's config with a ``classifier`` section, so the SDE and the data are the same::

    python main.py --mode=train_classifier --config=configs/digits_classifier.py \
        --workdir=runs/digits_classifier
    python main.py --mode=sample --config=configs/digits.py --workdir=runs/digits \
        --config.sampling.task=class_conditional --config.sampling.class_label=3 \
        --config.sampling.classifier_workdir=runs/digits_classifier
"""

import ml_collections

from configs.digits import get_config as digits_config


def get_config():
    config = digits_config()
    config.classifier = c = ml_collections.ConfigDict()
    # A WRN-10-2-like network (3 stages of 1 block, 32/64/128 channels): minutes on 2 CPU cores.
    c.width = 16
    c.widen_factor = 2
    c.blocks_per_stage = 1
    c.num_stages = 3
    c.embedding_size = 64
    c.fourier_scale = 16.0
    c.dropout = 0.0
    c.nonlinearity = "swish"
    c.n_iters = 1500
    c.batch_size = 128
    c.lr = 1e-3
    c.warmup = 100
    c.weight_decay = 0.0
    c.eps = 1e-5
    c.log_freq = 100
    c.snapshot_freq = 500
    c.eval_batches = 2
    return config
