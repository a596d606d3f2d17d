"""NCSN++ cont. (VE) on CelebA-HQ 256x256."""

from configs.defaults import ve_256


def get_config():
    config = ve_256("celeb_a_hq", "ve/celebahq_256_ncsnpp_continuous", 348.0)
    return config
