"""NCSN++ (discrete VE, the SMLD objective) on CIFAR-10."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("vesde", "ve/cifar10_ncsnpp", continuous=False)
    return config
