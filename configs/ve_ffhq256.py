"""NCSN++ cont. (VE) on FFHQ 256x256."""

from configs.defaults import ve_256


def get_config():
    config = ve_256("ffhq", "ve/ffhq_256_ncsnpp_continuous", 348.0)
    return config
