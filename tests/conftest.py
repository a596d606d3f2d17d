"""Test-wide JAX settings.

Implicit rank promotion is an error so that a forgotten ``t[:, None, ...]`` cannot silently
broadcast a per-sample quantity along the wrong axis. Compiled executables are cached on disk so that
repeated runs of the suite skip XLA compilation, which dominates test time on a 2-core machine.
"""

import os
import pathlib
import sys

import jax
import pytest

# Test helpers (tests/gaussians.py) import as top-level modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

jax.config.update("jax_numpy_rank_promotion", "raise")
_cache = pathlib.Path(
    os.environ.get("SDE_JAX_TEST_CACHE", pathlib.Path(__file__).parent.parent / ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def no_persistent_cache():
    """Compiles without the persistent cache: writing some gradient programs of the sampler (those
    of tests/test_tuning.py and the fit_levels tests) to it crashed the test process with a
    segmentation fault inside jax's cache write, on a clean clone's cold cache."""
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)
