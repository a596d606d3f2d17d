"""The DDPM baseline U-Net (discrete VP) on CIFAR-10."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("vpsde", "vp/ddpm/cifar10", continuous=False)
    return config
