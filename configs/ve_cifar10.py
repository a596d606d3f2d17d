"""NCSN++ cont. (VE) on CIFAR-10: the paper's FID 2.20 model."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("vesde", "ve/cifar10_ncsnpp_continuous")
    return config
