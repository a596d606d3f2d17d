"""DDPM++ cont. deep (sub-VP) on CIFAR-10."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("subvpsde", "subvp/cifar10_ddpmpp_deep_continuous")
    config.training.n_iters = 950000
    return config
