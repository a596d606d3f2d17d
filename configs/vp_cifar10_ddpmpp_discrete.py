"""DDPM++ (discrete VP, the DDPM objective) on CIFAR-10."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("vpsde", "vp/cifar10_ddpmpp", continuous=False)
    return config
