"""NCSN++ cont. deep (VE) on CIFAR-10."""

from configs.defaults import cifar10


def get_config():
    config = cifar10("vesde", "ve/cifar10_ncsnpp_deep_continuous")
    config.training.n_iters = 950000
    return config
