"""Data: TFDS data sets read without TensorFlow, image folders, and resumable grain pipelines.

Usage::

    cfg = DataConfig.from_config(config.data, batch_size=config.training.batch_size)
    it = make_dataset(cfg, "train", shuffle=True, repeat=True)
    batch = next(it)            # {"image": float32 [B_local, H, W, C] in [0, 1], "label": int32 [B_local]}
    x = data_scaler(cfg)(batch["image"])      # the model's scale ([-1, 1] if cfg.centered)
    state = it.get_state()      # small JSON-able dict, saved with the checkpoint
    it2 = make_dataset(cfg, "train", shuffle=True, repeat=True)
    it2.set_state(state)        # continues with exactly the batches `it` would have yielded

API:

- ``DataConfig`` (frozen dataclass) and ``DataConfig.from_config(section, **overrides)``: the config
  boundary; unknown fields, wrong types, unknown data set names, image sizes or channel counts that
  do not fit the data set are rejected with errors naming the ``data.*`` field.
- ``make_dataset(cfg, split, *, shuffle, repeat, seed=None, batch_size=None, drop_remainder=True,
  uniform_dequantization=None, process_index=None, process_count=None) -> DataIterator``: this
  process's share of every global batch (``batch_size`` is global; it must divide by the process
  count). ``split`` is ``"train"`` or ``"eval"``. Images are in ``[0, 1]``: scaled ``x / 255``, or
  uniformly dequantized, level ``k`` of ``L = cfg.num_levels`` as ``(k + U[0, 1)) / L`` (the
  data set's level count: 17 for the digits, 256 for 8-bit images); random left-right flips on
  ``"train"`` when ``cfg.random_flip``. ``DataIterator.get_state()/set_state()`` save and restore
  the position; the stream does not depend on the process count (see ``pipeline``).
- ``data_scaler(cfg)`` / ``inverse_scaler(cfg)``: pure maps ``[0, 1]`` <-> the model's scale;
  ``level_indices(x01, levels)``: the level index of undequantized data; ``to_levels(x01,
  levels, dequantized=...)``: a model's samples put back on the data's levels.
- ``dataset_info(cfg) -> DatasetInfo(num_examples={"train": n, "eval": m}, image_shape, num_classes)``.
- ``DATASETS``: the named data sets (``digits``, ``photo_patches``, ``cifar10``, ``celeb_a``, ``lsun/bedroom``,
  ``lsun/church_outdoor``, ``celeb_a_hq``, ``ffhq``, ``folder``); see ``catalog``.
- ``DatasetNotPreparedError``: raised with the exact command that prepares a missing data set.

The digits data set (the offline default) is prepared into the data directory on first use, with no
download and no TensorFlow. The image data sets of the paper are prepared once, with TensorFlow
installed (``pip install 'sde_jax[prepare]'``), by ``python -m sde_jax.data prepare NAME --data_dir
DIR``, which writes array_record files; training then reads them without TensorFlow.
"""

from sde_jax.data.catalog import DATASETS, DatasetSpec
from sde_jax.data.config import DataConfig
from sde_jax.data.pipeline import DataIterator, DatasetInfo, dataset_info, make_dataset
from sde_jax.data.sources import DatasetNotPreparedError, prepare_command
from sde_jax.data.transforms import data_scaler, inverse_scaler, level_indices, to_levels

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataIterator",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "data_scaler",
    "dataset_info",
    "inverse_scaler",
    "level_indices",
    "make_dataset",
    "prepare_command",
    "to_levels",
]
