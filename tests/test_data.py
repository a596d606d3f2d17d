"""Data tests: the offline digits data set, the grain pipeline (order, sharding, resume), image folders,
preprocessing, and the errors for bad configs and unprepared data sets."""

import dataclasses
import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from sde_jax.data import (
    DATASETS,
    DataConfig,
    DatasetNotPreparedError,
    data_scaler,
    dataset_info,
    inverse_scaler,
    make_dataset,
    transforms,
)
from sde_jax.data import digits as digits_lib
from sde_jax.data.prepare import main as prepare_main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS data directory with digits prepared once for the whole module."""
    path = str(tmp_path_factory.mktemp("tfds"))
    dataset_info(DataConfig(data_dir=path))
    return path


@pytest.fixture(scope="module")
def sklearn_digits():
    return digits_lib.load_digits_uint8()


def _cfg(data_dir, **kw):
    return DataConfig(**{"data_dir": data_dir, "random_flip": False, "batch_size": 50, **kw})


def _take(it, n):
    return [next(it) for _ in range(n)]


def _rows(batches, key="image"):
    return np.concatenate([b[key] for b in batches])


def _levels(images):
    """uint8 levels of non-dequantized images in [0, 1]."""
    levels = np.round(images * 255.0)
    np.testing.assert_allclose(images * 255.0, levels, atol=1e-4)
    return levels.astype(np.uint8)


def _whole(cfg, split, **kw):
    """One unshuffled pass of ``split`` as a single batch."""
    return {
        k: _rows(list(make_dataset(cfg, split, shuffle=False, repeat=False, **kw)), k)
        for k in ("image", "label")
    }


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --- The digits data set -------------------------------------------------------------------------


def test_digits_prepares_offline_as_array_record(data_dir):
    info = dataset_info(_cfg(data_dir))
    assert info.num_examples == {"train": 1497, "eval": 300}
    assert info.image_shape == (8, 8, 1)
    assert info.num_classes == 10
    files = sorted(p.name for p in pathlib.Path(data_dir, "sklearn_digits").rglob("*"))
    assert "sklearn_digits-train.array_record-00000-of-00001" in files
    assert "sklearn_digits-test.array_record-00000-of-00001" in files
    assert "tensorflow" not in sys.modules


def test_digits_splits_hold_the_sklearn_images_stratified(data_dir, sklearn_digits):
    images, labels = sklearn_digits
    idx = digits_lib.split_indices(labels)
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    assert len(idx["train"]) + len(idx["test"]) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels[idx["test"]]), np.full(10, 30))
    for split, ours in (("train", "train"), ("test", "eval")):
        it = make_dataset(
            _cfg(data_dir, batch_size=1497 if ours == "train" else 300),
            ours,
            shuffle=False,
            repeat=False,
        )
        (batch,) = list(it)
        assert batch["image"].dtype == np.float32 and batch["image"].shape[1:] == (8, 8, 1)
        assert batch["label"].dtype == np.int32
        assert 0.0 <= batch["image"].min() and batch["image"].max() == 1.0
        got = sorted(
            zip(
                _levels(batch["image"]).reshape(len(batch["label"]), -1).tolist(),
                batch["label"].tolist(),
                strict=True,
            )
        )
        want = sorted(
            zip(
                images[idx[split]].reshape(len(idx[split]), -1).tolist(),
                labels[idx[split]].tolist(),
                strict=True,
            )
        )
        assert got == want


def test_digits_builder_is_imported_only_to_prepare(data_dir):
    # A fresh process reads the prepared copy through the files alone: the builder module (which
    # registers a TFDS class on import) stays unimported.
    code = (
        "import sys\n"
        "from sde_jax.data import DataConfig, make_dataset\n"
        "assert 'sde_jax.data.digits' not in sys.modules\n"
        f"it = make_dataset(DataConfig(data_dir={data_dir!r}, batch_size=8), 'train', shuffle=True, repeat=True)\n"
        "assert next(it)['image'].shape == (8, 8, 8, 1)\n"
        "assert 'sde_jax.data.digits' not in sys.modules\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- Order, shuffling, augmentation --------------------------------------------------------------


def test_shuffle_is_determined_by_the_seed(data_dir):
    cfg = _cfg(data_dir)

    def first(seed, shuffle=True):
        return _take(make_dataset(cfg, "train", shuffle=shuffle, repeat=True, seed=seed), 2)

    _assert_same_batches(first(1), first(1))
    assert not np.array_equal(first(1)[0]["label"], first(2)[0]["label"])
    _assert_same_batches(first(1, shuffle=False), first(2, shuffle=False))
    # The default seed is cfg.seed.
    _assert_same_batches(
        _take(
            make_dataset(dataclasses.replace(cfg, seed=1), "train", shuffle=True, repeat=True), 2
        ),
        first(1),
    )


def test_each_epoch_is_a_new_permutation_of_the_split(data_dir):
    cfg = _cfg(data_dir, batch_size=100)
    it = make_dataset(cfg, "eval", shuffle=True, repeat=True)
    epochs = [_rows(_take(it, 3)) for _ in range(2)]
    key = lambda x: sorted(map(bytes, _levels(x)))
    assert key(epochs[0]) == key(_whole(cfg, "eval")["image"]) == key(epochs[1])
    assert not np.array_equal(epochs[0], epochs[1])


def test_uniform_dequantization_fills_each_level_bin(data_dir):
    cfg = _cfg(data_dir, batch_size=100)
    plain = _whole(cfg, "eval")["image"]
    deq = _whole(dataclasses.replace(cfg, uniform_dequantization=True), "eval")["image"]
    assert 0.0 <= deq.min() and deq.max() < 1.0
    # The digits are 17-level data (stored as round(k * 255 / 16)): (k + u) / 17 with u in [0, 1),
    # so the level is the integer part of 17 * value.
    assert cfg.num_levels == 17
    k = _levels(plain) * 16.0 / 255.0
    np.testing.assert_allclose(k, np.round(k), atol=0.04)
    u = deq * 17.0 - np.round(k)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    # The argument overrides the config (bits/dim evaluation of a model trained without it).
    again = _whole(cfg, "eval", uniform_dequantization=True)["image"]
    np.testing.assert_array_equal(again, deq)


def test_random_flips_only_on_train(data_dir):
    for split in ("eval", "train"):
        cfg = _cfg(data_dir, batch_size=300 if split == "eval" else 1497)
        ref = _whole(cfg, split)["image"]
        got = _whole(dataclasses.replace(cfg, random_flip=True), split)["image"]
        same = np.all(got == ref, axis=(1, 2, 3))
        assert np.all(same | np.all(got == ref[:, :, ::-1], axis=(1, 2, 3)))
        flipped = np.mean(~same)
        assert (0.4 < flipped < 0.6) if split == "train" else flipped == 0.0


def test_scalers_are_inverse_and_center(data_dir):
    x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    for centered, lo in ((True, -1.0), (False, 0.0)):
        cfg = _cfg(data_dir, centered=centered)
        y = data_scaler(cfg)(x)
        assert y[0] == lo and y[-1] == 1.0
        np.testing.assert_allclose(inverse_scaler(cfg)(y), x, atol=1e-7)


# --- Resuming and sharding -----------------------------------------------------------------------


def test_resume_continues_with_the_identical_batches(data_dir):
    cfg = _cfg(data_dir, random_flip=True, uniform_dequantization=True, batch_size=64)
    it = make_dataset(cfg, "train", shuffle=True, repeat=True, seed=3)
    _take(it, 30)  # Past the first epoch (1497 / 64 = 23.4 batches).
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 5)
    fresh = make_dataset(cfg, "train", shuffle=True, repeat=True, seed=3)
    fresh.set_state(state)
    _assert_same_batches(_take(fresh, 5), expected)
    assert fresh.get_state() == it.get_state()


def test_resume_refuses_a_position_of_another_stream(data_dir):
    state = make_dataset(_cfg(data_dir), "train", shuffle=True, repeat=True).get_state()
    other = make_dataset(_cfg(data_dir, batch_size=64), "train", shuffle=True, repeat=True)
    with pytest.raises(ValueError, match="batch_size: saved 50, now 64"):
        other.set_state(state)


@pytest.mark.parametrize("count", [2, 5])
def test_process_shards_split_every_global_batch(data_dir, count):
    cfg = _cfg(data_dir, random_flip=True, uniform_dequantization=True, batch_size=60)
    whole = _take(
        make_dataset(cfg, "train", shuffle=True, repeat=True, process_index=0, process_count=1), 30
    )
    shards = [
        _take(
            make_dataset(
                cfg, "train", shuffle=True, repeat=True, process_index=p, process_count=count
            ),
            30,
        )
        for p in range(count)
    ]
    for step, batch in enumerate(whole):
        for key in ("image", "label"):
            assert all(s[step][key].shape[0] == 60 // count for s in shards)
            np.testing.assert_array_equal(
                np.concatenate([s[step][key] for s in shards]), batch[key]
            )


def test_process_shards_of_one_pass_are_disjoint_and_cover_the_split(data_dir, sklearn_digits):
    # 300 examples in global batches of 129, the last one padded: every example exactly once over
    # 3 processes.
    cfg = _cfg(data_dir, batch_size=129)
    seen = []
    for p in range(3):
        it = make_dataset(
            cfg,
            "eval",
            shuffle=True,
            repeat=False,
            drop_remainder=False,
            process_index=p,
            process_count=3,
        )
        batches = list(it)
        assert len(batches) == len(it) == 3  # ceil(300 / 129), the same on every process.
        assert all(b["image"].shape[0] == 43 and b["mask"].shape == (43,) for b in batches)
        mask = _rows(batches, "mask")
        seen += [
            bytes(x) + bytes([y])
            for x, y in zip(
                _levels(_rows(batches)[mask]), _rows(batches, "label")[mask], strict=True
            )
        ]
    images, labels = sklearn_digits
    test = digits_lib.split_indices(labels)["test"]
    assert sorted(seen) == sorted(
        bytes(x) + bytes([y]) for x, y in zip(images[test], labels[test], strict=True)
    )


def test_resume_with_another_process_count(data_dir):
    # The stream does not depend on the process count, so a position saved by one process resumes
    # on two (e.g. a job restarted on a different slice).
    cfg = _cfg(data_dir, batch_size=40)
    one = make_dataset(cfg, "train", shuffle=True, repeat=True)
    _take(one, 7)
    state = one.get_state()
    expected = next(one)
    halves = []
    for p in range(2):
        it = make_dataset(cfg, "train", shuffle=True, repeat=True, process_index=p, process_count=2)
        it.set_state(state)
        halves.append(next(it))
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), expected["image"])


def test_worker_processes_give_the_same_stream(data_dir):
    cfg = _cfg(data_dir, random_flip=True, uniform_dequantization=True, batch_size=64)
    threads = make_dataset(cfg, "train", shuffle=True, repeat=True)
    _take(threads, 3)
    state, expected = threads.get_state(), _take(threads, 3)
    # One start of the workers (seconds) checks both the stream and resuming into workers.
    it = make_dataset(dataclasses.replace(cfg, num_workers=2), "train", shuffle=True, repeat=True)
    try:
        it.set_state(state)
        _assert_same_batches(_take(it, 3), expected)
    finally:
        it.close()


def test_one_pass_drops_the_incomplete_batch_by_default(data_dir):
    it = make_dataset(_cfg(data_dir, batch_size=128), "eval", shuffle=False, repeat=False)
    batches = list(it)
    assert len(batches) == len(it) == 2 and "mask" not in batches[0]


def test_batch_size_must_divide_by_the_process_count(data_dir):
    with pytest.raises(ValueError, match=r"data.batch_size.*number of processes \(4\)"):
        make_dataset(
            _cfg(data_dir, batch_size=50),
            "train",
            shuffle=True,
            repeat=True,
            process_index=0,
            process_count=4,
        )


# --- Image folders and resizing ------------------------------------------------------------------


def _write_images(root):
    (root / "sub").mkdir(parents=True)
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :5] = 255  # A bar that the centre crop of the 40-wide image removes.
    rgb[..., 1] = 100
    PIL.Image.fromarray(rgb).save(root / "a.png")
    PIL.Image.fromarray(np.full((16, 16), 200, np.uint8)).save(root / "sub" / "b.PNG")
    PIL.Image.fromarray(np.full((50, 20, 3), 80, np.uint8)).save(
        root / "sub" / "c.jpg", quality=100
    )
    (root / "notes.txt").write_text("not an image")


def test_folder_dataset(tmp_path):
    _write_images(tmp_path / "imgs")
    cfg = DataConfig(
        dataset="folder",
        folder=str(tmp_path / "imgs"),
        image_size=16,
        num_channels=3,
        batch_size=3,
        random_flip=False,
    )
    info = dataset_info(cfg)
    assert (
        info.num_examples == {"train": 3, "eval": 3}
        and info.image_shape == (16, 16, 3)
        and info.num_classes == 0
    )
    (batch,) = list(make_dataset(cfg, "train", shuffle=False, repeat=False))
    assert set(batch) == {"image"} and batch["image"].shape == (3, 16, 16, 3)
    a, b, c = _levels(batch["image"]).astype(int)  # Sorted paths: a.png, sub/b.PNG, sub/c.jpg.
    np.testing.assert_array_equal(a[..., 0], 0)  # The bar in columns 0..4 of 40 was cropped away.
    np.testing.assert_array_equal(a[..., 1], 100)
    np.testing.assert_array_equal(b, 200)  # Grayscale converted to RGB, already 16x16.
    assert np.abs(c - 80).max() <= 2  # JPEG.
    gray = dataclasses.replace(cfg, num_channels=1)
    (batch,) = list(make_dataset(gray, "train", shuffle=False, repeat=False))
    assert batch["image"].shape == (3, 16, 16, 1)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data\.folder.*not set"):
        dataset_info(DataConfig(dataset="folder", image_size=16, num_channels=3))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        dataset_info(
            DataConfig(
                dataset="folder", folder=str(tmp_path / "missing"), image_size=16, num_channels=3
            )
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        dataset_info(
            DataConfig(
                dataset="folder", folder=str(tmp_path / "empty"), image_size=16, num_channels=3
            )
        )
    ffhq = DataConfig(dataset="ffhq", image_size=256, num_channels=3)  # Fine until it is read.
    with pytest.raises(ValueError, match=r"FFHQ is not in TFDS.*data\.folder"):
        make_dataset(ffhq, "train", shuffle=True, repeat=True)


def test_resizing_rules_follow_the_original_code():
    rng = np.random.default_rng(0)
    celeba = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    # CelebA: the centred 140x140 window starts at row (218 - 140) // 2 = 39, column 19.
    np.testing.assert_array_equal(transforms.center_crop(celeba, 140), celeba[39:179, 19:159])
    flat = np.full((218, 178, 3), 7, np.uint8)
    np.testing.assert_array_equal(transforms.resize_image(flat, 64, "celeba"), 7)
    assert transforms.resize_image(celeba, 64, "celeba").shape == (64, 64, 3)
    lsun = rng.integers(0, 256, (256, 341, 3), dtype=np.uint8)
    np.testing.assert_array_equal(transforms.resize_image(lsun, 256, "lsun"), lsun[:, 42:298])
    assert transforms.resize_image(lsun, 128, "lsun").shape == (128, 128, 3)
    assert transforms.resize_image(lsun[..., :1], 32, "crop_resize").shape == (32, 32, 1)


# --- Bad configs and unprepared data sets --------------------------------------------------------


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    cfg = DataConfig(dataset="cifar10", image_size=32, num_channels=3, data_dir=str(tmp_path))
    with pytest.raises(DatasetNotPreparedError) as e:
        make_dataset(cfg, "train", shuffle=True, repeat=True)
    msg = str(e.value)
    assert f"-m sde_jax.data prepare cifar10 --data_dir {tmp_path}" in msg
    assert "pip install 'sde_jax[prepare]'" in msg
    with pytest.raises(DatasetNotPreparedError, match="--manual_dir"):
        dataset_info(
            DataConfig(dataset="celeb_a_hq", image_size=256, num_channels=3, data_dir=str(tmp_path))
        )


def test_tfrecord_copy_says_how_to_convert_it(data_dir, tmp_path):
    # Writing TFRecords needs TensorFlow, so a copy prepared that way is simulated by relabelling.
    shutil.copytree(pathlib.Path(data_dir, "sklearn_digits"), tmp_path / "sklearn_digits")
    info = tmp_path / "sklearn_digits" / "1.0.0" / "dataset_info.json"
    info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
    with pytest.raises(DatasetNotPreparedError) as e:
        dataset_info(_cfg(str(tmp_path)))
    assert "stored in" in str(e.value) and "as tfrecord" in str(e.value)
    assert (
        f"tfds convert_format --dataset_version_dir={info.parent} --out_file_format=array_record"
        in str(e.value)
    )


def test_prepare_command_line(tmp_path, capsys):
    assert prepare_main(["prepare", "digits", "--data_dir", str(tmp_path)]) == 0
    assert (tmp_path / "sklearn_digits" / "1.0.0" / "dataset_info.json").exists()
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is None:
        assert prepare_main(["prepare", "cifar10", "--data_dir", str(tmp_path)]) == 1
        assert "needs TensorFlow" in capsys.readouterr().err


def test_config_errors_name_the_field():
    with pytest.raises(
        ValueError, match=r"data.dataset='imagenet'; allowed values: .*cifar10.*digits"
    ):
        DataConfig(dataset="imagenet")
    with pytest.raises(ValueError, match=r"data.image_size=64 does not match data set 'cifar10'"):
        DataConfig(dataset="cifar10", image_size=64, num_channels=3)
    with pytest.raises(ValueError, match=r"data.num_channels=3 does not match data set 'digits'"):
        DataConfig(num_channels=3)
    with pytest.raises(ValueError, match=r"data.image_size=256 is larger"):
        DataConfig(dataset="celeb_a", image_size=256, num_channels=3)
    with pytest.raises(ValueError, match=r"data.batch_size must be int"):
        DataConfig(batch_size=12.0)
    with pytest.raises(ValueError, match=r"data.centered must be bool"):
        DataConfig(centered=1)
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        make_dataset(DataConfig(), "test", shuffle=False, repeat=False)


def test_from_config_takes_an_ml_collections_section():
    import ml_collections

    section = ml_collections.ConfigDict(
        {"dataset": "cifar10", "image_size": 32, "num_channels": 3, "centered": True}
    )
    cfg = DataConfig.from_config(section, batch_size=256)
    assert cfg == DataConfig(
        dataset="cifar10", image_size=32, num_channels=3, centered=True, batch_size=256
    )
    with pytest.raises(ValueError, match=r"Unknown field\(s\) in the data config: data.categroy"):
        DataConfig.from_config({**section.to_dict(), "categroy": "bedroom"})
    for name, spec in DATASETS.items():  # Every catalogued data set has a valid config.
        size = spec.fixed_size or min(spec.max_size or 64, 64)
        DataConfig(dataset=name, image_size=size, num_channels=spec.channels[-1], folder="x")


def test_photo_patches_are_offline_colour_data_with_disjoint_splits(tmp_path):
    from sde_jax.data import dataset_info, photos

    cfg = DataConfig(
        dataset="photo_patches", image_size=16, num_channels=3, batch_size=50,
        data_dir=str(tmp_path),
    )  # fmt: skip
    info = dataset_info(cfg)
    assert info.num_examples == {"train": 1550, "eval": 350} and cfg.num_levels == 256
    batch = next(iter(make_dataset(cfg, "eval", shuffle=False, repeat=False)))
    assert batch["image"].shape == (50, 16, 16, 3)
    np.testing.assert_array_equal(_levels(batch["image"]), photos.patches("test")[:50])
    # Colour, not gray: the channels differ.
    assert np.mean(np.abs(np.diff(photos.patches("train").astype(float), axis=-1))) > 5
    # No patch of one split appears in the other, and nothing was written.
    train = {p.tobytes() for p in photos.patches("train")}
    assert not train & {p.tobytes() for p in photos.patches("test")}
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="needs no preparing"):
        from sde_jax.data.prepare import prepare

        prepare("photo_patches", str(tmp_path))
