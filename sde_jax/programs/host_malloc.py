r"""How glibc's ``malloc`` hands host memory back to the kernel: the policy for XLA:CPU training.

XLA:CPU allocates the temporary buffer of each call of a compiled computation with ``malloc`` and
frees it when the call returns: 2.15 GB for the CIFAR-10 DDPM++ training step at batch 8 (1.37 GB
with Winograd convolutions off). glibc serves an allocation that large with ``mmap`` and gives it
back with ``munmap`` on ``free``, so every call first-touches every page of it again: 525,000 page
faults per DDPM++ training step measured, and none after the first step under ``keep``.

The ``keep`` policy sets three ``mallopt`` parameters so that the memory stays in the process
between calls:

- ``M_ARENA_MAX = 1``: every thread allocates from the main arena. A thread's own arena is a set of
  64 MB ``mmap``-ed heaps, and it serves anything larger with ``mmap`` whatever the other settings.
- ``M_MMAP_MAX = 0``: the main arena grows its heap (``brk``) instead of mapping large blocks.
- ``M_TRIM_THRESHOLD = -1``: freed memory at the top of the heap is never given back (the largest
  positive value, 2 GiB, would still trim the temporary buffer of a bigger step each time).

XLA frees a call's temporary buffer on one of its own threads, so the next call sometimes starts
first and the heap grows by (and first-touches) one more buffer: in a test with a 72 MB buffer, a
few of the first 40 calls, the heap settling at up to five buffers with the other core busy. The
process keeps that peak for its lifetime, which a training or sampling run uses on every step
anyway. Every thread shares one arena lock; XLA allocates a few large blocks per call, but a host
input pipeline with many allocating threads could contend on it, which is why the ``auto`` policy
applies ``keep`` only where JAX computes on the CPU.

``M_ARENA_MAX`` only binds threads that have not allocated yet: apply the policy before JAX creates
its CPU client (the first computation, device query or ``jax.process_count()``).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import platform

POLICIES = ("auto", "keep", "default")

# Parameter numbers of glibc's mallopt (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"

log = logging.getLogger(__name__)


def check_policy(policy: str) -> None:
    """Raises ``ValueError`` naming ``config.host_malloc`` unless ``policy`` is one of
    :data:`POLICIES`."""
    if policy not in POLICIES:
        raise ValueError(
            f"unknown `config.host_malloc` {policy!r}; expected one of {list(POLICIES)}"
        )


def is_glibc() -> bool:
    """Whether this process runs on glibc (Linux with the GNU C library)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def computes_on_cpu() -> bool:
    """Whether JAX will compute on the CPU, judged without creating a backend.

    ``JAX_PLATFORMS`` (or ``jax.config.jax_platforms``) decides when set; otherwise JAX uses the
    CPU only when no accelerator plugin (a ``jax_plugins`` module or entry point, e.g. CUDA or
    ROCm) and no ``libtpu`` is installed.
    """
    import jax  # importing JAX creates no backend

    platforms = jax.config.jax_platforms  # read from JAX_PLATFORMS when JAX is imported
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return False
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    try:
        import jax_plugins
    except ImportError:
        return True
    return not list(getattr(jax_plugins, "__path__", []))


def keep_freed_memory() -> bool:
    """Makes glibc keep freed memory in the process (the ``keep`` policy of the module docstring).

    Returns:
        True if all three ``mallopt`` calls succeeded; False, changing nothing, off glibc.

    Raises:
        OSError: if glibc refuses one of the settings.
    """
    if not is_glibc():
        return False
    libc = ctypes.CDLL(None)
    for name, param, value in (
        ("M_ARENA_MAX", _M_ARENA_MAX, 1),
        ("M_MMAP_MAX", _M_MMAP_MAX, 0),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, _NEVER_TRIM),
    ):
        if libc.mallopt(param, value) != 1:
            raise OSError(f"glibc refused mallopt({name}, {value})")
    return True


def apply_policy(policy: str) -> bool:
    """Applies ``config.host_malloc``: ``keep`` (always), ``auto`` (``keep`` when JAX computes on
    the CPU) or ``default`` (glibc's own settings).

    Call it before JAX creates a backend; a warning is logged otherwise, since threads that have
    already allocated keep their arenas.

    Returns:
        Whether glibc's settings were changed.

    Raises:
        ValueError: for an unknown ``policy``, or ``keep`` off glibc.
    """
    check_policy(policy)
    if policy == "default" or (policy == "auto" and not computes_on_cpu()):
        return False
    if not is_glibc():
        if policy == "keep":
            raise ValueError(
                "config.host_malloc='keep' sets glibc's malloc parameters, but this process runs "
                f"on {platform.libc_ver()[0] or platform.system()}; use 'auto' or 'default'"
            )
        return False
    if _backends_initialized():
        log.warning(
            "config.host_malloc=%r applied after JAX created its backends: threads that "
            "already allocated keep their own arenas",
            policy,
        )
    return keep_freed_memory()


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this private helper: cannot tell
        return False
