"""Data faults: a digits prepare killed part-way, and damaged files in an image folder."""

import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
from tensorflow_datasets.core import file_adapters

from sde_jax.data import DataConfig, dataset_info, make_dataset
from sde_jax.data import sources as sources_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Prepares digits into argv[1] in a process that SIGKILLs itself at the point named by argv[2]: no
# exception handler or `finally` runs, as when the machine or the OOM killer stops a process.
_KILLED_PREPARE = textwrap.dedent(
    """
    import os, signal, sys
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters
    from sde_jax.data import DataConfig, dataset_info

    def kill_after(owner, name):
        original = getattr(owner, name)
        def wrapped(*args, **kwargs):
            original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(owner, name, wrapped)

    if sys.argv[2] == "first_file":
        adapter = file_adapters.ArrayRecordFileAdapter
        kill_after(adapter, "write_examples")
    else:  # The metadata is written last, just before TFDS renames its folder.
        kill_after(tfds.core.DatasetInfo, "write_to_directory")
    dataset_info(DataConfig(data_dir=sys.argv[1]))
    """
)


def _splits(data_dir):
    """Both splits of the digits in ``data_dir``, unshuffled: ``{split: (images, labels)}``."""
    cfg = DataConfig(data_dir=str(data_dir), random_flip=False)
    out = {}
    for split, n in dataset_info(cfg).num_examples.items():
        (batch,) = make_dataset(cfg, split, shuffle=False, repeat=False, batch_size=n)
        out[split] = (batch["image"], batch["label"])
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The digits of an uninterrupted prepare."""
    return _splits(tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("when", ["first_file", "metadata"])
def test_a_killed_digits_prepare_leaves_nothing_prepared_and_is_redone(tmp_path, reference, when):
    data_dir = tmp_path / "tfds"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_PREPARE, str(data_dir), when],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (data_dir / "sklearn_digits" / "1.0.0").exists()
    assert not sources_lib._is_prepared("sklearn_digits", str(data_dir))

    got = _splits(data_dir)  # Prepares again.
    for split, (images, labels) in reference.items():
        np.testing.assert_array_equal(got[split][0], images)
        np.testing.assert_array_equal(got[split][1], labels)
    # Nothing of the killed prepare is left; only the lock file stays next to the data set.
    assert sorted(p.name for p in (data_dir / "sklearn_digits").iterdir()) == ["1.0.0"]
    assert sorted(p.name for p in data_dir.iterdir()) == [".sklearn_digits.lock", "sklearn_digits"]


def test_a_failed_digits_prepare_raises_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    adapter = file_adapters.ArrayRecordFileAdapter
    original = adapter.write_examples
    written = []

    def write_examples(path, iterator):
        if written:
            raise OSError("disk full")  # After the first file, as a full disk would.
        written.append(path)
        return original(path, iterator)

    monkeypatch.setattr(adapter, "write_examples", write_examples)
    with pytest.raises(OSError, match="disk full"):
        dataset_info(DataConfig(data_dir=str(tmp_path)))
    assert len(written) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sklearn_digits.lock"]
    monkeypatch.undo()
    assert dataset_info(DataConfig(data_dir=str(tmp_path))).num_examples["eval"] == 300


def _folder(root, n=6):
    """``n`` small valid PNGs ``img{i}.png`` under ``root``; returns ``root``."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        PIL.Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(root / f"img{i}.png")
    return root


def _folder_cfg(root):
    return DataConfig(
        dataset="folder", folder=str(root), image_size=8, num_channels=3, batch_size=2
    )


def test_a_damaged_image_in_a_folder_fails_when_the_data_set_is_built(tmp_path):
    root = _folder(tmp_path / "imgs")
    png = (root / "img3.png").read_bytes()
    (root / "img3.png").write_bytes(png[: len(png) // 2])  # Truncated.
    (root / "sub").mkdir()
    (root / "sub" / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError) as info:
        make_dataset(_folder_cfg(root), "train", shuffle=True, repeat=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"data.folder={str(root)!r}: 2 of 7 images cannot be read" in msg
    assert "img3.png (" in msg and f"sub{'/'}junk.jpg (not an image PIL can read)" in msg
    assert "img0.png" not in msg


def test_a_truncated_jpeg_is_found_too_and_many_are_counted(tmp_path):
    root = _folder(tmp_path / "imgs", n=2)
    rng = np.random.default_rng(1)
    for i in range(5):
        path = root / f"photo{i}.jpg"
        PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:-200])  # PIL's JPEG `verify` would pass it.
    with pytest.raises(
        ValueError, match=r"5 of 7 images .*photo0\.jpg.*photo2\.jpg \(.*\); and 2 more\. Remove"
    ):
        dataset_info(_folder_cfg(root))


def test_a_sound_folder_is_checked_once(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    cfg = _folder_cfg(root)
    calls = []
    check = sources_lib._unreadable
    monkeypatch.setattr(sources_lib, "_unreadable", lambda p: calls.append(p) or check(p))
    assert dataset_info(cfg).num_examples == {"train": 6, "eval": 6}
    make_dataset(cfg, "train", shuffle=True, repeat=True)
    make_dataset(cfg, "eval", shuffle=False, repeat=False)
    assert len(calls) == 6
    # A file changed afterwards is checked again.
    (root / "img5.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"img5\.png"):
        make_dataset(cfg, "train", shuffle=True, repeat=True)
