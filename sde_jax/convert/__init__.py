r"""Convert the paper's released PyTorch (score_sde_pytorch) checkpoints to this project's models.

Python API:

- :func:`model_from_config` builds the :class:`~sde_jax.models.NCSNpp` or
  :class:`~sde_jax.models.DDPM` described by one of the paper's configs (a dict or ``ConfigDict``
  with the original field names: ``config.model.*``, ``config.data.*``, ``config.training.*``) or
  one of this project's; :func:`parameter_table` maps its PyTorch parameter names to Flax
  (:mod:`~sde_jax.convert.layout`).
- :func:`load_score_sde_pytorch` turns a PyTorch ``state_dict`` (names -> arrays) into
  ``(model, variables)``; ``model.apply(variables, x_nhwc, labels)`` is the network output in eval
  mode. Loading is strict: missing or unexpected names and wrong shapes raise ``ValueError``.
- :func:`read_checkpoint` reads a released ``.pth`` (needs PyTorch: ``pip install sde_jax[torch]``)
  and :func:`checkpoint_state_dict` extracts the model or the EMA weights from it.
- :func:`save_converted` / :func:`load_converted` write and read the converted directory
  (:mod:`~sde_jax.convert.files`); :func:`save_as_run` makes it a run workdir
  (:mod:`~sde_jax.convert.run`).

Command line::

    python -m sde_jax.convert --checkpoint checkpoint_26.pth \
        --config configs/ve/cifar10_ncsnpp_continuous.py --out converted/cifar10_ncsnpp_ve

``--config`` is a Python file defining ``get_config()`` (one of this project's ``configs/*.py``, or
one of the paper's configs) or a JSON file (a config, or a fixture JSON with a ``config`` entry).
With one of this project's configs the directory is also a run workdir: ``python main.py
--mode=sample --config=configs/ve_cifar10.py --workdir=converted/cifar10_ncsnpp_ve`` samples with
the converted EMA weights.
"""

from sde_jax.convert.files import (
    FORMAT_VERSION,
    checkpoint_state_dict,
    load_config_file,
    load_converted,
    load_score_sde_pytorch,
    read_checkpoint,
    save_converted,
)
from sde_jax.convert.layout import (
    ParameterEntry,
    image_shape_from_config,
    model_fields,
    model_from_config,
    parameter_table,
    sde_from_config,
)
from sde_jax.convert.run import save_as_run

__all__ = [
    "FORMAT_VERSION",
    "ParameterEntry",
    "checkpoint_state_dict",
    "image_shape_from_config",
    "load_config_file",
    "load_converted",
    "load_score_sde_pytorch",
    "model_fields",
    "model_from_config",
    "parameter_table",
    "read_checkpoint",
    "save_as_run",
    "save_converted",
    "sde_from_config",
]
