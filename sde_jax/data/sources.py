"""Random-access sources of ``uint8`` images: prepared TFDS data sets and folders of image files.

A source has ``len()`` and ``source[i] -> {"image": uint8 [H, W, C], ("label": int)}``, which is what
``grain.MapDataset.source`` needs. TFDS data sets are read with ``tfds.data_source`` from
array_record files, which needs no TensorFlow; images are decoded with PIL (or OpenCV if installed).
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from sde_jax.data.catalog import DatasetSpec
from sde_jax.data.config import DataConfig
from sde_jax.data.photos import PatchSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_VERSION = re.compile(r"\d+\.\d+\.\d+")


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS data set is missing from the data directory, or is not stored as array_record."""


def prepare_command(spec: DatasetSpec, data_dir: str) -> str:
    """The shell command that prepares ``spec`` into ``data_dir`` as array_record files."""
    cmd = [sys.executable, "-m", "sde_jax.data", "prepare", spec.name, "--data_dir", data_dir]
    if spec.name == "celeb_a_hq":
        cmd += ["--manual_dir", "DIR_WITH_data256x256.tar"]
    return shlex.join(cmd)


def _not_prepared(spec: DatasetSpec, data_dir: str, why: str) -> DatasetNotPreparedError:
    extra = (
        ""
        if spec.auto_prepare
        else " Preparing it needs TensorFlow once: pip install 'sde_jax[prepare]'."
    )
    manual = f" {spec.manual}" if spec.manual else ""
    return DatasetNotPreparedError(
        f"Data set {spec.name!r} (TFDS {spec.tfds_name!r}) {why} in {data_dir}.{extra}{manual} "
        f"Prepare it with:\n  {prepare_command(spec, data_dir)}"
    )


def tfds_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
    """The TFDS builder of ``cfg.dataset``, prepared as array_record in ``cfg.resolved_data_dir``.

    The digits data set is prepared on first use (offline, no TensorFlow); any other data set that is
    not prepared raises.

    Raises:
        DatasetNotPreparedError: the data set is not prepared, or not in array_record format; the
            message holds the command that prepares it.
    """
    spec, data_dir = cfg.spec, cfg.resolved_data_dir
    if spec.source != "tfds":
        raise ValueError(f"Data set {spec.name!r} is read from its {spec.source}, not TFDS.")
    if spec.auto_prepare and not _is_prepared(spec.tfds_name, data_dir):
        from sde_jax.data import digits  # Registers its builder class; see its docstring.

        try:
            digits.prepare(data_dir)
        except Exception:
            # Processes sharing a data directory may race to prepare it; losing the race is fine.
            if not _is_prepared(spec.tfds_name, data_dir):
                raise
    try:
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _not_prepared(spec, data_dir, "is not prepared") from e
    if not builder.is_prepared():
        raise _not_prepared(spec, data_dir, "is not prepared")
    formats = builder.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        stored = ", ".join(sorted(f.value for f in formats))
        raise DatasetNotPreparedError(
            f"Data set {spec.name!r} (TFDS {spec.tfds_name!r}) is stored in {builder.data_dir} as "
            f"{stored}, which cannot be read without TensorFlow. Convert it once to array_record "
            "(needs TensorFlow: pip install 'sde_jax[prepare]'):\n"
            f"  tfds convert_format --dataset_version_dir={builder.data_dir} "
            "--out_file_format=array_record\n"
            f"or prepare it into another data directory with:\n  {prepare_command(spec, '<DIR>')}"
        )
    return builder


def _is_prepared(tfds_name: str, data_dir: str) -> bool:
    root = pathlib.Path(data_dir, *tfds_name.split("/"))
    # Only version folders count: a killed TFDS build leaves `incomplete.*` folders with metadata.
    return root.is_dir() and any(
        _VERSION.fullmatch(p.parent.name) for p in root.glob("*/dataset_info.json")
    )


class TfdsSource(Sequence):
    """One split of a prepared TFDS data set, keeping only ``image`` (and ``label``)."""

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str, *, with_label: bool):
        self._source = builder.as_data_source(split=split, file_format="array_record")
        self._with_label = with_label

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._source[index]
        out = {"image": np.asarray(example["image"])}
        if self._with_label:
            out["label"] = int(example["label"])
        return out

    def __repr__(self) -> str:
        return f"TfdsSource({self._source!r})"


def _unreadable(path: str) -> str | None:
    """Why PIL cannot read the image file ``path``, or ``None`` if it can.

    Cheap checks that catch truncated and garbled files: a PNG's chunk structure and checksums
    (``verify``); a JPEG is decoded at 1/8 scale, since its ``verify`` checks nothing.
    """
    try:
        with PIL.Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            else:
                im.verify()
    except PIL.UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError) as e:  # What PIL raises for damaged files.
        return " ".join(str(e).split()) or type(e).__name__
    return None


# Folders whose files (paths, sizes, modification times) were all checked in this process: building
# the train and eval sources of one folder checks it once.
_CHECKED: set[int] = set()


def check_images(folder: str, paths: Sequence[str]) -> None:
    """Checks that PIL can read every file of ``paths`` (under ``folder``).

    Raises:
        ValueError: some cannot be read; one line naming the first few (relative to ``folder``)
            and how many there are.
    """
    stats = [os.stat(p) for p in paths]
    key = hash(tuple((p, st.st_size, st.st_mtime_ns) for p, st in zip(paths, stats, strict=True)))
    if key in _CHECKED:
        return
    with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(_unreadable, paths))
    bad = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
    if bad:
        root = os.path.expanduser(folder)
        shown = "; ".join(f"{os.path.relpath(p, root)} ({r})" for p, r in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"data.folder={folder!r}: {len(bad)} of {len(paths)} images cannot be read: "
            f"{shown}{more}. Remove or replace them."
        )
    _CHECKED.add(key)


class ImageFolderSource(Sequence):
    """The PNG/JPEG files under a directory (recursively, in sorted path order), as ``uint8`` images.

    Every file is checked when the source is built (``check_images``), and a damaged one is an
    error then, not skipped: skipping would silently change the data set, and failing at once beats
    failing some steps into training.

    Args:
        folder: the directory.
        num_channels: 1 (converted to grayscale) or 3 (converted to RGB).

    Raises:
        FileNotFoundError: the folder is missing or holds no images.
        ValueError: some images cannot be read (the message names them).
    """

    def __init__(self, folder: str, num_channels: int):
        root = pathlib.Path(os.path.expanduser(folder))
        if not root.is_dir():
            raise FileNotFoundError(f"data.folder={folder!r} is not a directory.")
        self._paths = sorted(
            str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self._paths:
            raise FileNotFoundError(
                f"data.folder={folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})."
            )
        check_images(folder, self._paths)
        self._mode = "L" if num_channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with PIL.Image.open(self._paths[index]) as im:
            image = np.asarray(im.convert(self._mode))
        return {"image": image[..., None] if image.ndim == 2 else image}

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self)} images)"


def open_source(cfg: DataConfig, split: str) -> Sequence:
    """The random-access source of one split (``"train"`` or ``"eval"``) of ``cfg.dataset``.

    Raises:
        ValueError: unknown split, or files in the image folder that cannot be read (see
            ``ImageFolderSource``).
        DatasetNotPreparedError: see ``tfds_builder``.
        FileNotFoundError: the image folder is missing or empty.
    """
    spec = cfg.spec
    if split not in spec.splits:
        raise ValueError(f"Unknown split {split!r}; allowed values: {', '.join(spec.splits)}.")
    if spec.source == "photos":
        return PatchSource(spec.splits[split])
    if spec.source == "folder":
        if not cfg.folder:
            raise ValueError(
                f"data.dataset={spec.name!r} reads images from data.folder, which is not set. "
                + (spec.manual or "Set data.folder to a directory of PNG/JPEG images.")
            )
        return ImageFolderSource(cfg.folder, cfg.num_channels)
    return TfdsSource(tfds_builder(cfg), spec.splits[split], with_label=spec.num_classes > 0)
