"""Batches for training and evaluation: a ``grain.MapDataset`` over a random-access source.

The global stream is defined once, independently of how many processes read it: the examples of one
split, shuffled with a fresh permutation per epoch (``grain`` ``shuffle`` then ``repeat``), each with
its own random flip and dequantization noise drawn from ``(seed, position in the stream)``, cut into
global batches of ``batch_size``. Process ``p`` of ``P`` reads rows ``[p * B/P, (p + 1) * B/P)`` of
every global batch, so the processes' batches are disjoint, together they are exactly the global
batch, and training on any number of processes sees the same data in the same order. Only the rows a
process reads are decoded by it.

Because the stream is random access, the position of an iterator is one integer, the number of global
batches it has consumed; ``get_state()`` returns it with a description of the stream, and
``set_state()`` on a fresh iterator (even with a different process count) continues exactly there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from absl import flags

from sde_jax.data import transforms
from sde_jax.data.config import DataConfig
from sde_jax.data.sources import open_source, tfds_builder

Batch = dict[str, np.ndarray]


class DatasetInfo(NamedTuple):
    """What the model and the evaluation need to know about a data set.

    Attributes:
        num_examples: ``{"train": n, "eval": m}``, the examples per split.
        image_shape: ``(H, W, C)`` of the images in the batches.
        num_classes: the number of class labels, 0 when the batches carry no ``"label"``.
    """

    num_examples: dict[str, int]
    image_shape: tuple[int, int, int]
    num_classes: int


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Split sizes, image shape and number of classes of ``cfg.dataset``.

    Prepares the digits data set if needed; reads only metadata of TFDS data sets.

    Raises:
        DatasetNotPreparedError: a TFDS data set is not prepared (the message says how).
        FileNotFoundError: the image folder is missing or empty.
        ValueError: the image folder holds files that cannot be read (the message names them).
    """
    spec = cfg.spec
    if spec.source != "tfds":
        num_examples = {split: len(open_source(cfg, split)) for split in spec.splits}
    else:
        splits = tfds_builder(cfg).info.splits
        num_examples = {ours: splits[theirs].num_examples for ours, theirs in spec.splits.items()}
    return DatasetInfo(num_examples, cfg.image_shape, spec.num_classes)


def _preprocess(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    size: int,
    rule: str,
    flip: bool,
    dequantize: bool,
    levels: int,
) -> dict[str, np.ndarray]:
    image = transforms.resize_image(example["image"], size, rule)
    out = {
        "image": transforms.to_unit_interval(
            image, rng, flip=flip, dequantize=dequantize, levels=levels
        )
    }
    if "label" in example:
        out["label"] = np.int32(example["label"])
    return out


class _PaddedLookup:
    """Element ``i`` of a padded pass: example ``i`` if ``i < n``, else a masked-out copy of example 0."""

    def __init__(self, elements: grain.MapDataset, n: int):
        self._elements, self._n = elements, n

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        real = i < self._n
        return {**self._elements[i if real else 0], "mask": np.bool_(real)}


class DataIterator(Iterator[Batch]):
    """An iterator over this process's batches with a checkpointable position.

    Yields ``{"image": float32 [B_local, H, W, C], "label": int32 [B_local]}`` (``"label"`` only for
    labelled data sets), images in ``[0, 1]``.
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        *,
        num_steps: int | None,
        process_index: int,
        process_count: int,
        read_options: grain.ReadOptions,
        num_workers: int,
        description: dict[str, Any],
    ):
        self._batches = batches
        self._num_steps = num_steps
        self._process_index = process_index
        self._process_count = process_count
        self._read_options = read_options
        self._num_workers = num_workers
        self._description = description
        self._step = 0
        self._it: Iterator[Batch] | None = None  # Made on first use, so set_state wastes no reads.

    def _iterator_from(self, step: int) -> Iterator[Batch]:
        # Local batch k of this process is row block `process_index` of global batch k, i.e. entry
        # k * P + p of `batches`; slicing keeps the rest lazy, so other processes' rows are never read.
        stop = None if self._num_steps is None else self._num_steps * self._process_count
        local = self._batches[
            step * self._process_count + self._process_index : stop : self._process_count
        ]
        ds = local.to_iter_dataset(self._read_options)
        if self._num_workers:
            # Worker processes read grain's absl flags, which are unparsed outside an absl program;
            # their defaults are what is wanted then.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
        return iter(ds)

    def close(self) -> None:
        """Stops the prefetching threads and worker processes (also done on garbage collection)."""
        if self._it is not None:
            self._it.close()
            self._it = None

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = self._iterator_from(self._step)
        batch = next(self._it)
        self._step += 1
        return batch

    def __len__(self) -> int:
        """The number of batches in one pass (only for iterators made with ``repeat=False``)."""
        if self._num_steps is None:
            raise TypeError("A repeating data iterator has no length.")
        return self._num_steps

    def get_state(self) -> dict[str, Any]:
        """The position: ``{"step": global batches consumed, ...}``; JSON-serializable.

        Besides ``step`` it holds the description of the stream (data set, split, global batch size,
        seed, ...), which ``set_state`` checks so that a position is never applied to another stream.
        """
        return {"step": self._step, **self._description}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a position returned by ``get_state`` of an iterator over the same stream.

        Raises:
            ValueError: the position belongs to a different stream (the message names the fields).
        """
        state = dict(state)
        step = state.pop("step")
        diff = {k: (state.get(k), v) for k, v in self._description.items() if state.get(k) != v} | {
            k: (v, None) for k, v in state.items() if k not in self._description
        }
        if diff:
            details = ", ".join(
                f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items())
            )
            raise ValueError(
                f"The saved data position belongs to a different data stream ({details})."
            )
        # Checkpoint libraries may hand integers back as numpy scalars.
        valid = isinstance(step, int | np.integer) and not isinstance(step, bool)
        if not valid or step < 0 or (self._num_steps is not None and step > self._num_steps):
            raise ValueError(f"Invalid saved data position step={step!r}.")
        self.close()
        self._step = int(step)


def make_dataset(
    cfg: DataConfig,
    split: str,
    *,
    shuffle: bool,
    repeat: bool,
    seed: int | None = None,
    batch_size: int | None = None,
    drop_remainder: bool = True,
    uniform_dequantization: bool | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataIterator:
    """This process's batches of one split of ``cfg.dataset``.

    Args:
        cfg: the data config.
        split: ``"train"`` or ``"eval"``. Random flips (``cfg.random_flip``) apply to ``"train"`` only.
        shuffle: whether to reshuffle the examples every epoch.
        repeat: whether to go on forever (else one pass).
        seed: the seed of shuffling, flips and dequantization noise; default ``cfg.seed``.
        batch_size: the global batch size; default ``cfg.batch_size``.
        drop_remainder: with ``repeat=False``, whether to drop the last, incomplete global batch of
            the pass; if not, it is padded to full size and every batch has a ``"mask"`` entry
            (``bool [B_local]``, true for real examples), as evaluation of a whole split needs.
        uniform_dequantization: default ``cfg.uniform_dequantization``: level ``k`` of
            ``cfg.num_levels`` becomes ``(k + U[0, 1)) / L`` (``transforms.to_unit_interval``).
        process_index: this process's index; default ``jax.process_index()``.
        process_count: the number of processes; default ``jax.process_count()``.

    Returns:
        A ``DataIterator`` yielding ``{"image": float32 [B_local, H, W, C]`` in ``[0, 1]``,
        ``"label": int32 [B_local]}`` (if the data set has labels) with ``B_local = batch_size /
        process_count``, and ``"mask": bool [B_local]`` when padding (see ``drop_remainder``).

    Raises:
        ValueError: bad split, a batch size not divisible by the process count, or files in the
            image folder that cannot be read (the message names them).
        DatasetNotPreparedError: the TFDS data set is not prepared (the message says how).
        FileNotFoundError: the image folder is missing or empty.
    """
    seed = cfg.seed if seed is None else seed
    batch_size = cfg.batch_size if batch_size is None else batch_size
    dequantize = (
        cfg.uniform_dequantization if uniform_dequantization is None else uniform_dequantization
    )
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"The global batch size {batch_size} (data.batch_size) must be a positive multiple of "
            f"the number of processes ({process_count})."
        )
    local_batch = batch_size // process_count

    source: Sequence = open_source(cfg, split)
    num_examples = len(source)
    shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2).tolist()
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=shuffle_seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.random_map(
        functools.partial(
            _preprocess,
            size=cfg.image_size,
            rule=cfg.spec.resize,
            flip=cfg.random_flip and split == "train",
            dequantize=dequantize,
            levels=cfg.num_levels,
        ),
        seed=augment_seed,
    )
    if repeat:
        num_steps = None
    elif drop_remainder:
        num_steps = num_examples // batch_size
    else:
        # Padding the last global batch keeps every batch the same shape (one compiled step) and
        # every process the same number of batches; "mask" marks the real rows.
        num_steps = -(-num_examples // batch_size)
        ds = grain.MapDataset.range(num_steps * batch_size).map(_PaddedLookup(ds, num_examples))
    if num_steps == 0:
        raise ValueError(
            f"Split {split!r} of {cfg.dataset!r} has {num_examples} examples, fewer than one global "
            f"batch of {batch_size}; pass drop_remainder=False to pad it."
        )
    # Batches of local rows: global batch k is entries [k * P, (k + 1) * P) of `ds`.
    ds = ds.batch(local_batch, drop_remainder=True)
    description = {
        "dataset": cfg.dataset,
        "split": split,
        "image_size": cfg.image_size,
        "batch_size": batch_size,
        "seed": seed,
        "shuffle": shuffle,
        "repeat": repeat,
        "num_examples": num_examples,
        "drop_remainder": drop_remainder or repeat,
    }
    read_options = grain.ReadOptions(
        num_threads=cfg.num_threads, prefetch_buffer_size=2 * cfg.num_threads
    )
    return DataIterator(
        ds,
        num_steps=num_steps,
        process_index=process_index,
        process_count=process_count,
        read_options=read_options,
        num_workers=cfg.num_workers,
        description=description,
    )
