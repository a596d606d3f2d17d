"""Preparing a named data set as array_record files, once, so that training can read it without TF.

Command line::

    python -m sde_jax.data prepare cifar10 --data_dir ~/tensorflow_datasets
    python -m sde_jax.data prepare celeb_a_hq --data_dir DIR --manual_dir DIR_WITH_data256x256.tar

``digits`` needs nothing else (it is also prepared on first use). The image data sets of the paper
are built by their TFDS builders, which encode and decode images with TensorFlow: install the
``prepare`` extra first (``prepare-lsun`` for LSUN). The equivalent TFDS command is ``tfds build NAME
--data_dir DIR --file_format=array_record``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import tensorflow_datasets as tfds

from sde_jax.data.catalog import DATASETS, get_spec


def prepare(name: str, data_dir: str, *, manual_dir: str | None = None) -> str:
    """Downloads (if needed) and writes data set ``name`` into ``data_dir`` as array_record.

    Args:
        name: a name from ``DATASETS`` that is read from TFDS.
        data_dir: the TFDS data directory.
        manual_dir: where manually downloaded files are (CelebA-HQ needs them; TFDS also takes any
            download from there when a file of the expected name is present).

    Returns:
        The directory the data set was written to.

    Raises:
        ValueError: an unknown name, or a data set that is read from a folder.
        ImportError: TensorFlow is needed and not installed.
    """
    spec = get_spec(name)
    if spec.source == "photos":
        raise ValueError(f"Data set {name!r} needs no preparing: it is cut in memory when read.")
    if spec.source == "folder":
        raise ValueError(
            f"Data set {name!r} is not prepared: {spec.manual or 'it is read from data.folder.'}"
        )
    if spec.auto_prepare:
        from sde_jax.data import digits

        digits.prepare(data_dir)
        return str(tfds.builder(spec.tfds_name, data_dir=data_dir).data_dir)
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            f"Preparing {name!r} needs TensorFlow (its TFDS builder encodes images with it), once: "
            "pip install 'sde_jax[prepare]'"
            + (" (or 'sde_jax[prepare-lsun]')" if name.startswith("lsun") else "")
            + "."
        )
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=config)
    return str(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sde_jax.data", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare a data set as array_record files")
    p.add_argument("name", choices=sorted(n for n, s in DATASETS.items() if s.tfds_name))
    p.add_argument("--data_dir", required=True, help="the TFDS data directory (data.data_dir)")
    p.add_argument(
        "--manual_dir",
        default=None,
        help="manually downloaded files (CelebA-HQ; CelebA when Google Drive refuses)",
    )
    args = parser.parse_args(argv)
    try:
        path = prepare(args.name, args.data_dir, manual_dir=args.manual_dir)
    except (ImportError, ValueError) as e:
        # Missing TensorFlow is a setup step to tell the user, not a crash to trace.
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Prepared {args.name!r} in {path}")
    return 0
