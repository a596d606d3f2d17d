"""NCSN++ cont. (VE) on LSUN bedroom 256x256."""

from configs.defaults import ve_256


def get_config():
    config = ve_256("lsun/bedroom", "ve/bedroom_ncsnpp_continuous", 378.0)
    return config
