"""Test-wide JAX settings.

Implicit rank promotion is an error so that a forgotten ``t[:, None, ...]`` cannot silently
broadcast a per-sample quantity along the wrong axis. Compiled executables are cached on disk so that
repeated runs of the suite skip XLA compilation, which dominates test time on a 2-core machine.
"""

import gc
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


@pytest.fixture(autouse=True, scope="module")
def _release_executables():
    """Drops jax's compiled executables after each test module. Each one keeps memory maps of its
    code, and a full run accumulated more than Linux's default limit of 65,530 per process
    (vm.max_map_count): three sampling test files alone left 29,000, and the run aborted inside
    XLA near its end. Modules rarely share programs, and the persistent cache serves those that
    are compiled again."""
    yield
    jax.clear_caches()
    gc.collect()
