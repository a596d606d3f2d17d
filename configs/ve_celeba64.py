"""NCSN++ (VE) on CelebA 64x64."""

from configs.defaults import celeba64


def get_config():
    config = celeba64("ve/celeba_ncsnpp")
    config.training.continuous = False
    return config
