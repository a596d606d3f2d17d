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
from jax.experimental.compilation_cache import compilation_cache

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
    """Compiles without the persistent cache (for the sampler's gradient programs of
    tests/test_tuning.py and the fit_levels tests, whose compiles crashed a long test session
    once). jax decides whether to use the cache once per process, so the decision is reset on
    the way in and out."""
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()
