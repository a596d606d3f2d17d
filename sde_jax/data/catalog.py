"""The data sets the program knows by name: where their images come from and what shape they have.

A data set is a TFDS data set read from array_record files (``tfds_name``), a folder of the user's
own images (``source="folder"``; the folder is ``DataConfig.folder``), or images cut in memory from
files that ship with a package (``source="photos"``: :mod:`sde_jax.data.photos`). The program
reads two splits, ``"train"`` and ``"eval"``, mapped onto the data set's own split names as in the
original code (CelebA and LSUN evaluate on their validation split; CelebA-HQ, FFHQ and image folders
have one split, used for both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one named data set is read and resized.

    Attributes:
        name: the value of ``data.dataset`` that selects it.
        tfds_name: the TFDS name (with its config, e.g. ``"lsun/bedroom"``), or ``None``.
        source: where the images come from: ``"tfds"``, ``"folder"`` or ``"photos"``.
        splits: our split name (``"train"``/``"eval"``) -> the TFDS split name.
        channels: the allowed values of ``data.num_channels``.
        fixed_size: the only allowed ``data.image_size`` (the stored images are not resized), or
            ``None`` when the images are resized to ``data.image_size``.
        max_size: the largest allowed ``data.image_size`` when resizing (``None``: no limit).
        resize: how a stored image becomes ``image_size`` square: ``"none"``, ``"celeba"`` (centre
            crop 140, then shrink), ``"lsun"`` (the original code's LSUN rule) or ``"crop_resize"``
            (centre square crop, then resize).
        num_classes: the number of class labels, 0 when the examples have none.
        levels: how many grey levels each channel of the stored data takes (256 for 8-bit images;
            the digits have 17, stored as ``round(k * 255 / 16)``). Uniform dequantization and
            bits/dim treat the data as ``levels``-level data (``sde_jax.data.transforms``).
        auto_prepare: whether the data set is prepared on first use (no download, no TensorFlow).
        manual: extra instructions for data sets that TFDS cannot download by itself.
    """

    name: str
    tfds_name: str | None
    splits: Mapping[str, str]
    source: str = "tfds"
    channels: tuple[int, ...] = (3,)
    fixed_size: int | None = None
    max_size: int | None = None
    resize: str = "none"
    num_classes: int = 0
    levels: int = 256
    auto_prepare: bool = False
    manual: str = ""


_LSUN_HELP = (
    "LSUN needs tensorflow-io to read its LMDB archives: pip install 'sde_jax[prepare-lsun]'. TFDS "
    "downloads the LMDB zip files from http://dl.yf.io/lsun (bedroom: about 43 GB)."
)
_SINGLE_SPLIT = {"train": "train", "eval": "train"}
_FOLDER_HELP = (
    "set data.folder to a directory of PNG/JPEG images (searched recursively; each image is centre-"
    "cropped to a square and resized to data.image_size)"
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "digits",
            "sklearn_digits",
            {"train": "train", "eval": "test"},
            channels=(1,),
            fixed_size=8,
            num_classes=10,
            levels=17,
            auto_prepare=True,
        ),
        DatasetSpec(
            "cifar10", "cifar10", {"train": "train", "eval": "test"}, fixed_size=32, num_classes=10
        ),
        DatasetSpec(
            "celeb_a",
            "celeb_a",
            {"train": "train", "eval": "validation"},
            max_size=140,
            resize="celeba",
            manual=(
                "TFDS downloads CelebA from Google Drive, which often refuses with a quota error; "
                "then download img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt, "
                "list_landmarks_align_celeba.txt and identity_CelebA.txt by hand (see "
                "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) into one directory and add "
                "--manual_dir DIR to the command."
            ),
        ),
        DatasetSpec(
            "lsun/bedroom",
            "lsun/bedroom",
            {"train": "train", "eval": "validation"},
            max_size=256,
            resize="lsun",
            manual=_LSUN_HELP,
        ),
        DatasetSpec(
            "lsun/church_outdoor",
            "lsun/church_outdoor",
            {"train": "train", "eval": "validation"},
            max_size=256,
            resize="lsun",
            manual=_LSUN_HELP,
        ),
        DatasetSpec(
            "celeb_a_hq",
            "celeb_a_hq/256",
            _SINGLE_SPLIT,
            max_size=256,
            resize="crop_resize",
            manual=(
                "CelebA-HQ cannot be downloaded by TFDS: build data256x256.tar as described in "
                "https://github.com/tkarras/progressive_growing_of_gans#preparing-datasets-for-training "
                "and pass its directory as --manual_dir."
            ),
        ),
        DatasetSpec(
            "photo_patches",
            None,
            {"train": "train", "eval": "test"},
            source="photos",
            fixed_size=16,
        ),
        DatasetSpec(
            "ffhq",
            None,
            _SINGLE_SPLIT,
            source="folder",
            resize="crop_resize",
            manual=(
                "FFHQ is not in TFDS: download the images from https://github.com/NVlabs/ffhq-dataset "
                "(e.g. the 1024x1024 `images1024x1024` folder) and " + _FOLDER_HELP + "."
            ),
        ),
        DatasetSpec(
            "folder", None, _SINGLE_SPLIT, source="folder", channels=(1, 3), resize="crop_resize"
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """Returns the spec of the data set named ``name`` (the value of ``data.dataset``).

    Raises:
        ValueError: the name is not one of ``DATASETS``.
    """
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data set data.dataset={name!r}; allowed values: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[name]
