"""The program layer: the modes of ``main.py`` over the library, and what a run writes.

One entry point per mode, each ``run_<mode>_mode`` in its module (``train``, ``sample``,
``evaluate``, ``quality`` for ``fid_stats``, ``classifier`` for ``train_classifier``); configs
become typed sections (:class:`sde_jax.programs.experiment.Experiment`). Nothing in the library
imports this package. This file imports nothing, so that ``main.py`` can apply the malloc policy
(:mod:`sde_jax.programs.host_malloc`) before the modes load Orbax, grain and TensorStore.
"""
