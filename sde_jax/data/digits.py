"""scikit-learn's 8x8 handwritten digits as a TFDS data set, prepared offline without TensorFlow.

The 1,797 images ship inside scikit-learn (``sklearn.datasets.load_digits``), so preparing needs
neither a download nor TensorFlow. Pixel values 0..16 become ``uint8`` 0..255 (``round(v * 255 /
16)``). The held-out split is stratified and fixed: 30 images of each class (300 in all) drawn with a
fixed seed form ``test``, the other 1,497 form ``train``.

TFDS registers every ``DatasetBuilder`` subclass by name when its class statement runs, so this module
is imported only when the digits data set has to be prepared (``prepare``); reading a prepared copy
goes through ``tfds.data_source`` and the files alone.

Two TFDS defaults need TensorFlow and are avoided: ``tfds.features.Image`` encodes numpy images with
``tf.image.encode_png``, so examples are given as PIL images, which TFDS encodes with PIL; and
``dataset_info_from_configs`` reads package metadata files, so ``_info`` builds ``DatasetInfo``
directly.

Preparing is atomic: the data set is built in a temporary folder next to ``sklearn_digits/`` and its
version folder is renamed into place only when complete, so a killed prepare leaves nothing that
counts as prepared and the next use prepares again (removing what the killed one left).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

TFDS_NAME = "sklearn_digits"
DIGITS_VERSION = "1.0.0"
NUM_CLASSES = 10
TEST_PER_CLASS = 30
SPLIT_SEED = 0
# Temporary build folders in the data directory; any left there was left by a killed prepare.
_TMP_PREFIX = f".{TFDS_NAME}-preparing-"
# What TFDS names its own unfinished version folders (left in the data directory by a prepare of an
# earlier version of this module that was killed).
_TFDS_INCOMPLETE = "incomplete."


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits in scikit-learn's order.

    Returns:
        ``(images, labels)``: ``uint8 [1797, 8, 8, 1]`` in 0..255 and ``int64 [1797]`` in 0..9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed stratified split: ``TEST_PER_CLASS`` images per class held out for ``test``.

    Returns:
        ``{"train": int [1497], "test": int [300]}``: sorted indices into scikit-learn's order.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), TEST_PER_CLASS, replace=False)
            for c in range(NUM_CLASSES)
        ]
    )
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits: 8x8 grayscale images of 0..9."""

    name = TFDS_NAME
    # TFDS derives the code path (where it looks for checksums) through `importlib_resources`, which
    # it does not install, for modules of an installed package; the plain file path avoids that.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version(DIGITS_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        DIGITS_VERSION: "8x8x1 uint8 images; stratified 1,497/300 train/test split."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        images, labels = load_digits_uint8()
        return {
            split: self._generate_examples(images, labels, idx)
            for split, idx in split_indices(labels).items()
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            # Keyed by the index in scikit-learn's order, so any example can be traced back.
            yield (
                int(i),
                {"image": PIL.Image.fromarray(images[i, :, :, 0]), "label": int(labels[i])},
            )


@contextlib.contextmanager
def _exclusive(root: pathlib.Path) -> Iterator[bool]:
    """Holds an exclusive lock on ``root`` (released by the OS if the process dies); yields whether
    it could be taken (some network file systems cannot lock)."""
    with open(root / f".{TFDS_NAME}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        yield True


def prepare(data_dir: str) -> None:
    """Writes the array_record files and TFDS metadata under ``data_dir/sklearn_digits/1.0.0``.

    The version folder appears only complete (see the module docstring). Processes that share
    ``data_dir`` take turns; the ones that find it prepared return at once.
    """
    root = pathlib.Path(data_dir)
    target = root / TFDS_NAME / DIGITS_VERSION
    if (target / "dataset_info.json").is_file():
        return  # Without taking the lock, so that a prepared read-only data directory works.
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root) as locked:
        if (target / "dataset_info.json").is_file():
            return
        if locked:
            # Under the lock no other process is building, so these are all from killed ones.
            stale = [*root.glob(f"{_TMP_PREFIX}*"), *root.glob(f"{TFDS_NAME}/{_TFDS_INCOMPLETE}*")]
            for path in stale:
                shutil.rmtree(path, ignore_errors=True)
        if target.exists():
            # A version folder without its metadata was not written by this function; it would
            # block the rename and cannot be read.
            shutil.rmtree(target)
        build = pathlib.Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
        try:
            builder = SklearnDigits(data_dir=str(build), file_format="array_record")
            # Nothing is downloaded; a throw-away download directory keeps TFDS from leaving an
            # empty `downloads/` folder behind.
            with tempfile.TemporaryDirectory() as download_dir:
                builder.download_and_prepare(download_dir=download_dir)
            target.parent.mkdir(exist_ok=True)
            try:
                os.rename(build / TFDS_NAME / DIGITS_VERSION, target)
            except OSError:
                # Without the lock another process may have renamed its copy first, which is fine.
                if not (target / "dataset_info.json").is_file():
                    raise
        finally:
            shutil.rmtree(build, ignore_errors=True)
