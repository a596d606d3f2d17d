r"""``--mode=sample`` for controllable generation: ``config.sampling.task`` in ``inpaint``,
``colorize``, ``class_conditional`` (``unconditional`` is :mod:`sde_jax.programs.sample`).

Inputs (``config.sampling``):

- ``input``: the user's images: a PNG file, a folder of PNG files (sorted by name), an ``.npz``
  with ``images`` ``[N, H, W, C]`` (uint8, or floats in [0, 1]), or ``train``/``eval`` for that split
  of the configured data set. The first ``num_samples`` images are used.
- ``mask`` (inpainting): ``lower_half``, ``upper_half``, ``left_half``, ``right_half``, ``center``
  (the named region is generated), or a PNG/``.npy`` file of the image's height and width (and
  optionally its channels) with 1/255 = observed and 0 = generate.
- ``num_completions`` completions per input; ``final_corrector_steps`` (see
  :func:`sde_jax.controllable.pc_masked_sample`).
- ``class_label`` (-1: every class in turn, one grid column per class), ``guidance_scale``
  (class-conditional): a class-conditional model
  (``model.num_classes``) is sampled with classifier-free guidance of weight ``guidance_scale``;
  an unconditional one with the noise-conditional classifier trained in ``classifier_workdir``
  (``--mode=train_classifier``) at scale ``guidance_scale``.

Outputs go to ``<workdir>/samples/step_<step>/<task>/``: ``grid.png`` (inpainting and
colorization: a row of inputs, a row of masked or gray inputs, then one row per completion) and
``samples.npz`` (uint8 ``images``, ``inputs`` and ``mask`` or ``labels``, and the ``nfe``).
Colorizing colour inputs (whose true colours are known) also writes ``colour_error.json``
(:mod:`sde_jax.programs.colour_error`).

The rows to sample (every completion of every input, or every requested label) run in rounds of at
most ``config.sampling.batch_size``, each round one compiled program whose batch axis is split over
every device; round ``r`` uses the key ``fold_in(key, r)``.
"""

from __future__ import annotations

import functools
import glob
import os

import jax
import numpy as np
from PIL import Image

from sde_jax import controllable
from sde_jax.data import data_scaler, make_dataset
from sde_jax.models import make_score_fn
from sde_jax.programs.checkpoint import restore_ema
from sde_jax.programs.classifier import load_classifier
from sde_jax.programs.colour_error import chroma_error
from sde_jax.programs.experiment import Experiment
from sde_jax.programs.images import save_grid, to_uint8_rounded
from sde_jax.programs.sampler import (
    check_output_dir,
    output_settings,
    sample_round,
    to_images,
    write_settings,
)
from sde_jax.programs.workdir import write_json
from sde_jax.sharding import (
    batch_sharded,
    check_batch_size,
    global_rows,
    make_mesh,
    replicated,
)

MASKS = ("lower_half", "upper_half", "left_half", "right_half", "center")
SPLITS = ("train", "eval")


def named_mask(name: str, height: int, width: int) -> np.ndarray:
    """``[H, W, 1]`` binary mask, 1 = observed, with the named region 0 (to generate)."""
    mask = np.ones((height, width, 1), np.float32)
    if name == "lower_half":
        mask[height // 2 :] = 0
    elif name == "upper_half":
        mask[: height // 2] = 0
    elif name == "left_half":
        mask[:, : width // 2] = 0
    elif name == "right_half":
        mask[:, width // 2 :] = 0
    elif name == "center":
        mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = 0
    else:
        raise ValueError(
            f"config.sampling.mask must be one of {list(MASKS)} or a .png/.npy file; got {name!r}"
        )
    return mask


def _read_png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("L", "RGB", "RGBA", "P", "LA", "I;16"):
            raise ValueError(f"{path!r}: unsupported PNG mode {im.mode!r}")
        im = im.convert("L" if im.mode in ("L", "LA", "I;16") else "RGB")
        array = np.asarray(im)
    return array[..., None] if array.ndim == 2 else array


def load_mask(spec: str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The inpainting mask ``[H, W, 1]`` or ``[H, W, C]`` (1 = observed) named or read by ``spec``."""
    h, w, c = image_shape
    if not spec.endswith((".png", ".npy")):
        return named_mask(spec, h, w)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"config.sampling.mask: no such file {spec!r}")
    m = _read_png(spec) if spec.endswith(".png") else np.load(spec)
    if m.ndim == 2:
        m = m[..., None]
    if m.ndim != 3 or m.shape[:2] != (h, w) or m.shape[2] not in (1, c):
        raise ValueError(
            f"config.sampling.mask {spec!r} must be an image of shape ({h}, {w}), ({h}, {w}, 1) "
            f"or ({h}, {w}, {c}) for this model; got {m.shape}"
        )
    top = 255 if spec.endswith(".png") else 1
    values = np.unique(m)
    if not np.all(np.isin(values, (0, top))):
        raise ValueError(
            f"config.sampling.mask {spec!r} must be binary ({top} = observed, 0 = generate); "
            f"found values {values[:8].tolist()}"
        )
    return (m == top).astype(np.float32)


def load_images(exp: Experiment, spec: str, max_images: int) -> np.ndarray:
    """Up to ``max_images`` images in [0, 1], ``[N, H, W, C_in]``, from ``spec`` (see the module
    docstring). ``C_in`` is the file's channel count (checked against the model by the caller)."""
    if not spec:
        raise ValueError(
            f"config.sampling.input is required for task {exp.sampling.task!r}: a PNG file or "
            f"folder, an .npz with `images`, or a data-set split {list(SPLITS)}"
        )
    if spec in SPLITS:
        it = make_dataset(
            exp.data, spec, shuffle=False, repeat=False, batch_size=max_images,
            drop_remainder=False, uniform_dequantization=False,  # The images as stored.
        )  # fmt: skip
        images = np.asarray(next(iter(it))["image"], np.float32)
        it.close()
        return images[:max_images]
    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(spec, "*.png")))
        if not files:
            raise FileNotFoundError(f"config.sampling.input: no .png files in folder {spec!r}")
        arrays = [_read_png(f) for f in files[:max_images]]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"config.sampling.input: the PNGs in {spec!r} differ in shape")
        return np.stack(arrays).astype(np.float32) / 255.0
    if not os.path.exists(spec):
        raise FileNotFoundError(f"config.sampling.input: no such file or folder {spec!r}")
    if spec.endswith(".png"):
        return _read_png(spec)[None].astype(np.float32) / 255.0
    if spec.endswith(".npz"):
        with np.load(spec) as f:
            if "images" not in f:
                raise ValueError(f"config.sampling.input {spec!r} has no `images` array")
            images = np.asarray(f["images"])
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"`images` in {spec!r} must be [N, H, W, C]; got {images.shape}")
        if images.dtype == np.uint8:
            return images[:max_images].astype(np.float32) / 255.0
        images = images[:max_images].astype(np.float32)
        if images.min() < 0 or images.max() > 1:
            raise ValueError(f"float `images` in {spec!r} must lie in [0, 1]")
        return images
    raise ValueError(
        f"config.sampling.input must be a .png file, a folder of PNGs, an .npz file or one of "
        f"{list(SPLITS)}; got {spec!r}"
    )


def _check_input_shape(images: np.ndarray, image_shape, task: str) -> None:
    h, w, c = image_shape
    want = 1 if task == "colorize" else c
    ok = images.shape[1:3] == (h, w) and images.shape[3] in ((1, c) if task == "colorize" else (c,))
    if not ok:
        raise ValueError(
            f"config.sampling.input images have shape {images.shape[1:]}; this model needs "
            f"({h}, {w}, {want})" + (f" or ({h}, {w}, {c})" if task == "colorize" else "")
        )


def _check_class_label(label: int, num_classes: int) -> None:
    if not -1 <= label < num_classes:
        raise ValueError(
            f"config.sampling.class_label must lie in [0, {num_classes}) for this model "
            f"({num_classes} classes), or be -1 for every class; got {label}"
        )


def _pc_kwargs(exp: Experiment) -> dict:
    cfg = exp.sampling
    if cfg.method != "pc":
        raise ValueError(
            f"config.sampling.task={cfg.task!r} runs the PC sampler: set "
            f"config.sampling.method='pc' (got {cfg.method!r})"
        )
    return dict(
        predictor=cfg.predictor,
        corrector=cfg.corrector,
        snr=cfg.snr,
        n_steps=cfg.n_steps_each,
        probability_flow=cfg.probability_flow,
    )


def _in_rounds(fn, params, key, rows: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """``fn(params, key, rows [b, ...]) -> (samples [b, *event], nfe)`` over all ``rows`` in rounds.

    The round size is ``batch_size``, or less when fewer rows are asked for (rounded up to a
    multiple of the device count); the last round is padded with copies of the last row, whose
    samples are dropped. Returns the samples ``[len(rows), *event]`` (on the host) and the NFE.
    """
    mesh = make_mesh()
    check_batch_size(batch_size, mesh, "config.sampling.batch_size")
    n = len(rows)
    size = min(batch_size, -(-n // mesh.size) * mesh.size)
    rounds = -(-n // size)
    pad = rounds * size - n
    if pad:
        rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)])
    jitted = jax.jit(
        fn,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
        out_shardings=(batch_sharded(mesh), replicated(mesh)),
    )
    outs = [
        sample_round(jitted, params, key, r, global_rows(rows[r * size : (r + 1) * size], mesh))
        for r in range(rounds)
    ]
    return np.concatenate([x for x, _ in outs])[:n], outs[-1][1]


def run_task(exp: Experiment, workdir: str, *, step: int | None = None) -> str:
    """Runs ``config.sampling.task`` with the EMA weights of the newest (or ``step``'s) checkpoint
    and writes the grid and the arrays; returns the output directory."""
    cfg = exp.sampling
    task = cfg.task
    image_shape = exp.image_shape
    num_classes = exp.model.fields.get("num_classes")
    # Everything checkable without the checkpoint is checked first.
    if task == "colorize" and image_shape[2] < 2:
        raise ValueError(
            f"config.sampling.task='colorize' needs color data; data set {exp.data.dataset!r} "
            f"has {image_shape[2]} channel(s)"
        )
    if task == "class_conditional":
        if num_classes and cfg.classifier_workdir:
            raise ValueError(
                "config.sampling.classifier_workdir is for unconditional models; this model is "
                f"class-conditional (model.num_classes={num_classes}) and uses classifier-free "
                "guidance: leave classifier_workdir empty"
            )
        if not num_classes and not cfg.classifier_workdir:
            raise ValueError(
                "config.sampling.task='class_conditional' needs a class-conditional model "
                "(config.model.num_classes, trained with training.label_dropout > 0) or a "
                "noise-conditional classifier (config.sampling.classifier_workdir)"
            )
        if num_classes:
            _check_class_label(cfg.class_label, num_classes)
    else:
        mask = load_mask(cfg.mask, image_shape) if task == "inpaint" else None
        images = load_images(exp, cfg.input, cfg.num_samples)
        _check_input_shape(images, image_shape, task)

    sde = exp.sde.build()
    model, params, step = restore_ema(exp, workdir, make_mesh(), step)
    score = make_score_fn(sde, model, continuous=exp.training.continuous)
    scaler = data_scaler(exp.data)
    key = jax.random.fold_in(jax.random.key(exp.seed), 2_000_003)
    out_dir = os.path.join(workdir, "samples", f"step_{step}", task)
    if task == "class_conditional":
        name = "all" if cfg.class_label == -1 else cfg.class_label
        out_dir += f"_class{name}_scale{cfg.guidance_scale:g}"
    settings = output_settings(exp, step)
    check_output_dir(out_dir, settings)
    arrays: dict[str, np.ndarray] = {}
    colour_error = None

    if task == "class_conditional":
        log_prob_fn = None
        if cfg.classifier_workdir:
            log_prob_fn, classifier_classes = load_classifier(cfg.classifier_workdir, exp)
            num_classes = classifier_classes
        _check_class_label(cfg.class_label, num_classes)
        if cfg.class_label == -1:  # Every class in turn: column c of the grid is class c.
            labels = np.arange(cfg.num_samples, dtype=np.int32) % num_classes
        else:
            labels = np.full((cfg.num_samples,), cfg.class_label, np.int32)

        def run(params, key, labels):
            shape = (labels.shape[0], *image_shape)
            if log_prob_fn is None:
                cond = lambda x, t, y: score({"params": params}, x, t, class_labels=y)
                guided = controllable.classifier_free_guidance(
                    controllable.null_label_score_fn(cond, num_classes)
                )
            else:
                uncond = lambda x, t: score({"params": params}, x, t)
                guided = controllable.classifier_guidance(uncond, log_prob_fn)
            if cfg.method == "ode":
                return controllable.guided_ode_sample(
                    key, guided, sde, shape, labels, cfg.guidance_scale,
                    num_classes=num_classes, solver=cfg.ode_solver, rtol=cfg.rtol, atol=cfg.atol,
                    denoise=cfg.noise_removal,
                )  # fmt: skip
            return controllable.guided_pc_sample(
                key, guided, sde, shape, labels, cfg.guidance_scale,
                num_classes=num_classes, denoise=cfg.noise_removal, **_pc_kwargs(exp),
            )  # fmt: skip

        x, nfe = _in_rounds(run, params, key, labels, cfg.batch_size)
        samples = to_images(exp, x)
        grid = dict(images01=samples, ncol=num_classes if cfg.class_label == -1 else None)
        arrays.update(labels=labels)
    else:
        n = len(images)
        k = cfg.num_completions
        if task == "inpaint":
            observed = np.repeat(scaler(images), k, axis=0)
            shown = np.where(mask > 0, images, 0.5)  # Unknown pixels shown mid-gray.
        else:
            gray = images.mean(axis=-1, keepdims=True)
            observed = np.repeat(scaler(gray), k, axis=0)
            shown = np.repeat(gray, image_shape[2], axis=-1)
        sampler = functools.partial(
            controllable.pc_inpaint if task == "inpaint" else controllable.pc_colorize,
            final_corrector_steps=cfg.final_corrector_steps,
            **_pc_kwargs(exp),
        )

        def run(params, key, observed):
            score_fn = lambda x, t: score({"params": params}, x, t)
            if task == "inpaint":
                return sampler(key, score_fn, sde, observed, mask)
            return sampler(key, score_fn, sde, observed, image_shape[2])

        x, nfe = _in_rounds(run, params, key, np.asarray(observed, np.float32), cfg.batch_size)
        samples = to_images(exp, x)
        # Rows: inputs, masked (or gray) inputs, then completion j of every input.
        inputs = (
            images if images.shape[-1] == image_shape[2] else np.repeat(images, image_shape[2], -1)
        )
        completions = samples.reshape(n, k, *image_shape).transpose(1, 0, 2, 3, 4)
        rows = np.concatenate([inputs[None], shown[None], completions]).reshape(-1, *image_shape)
        grid = dict(images01=rows, ncol=n)
        arrays.update(inputs=to_uint8_rounded(images))
        if task == "colorize" and images.shape[-1] == image_shape[2]:
            colour_error = chroma_error(exp, images, completions)
        if mask is not None:
            arrays.update(mask=mask.astype(np.uint8))
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "grid.png")
        save_grid(path, **grid, max_images=len(grid["images01"]))
        np.savez_compressed(
            os.path.join(out_dir, "samples.npz"),
            images=to_uint8_rounded(samples),
            nfe=int(nfe),
            **arrays,
        )
        if colour_error is not None:
            write_json(os.path.join(out_dir, "colour_error.json"), colour_error)
        write_settings(out_dir, settings)
    print(f"wrote {len(samples)} {task} samples ({int(nfe)} score evaluations each) to {out_dir}")
    if colour_error is not None:
        e = colour_error
        print(
            f"chroma RMSE against the true colours of the {e['num_inputs']} inputs: completions "
            f"{e['completions']:.4f}, average of {e['num_completions']} completions "
            f"{e['average_completion']:.4f}, mean-chroma baseline {e['mean_chroma_baseline']:.4f}"
        )
    return out_dir
