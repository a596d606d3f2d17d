"""DDPM++ cont. (VP) on CIFAR-10: the paper's VP model."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("vpsde", "vp/cifar10_ddpmpp_continuous")
    return config
