"""DDPM++ cont. (sub-VP) on CIFAR-10."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("subvpsde", "subvp/cifar10_ddpmpp_continuous")
    return config
