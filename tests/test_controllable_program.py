"""The controllable-generation program: inputs, masks, errors, and (slow) the tasks end to end."""

import dataclasses
import importlib
import json
import pathlib
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from sde_jax.controllable import decoupling_matrix
from sde_jax.models.ncsnpp import embed_class_labels
from sde_jax.programs.conditional_sample import load_images, load_mask, named_mask, run_task
from sde_jax.programs.experiment import Experiment

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _exp(name="tiny", **overrides):
    config = importlib.import_module(f"configs.{name}").get_config()
    for path, value in overrides.items():
        section, field = path.split(".")
        config[section][field] = value
    return Experiment.from_config(config)


def _png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return str(path)


def test_named_masks():
    m = named_mask("lower_half", 8, 8)
    assert m.shape == (8, 8, 1) and m[:4].all() and not m[4:].any()
    c = named_mask("center", 8, 8)
    assert c.sum() == 64 - 16 and not c[2:6, 2:6].any()


def test_mask_files(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:, :3] = 255
    loaded = load_mask(_png(tmp_path / "m.png", m), (8, 8, 1))
    np.testing.assert_array_equal(loaded[..., 0], m == 255)
    np.save(tmp_path / "m.npy", (m == 255).astype(np.int64))
    np.testing.assert_array_equal(load_mask(str(tmp_path / "m.npy"), (8, 8, 1)), loaded)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: _png(p / "m.png", np.full((6, 8), 255)), r"must be an image of shape \(8, 8\)"),
        (lambda p: _png(p / "m.png", np.full((8, 8), 128)), r"must be binary"),
        (lambda p: "diagonal", r"config.sampling.mask must be one of \['lower_half'"),
    ],
)
def test_bad_masks(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        load_mask(make(tmp_path), (8, 8, 1))


def test_input_sources(tmp_path):
    exp = _exp()
    images = load_images(exp, "eval", 5)
    assert images.shape == (5, 8, 8, 1) and 0 <= images.min() and images.max() <= 1
    np.savez(tmp_path / "x.npz", images=np.round(images * 255).astype(np.uint8))
    np.testing.assert_allclose(load_images(exp, str(tmp_path / "x.npz"), 3), images[:3], atol=1e-6)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        _png(folder / f"{i}.png", np.round(images[i, ..., 0] * 255))
    np.testing.assert_allclose(load_images(exp, str(folder), 10), images[:2], atol=1e-6)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"sampling.task": "colorize", "sampling.input": "eval"}, r"colorize.*needs color data"),
        ({"sampling.task": "inpaint", "sampling.input": ""}, r"config.sampling.input is required"),
        ({"sampling.task": "inpaint", "sampling.input": "nope.png"}, r"no such file"),
        ({"sampling.task": "class_conditional"}, r"needs a class-conditional model"),
    ],
)
def test_task_errors_before_any_work(tmp_path, overrides, match):
    exp = _exp(**overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run_task(exp, str(tmp_path))


def test_input_of_the_wrong_size(tmp_path):
    exp = _exp(
        **{"sampling.task": "inpaint", "sampling.input": _png(tmp_path / "a.png", np.zeros((9, 9)))}
    )
    with pytest.raises(
        ValueError, match=r"images have shape \(9, 9, 1\); this model needs \(8, 8, 1\)"
    ):
        run_task(exp, str(tmp_path))


def test_class_label_out_of_range(tmp_path):
    exp = _exp("digits_cfg", **{"sampling.task": "class_conditional", "sampling.class_label": 10})
    with pytest.raises(ValueError, match=r"class_label must lie in \[0, 10\)"):
        run_task(exp, str(tmp_path))


def test_label_dropout_needs_a_class_conditional_model():
    with pytest.raises(ValueError, match=r"label_dropout > 0.*num_classes"):
        _exp(**{"training.label_dropout": 0.1})
    with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\)"):
        _exp("digits_cfg", **{"training.label_dropout": 1.0})
    with pytest.raises(ValueError, match=r"sampling.task must be one of"):
        _exp(**{"sampling.task": "superres"})


class _LabelledNet(nn.Module):
    """A minimal network with the score networks' call signature and a "no label" token."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, labels, class_labels=None, train=False):
        emb = embed_class_labels(None, class_labels, self.num_classes, x[0].size, x.shape[0])
        return nn.Dense(x[0].size)(x.reshape(x.shape[0], -1) + emb).reshape(x.shape)


def test_label_dropout_one_trains_the_unconditional_score():
    """With every label dropped the class-conditional loss is the null-token loss; with none
    dropped it is not."""
    from sde_jax.training import make_loss

    config = importlib.import_module("configs.tiny").get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.999999
    exp = Experiment.from_config(config)
    model, sde = _LabelledNet(), exp.sde.build()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    params = model.init(jax.random.key(1), x, jax.numpy.zeros(4))["params"]
    labels = jax.numpy.arange(4)
    key = jax.random.key(2)

    def loss(training, **kwargs):
        return make_loss(sde, model, **training.loss_options(), **kwargs)

    dropout = dict(num_classes=10, label_dropout=exp.training.label_dropout)
    cond = loss(exp.training, **dropout)(params, key, (x, labels))
    null = loss(exp.training)(params, jax.random.split(key)[1], x)
    np.testing.assert_allclose(cond, null, rtol=1e-6)
    exp0 = dataclasses_replace(exp, 0.0)
    kept = loss(exp0.training, num_classes=10, label_dropout=exp0.training.label_dropout)(
        params, key, (x, labels)
    )
    assert not np.allclose(kept, null)


def dataclasses_replace(exp, dropout):
    return dataclasses.replace(
        exp, training=dataclasses.replace(exp.training, label_dropout=dropout)
    )


@pytest.mark.slow
def test_tasks_end_to_end(tmp_path):
    """Train a tiny class-conditional model and a tiny classifier, then inpaint, sample a class with
    classifier-free guidance and with classifier guidance."""
    from sde_jax.programs.classifier import run_train_classifier_mode as train_classifier
    from sde_jax.programs.train import run_train_mode as train

    config = importlib.import_module("configs.tiny").get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.2
    exp = Experiment.from_config(config)
    workdir = str(tmp_path / "cfg")
    train(exp, workdir)

    # 6 rows in rounds of 4: the second round is padded.
    inpaint = dataclasses_sampling(
        exp, task="inpaint", input="eval", num_samples=3, num_completions=2, batch_size=4
    )
    out = run_task(inpaint, workdir)
    with np.load(f"{out}/samples.npz") as f:
        images, inputs = f["images"], f["inputs"]
    assert images.shape == (6, 8, 8, 1)
    # The observed (upper) half of every completion is its input's.
    np.testing.assert_array_equal(images[:, :4], np.repeat(inputs, 2, axis=0)[:, :4])

    cc = dataclasses_sampling(exp, task="class_conditional", class_label=7, guidance_scale=2.0)
    out = run_task(cc, workdir)
    with np.load(f"{out}/samples.npz") as f:
        assert f["images"].shape == (8, 8, 8, 1) and (f["labels"] == 7).all()

    clf = importlib.import_module("configs.digits_classifier").get_config()
    tiny = importlib.import_module("configs.tiny").get_config()
    for field in ("sde", "model", "training", "optim", "sampling", "eval"):
        clf[field] = tiny[field]
    clf.classifier.n_iters = 4
    clf.classifier.log_freq = 2
    clf.classifier.snapshot_freq = 2
    clf.classifier.eval_batches = 1
    results = train_classifier(clf, str(tmp_path / "clf"))
    assert set(results) >= {"accuracy_t0.01"}
    uncond = Experiment.from_config(importlib.import_module("configs.tiny").get_config())
    train(uncond, str(tmp_path / "uncond"))
    guided = dataclasses_sampling(
        uncond, task="class_conditional", class_label=3, classifier_workdir=str(tmp_path / "clf")
    )
    out = run_task(guided, str(tmp_path / "uncond"))
    with np.load(f"{out}/samples.npz") as f:
        assert f["images"].shape == (8, 8, 8, 1)


def dataclasses_sampling(exp, **fields):
    return dataclasses.replace(exp, sampling=dataclasses.replace(exp.sampling, **fields))


@pytest.mark.slow
def test_colorize_end_to_end(tmp_path):
    """A tiny RGB model on a folder of images: the colorize task's inputs, outputs and grid."""
    from sde_jax.programs.train import run_train_mode as train

    folder = tmp_path / "rgb"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        _png(folder / f"{i:02d}.png", rng.integers(0, 256, (8, 8, 3)))
    config = importlib.import_module("configs.tiny").get_config()
    config.data.dataset = "folder"
    config.data.folder = str(folder)
    config.data.num_channels = 3
    config.eval.batch_size = 8
    exp = Experiment.from_config(config)
    workdir = str(tmp_path / "run")
    train(exp, workdir)
    colorize = dataclasses_sampling(
        exp, task="colorize", input=str(folder), num_samples=3, num_completions=2
    )
    out = run_task(colorize, workdir)
    with np.load(f"{out}/samples.npz") as f:
        images, inputs = f["images"].astype(float), f["inputs"].astype(float)
    assert images.shape == (6, 8, 8, 3)
    # The inputs are recorded as read; the output's gray level is only checkable before clipping
    # to [0, 1], which an 8-step model's samples hit everywhere (the library test checks it).
    files = sorted(folder.glob("*.png"))[:3]
    np.testing.assert_array_equal(inputs, np.stack([np.asarray(Image.open(f)) for f in files]))
    grid = np.asarray(Image.open(f"{out}/grid.png"))
    assert grid.shape == (4 * (32 + 2) + 2, 3 * (32 + 2) + 2, 3)  # 4 rows of 3, enlarged 4x.
    # The colour error, against the stored (rounded) samples, input by input with its 2
    # completions: within the rounding's 1/510.
    with open(f"{out}/colour_error.json") as f:
        error = json.load(f)
    basis = decoupling_matrix(3)[:, 1:]
    chroma = lambda x: (x / 255.0) @ basis
    direct = np.sqrt(
        np.mean(
            (chroma(images.reshape(3, 2, 8, 8, 3).transpose(1, 0, 2, 3, 4)) - chroma(inputs)) ** 2
        )
    )
    assert abs(error["completions"] - direct) < 1 / 510
    assert error["num_inputs"] == 3 and error["num_completions"] == 2


def test_colour_error_of_known_completions():
    from sde_jax.data import photos
    from sde_jax.programs.colour_error import chroma_error

    exp = Experiment.from_config(importlib.import_module("configs.photo_patches").get_config())
    truth = photos.patches("test")[:5].astype(np.float64) / 255.0
    basis = decoupling_matrix(3).astype(np.float64)
    exact = chroma_error(exp, truth, np.stack([truth, truth]))
    assert exact["completions"] == exact["average_completion"] == 0.0
    # The baseline: the training patches' mean chroma, directly.
    train_chroma = (photos.patches("train") / 255.0) @ basis[:, 1:]
    mean = train_chroma.reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(exact["train_mean_chroma"], mean, rtol=1e-6)  # float32 data.
    want = np.sqrt(np.mean((truth @ basis[:, 1:] - mean) ** 2))
    np.testing.assert_allclose(exact["mean_chroma_baseline"], want, rtol=1e-6)
    # Completions off by +d and -d along one colour direction: each has error d / sqrt(2) (one of
    # two chroma coordinates), their average none.
    d = 0.1
    shift = d * basis[:, 1]
    off = chroma_error(exp, truth, np.stack([truth + shift, truth - shift]))
    np.testing.assert_allclose(off["completions"], d / np.sqrt(2), rtol=1e-6)  # float32 basis.
    np.testing.assert_allclose(off["average_completion"], 0.0, atol=1e-12)


def test_rows_run_in_rounds_with_one_key_per_round():
    from sde_jax.programs.conditional_sample import _in_rounds

    def fn(params, key, rows):
        noise = jax.random.uniform(key, (rows.shape[0],))
        return rows * params + noise[:, None], 7

    rows = np.arange(10, dtype=np.float32)[:, None].repeat(2, axis=1)
    key = jax.random.key(0)
    out, nfe = _in_rounds(fn, 2.0, key, rows, batch_size=4)
    assert out.shape == (10, 2) and nfe == 7
    for r in range(3):  # Rounds of 4, 4 and 2 (padded to 4) rows, each with its own key.
        noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, r), (4,)))
        expect = 2.0 * rows[4 * r : 4 * r + 4] + noise[: len(rows[4 * r : 4 * r + 4]), None]
        np.testing.assert_allclose(out[4 * r : 4 * r + 4], expect, rtol=1e-6)
    # Fewer rows than a round: one round of just those rows.
    out, _ = _in_rounds(fn, 1.0, key, rows[:3], batch_size=64)
    noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, 0), (3,)))
    np.testing.assert_allclose(out, rows[:3] + noise[:, None], rtol=1e-6)


def test_classifier_log_probs_are_normalized_and_noise_dependent():
    from sde_jax.models.classifier import NoiseConditionalWRN, make_classifier_log_prob
    from sde_jax.sde import VESDE

    sde = VESDE()
    model = NoiseConditionalWRN(
        3, width=4, widen_factor=1, blocks_per_stage=1, num_stages=1, embedding_size=8
    )
    x = jax.random.normal(jax.random.key(0), (4, 4, 4, 1))
    params = model.init(jax.random.key(1), x, jax.numpy.ones(4))["params"]
    log_prob = make_classifier_log_prob(sde, model)
    t = jax.numpy.array([0.01, 0.3, 0.6, 0.9])
    per_class = np.stack(
        [log_prob(params, x, t, jax.numpy.full((4,), c)) for c in range(3)], axis=-1
    )
    np.testing.assert_allclose(jax.nn.logsumexp(per_class, axis=-1), 0.0, atol=1e-5)
    other = log_prob(params, x, jax.numpy.full((4,), 0.5), jax.numpy.zeros(4, int))
    assert not np.allclose(other, per_class[:, 0])


def test_load_classifier_errors(tmp_path):
    import json

    from sde_jax.programs.classifier import load_classifier

    exp = _exp()
    with pytest.raises(FileNotFoundError, match=r"holds no classifier.*--mode=train_classifier"):
        load_classifier(str(tmp_path), exp)
    record = {"sde": {"name": "vesde"}, "image_shape": [8, 8, 1], "num_classes": 10}
    (tmp_path / "classifier.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"was trained for SDE"):
        load_classifier(str(tmp_path), exp)


def test_train_classifier_needs_its_section():
    from sde_jax.programs.classifier import split_config

    with pytest.raises(ValueError, match=r"needs a config with a `classifier` section"):
        split_config(importlib.import_module("configs.tiny").get_config())
    config = importlib.import_module("configs.digits_classifier").get_config()
    config.classifier.lr = -1.0
    with pytest.raises(ValueError, match=r"config.classifier.lr must be > 0"):
        split_config(config)
