"""NCSN++ cont. (VE) on LSUN church 256x256."""

from configs.defaults import ve_256


def get_config():
    config = ve_256("lsun/church_outdoor", "ve/church_ncsnpp_continuous", 380.0)
    return config
