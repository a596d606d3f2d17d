"""``DataConfig``: the typed, validated form of the program config's ``data`` section.

The ml-collections config stops at this boundary: library functions take a ``DataConfig``. Every
check that can be made without reading data is made here, so that a bad config fails before any work
is done.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from sde_jax.data.catalog import DatasetSpec, get_spec


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to turn it into batches.

    Attributes:
        dataset: a name from ``sde_jax.data.catalog.DATASETS`` (``"digits"``, ``"cifar10"``, ...).
        image_size: the height and width of the images the model sees.
        num_channels: 1 (grayscale) or 3 (RGB); fixed by the data set except for ``"folder"``.
        centered: whether the model sees images in ``[-1, 1]`` (else ``[0, 1]``); see ``data_scaler``.
        random_flip: whether training batches are randomly flipped left-right (never eval batches).
        uniform_dequantization: whether training pixels are uniformly dequantized (level ``k`` of
            ``L`` becomes ``(k + U[0, 1)) / L``; see ``sde_jax.data.transforms.to_unit_interval``).
        levels: the number of levels per channel of the data, 0 for the data set's own
            (``DatasetSpec.levels``: 17 for the digits, 256 for 8-bit images); set it for an image
            folder whose images use fewer levels. Dequantization and bits/dim use it.
        data_dir: the TFDS data directory; ``None`` means ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``.
        folder: the directory of images for ``dataset="folder"`` (and ``"ffhq"``).
        batch_size: the global batch size, summed over all processes.
        seed: the seed of the shuffling and of the random augmentation.
        num_threads: host threads (per worker process) that decode and preprocess batches ahead of
            the consumer.
        num_workers: worker processes for decoding and preprocessing (grain ``mp_prefetch``); 0 keeps
            it in this process. Worth it for large images, whose decoding and resizing hold the GIL;
            each start costs seconds.
    """

    dataset: str = "digits"
    image_size: int = 8
    num_channels: int = 1
    centered: bool = False
    random_flip: bool = True
    uniform_dequantization: bool = False
    levels: int = 0
    data_dir: str | None = None
    folder: str | None = None
    batch_size: int = 128
    seed: int = 0
    num_threads: int = 4
    num_workers: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
        spec = get_spec(self.dataset)
        for name in ("image_size", "batch_size", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be positive; got {getattr(self, name)}.")
        if self.levels != 0 and not 2 <= self.levels <= 256:
            raise ValueError(
                f"data.levels must be 0 (the data set's own, {spec.levels}) or in [2, 256]; "
                f"got {self.levels}."
            )
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0; got {self.num_workers}.")
        if self.num_channels not in spec.channels:
            raise ValueError(
                f"data.num_channels={self.num_channels} does not match data set {self.dataset!r}, "
                f"which has {' or '.join(map(str, spec.channels))} channel(s)."
            )
        if spec.fixed_size is not None and self.image_size != spec.fixed_size:
            raise ValueError(
                f"data.image_size={self.image_size} does not match data set {self.dataset!r}, whose "
                f"images are {spec.fixed_size}x{spec.fixed_size}."
            )
        if spec.max_size is not None and self.image_size > spec.max_size:
            raise ValueError(
                f"data.image_size={self.image_size} is larger than the {spec.max_size}x"
                f"{spec.max_size} images of data set {self.dataset!r} can give without upsampling."
            )
        # A missing data.folder is reported when data is read (``open_source``), so that configs
        # such as FFHQ's still build their model without the images at hand.

    @property
    def spec(self) -> DatasetSpec:
        """The catalog entry of ``dataset``."""
        return get_spec(self.dataset)

    @property
    def num_levels(self) -> int:
        """The number of levels per channel: ``levels``, or the data set's own."""
        return self.levels or self.spec.levels

    @property
    def resolved_data_dir(self) -> str:
        """``data_dir``, or the TFDS default that TFDS itself would use."""
        if self.data_dir:
            return os.path.expanduser(self.data_dir)
        return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image as the model sees it."""
        return (self.image_size, self.image_size, self.num_channels)

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> DataConfig:
        """Builds a ``DataConfig`` from the program config's ``data`` section.

        Args:
            section: an ``ml_collections.ConfigDict`` (or any mapping) holding ``DataConfig`` fields;
                missing fields keep their defaults.
            **overrides: fields set from elsewhere in the program config, e.g.
                ``batch_size=config.training.batch_size``; they win over ``section``.

        Raises:
            ValueError: a field is unknown, has the wrong type or an invalid value.
        """
        values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        if not isinstance(values, Mapping):
            raise TypeError(f"The data config must be a mapping; got {type(section).__name__}.")
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown field(s) in the data config: {', '.join('data.' + k for k in unknown)}; "
                f"allowed fields: {', '.join(sorted(known))}."
            )
        return cls(**values)


def _check_type(name: str, value: Any, annotation: str) -> None:
    # `from __future__ import annotations` keeps field types as strings; the few used here are
    # checked by name. bool is an int subclass, so it is rejected where an int is expected.
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return
    expected = {"str": str, "int": int, "bool": bool}[base]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise ValueError(
            f"data.{name} must be {annotation}; got {value!r} ({type(value).__name__})."
        )
