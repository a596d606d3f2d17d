"""Joining a multi-process run: several processes, one logical run over all their devices.

A process joins when launched with ``--process_id`` and ``--coordinator`` (by ``main.py
--num_processes=N``, :mod:`sde_jax.programs.launch`, or by hand on each host), or when its
environment says it is one of several (SLURM with more than one task, a multi-host TPU slice,
``JAX_COORDINATOR_ADDRESS``), in which case ``jax.distributed.initialize()`` reads the rest from
there. CPU processes exchange collectives over gloo.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")

# A process that has not joined by then is missing: the others stop instead of waiting forever
# (main.py's --join_timeout).
JOIN_TIMEOUT_SECONDS = 120
# A peer silent for this long is dead: the runtime stops the others.
HEARTBEAT_TIMEOUT_SECONDS = 30


def launched_as_multi_process() -> bool:
    """True when the environment says this is one of several processes (see the module docstring)."""
    env = os.environ
    return (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )


def initialize(
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int | None = None,
    join_timeout: int = JOIN_TIMEOUT_SECONDS,
) -> None:
    """Joins this process to its run: explicitly with ``coordinator``, ``num_processes`` and
    ``process_id``, or from the environment when :func:`launched_as_multi_process`; otherwise
    nothing (one process). Raises ``OSError`` if the run's processes have not all joined within
    ``join_timeout`` seconds."""
    explicit = process_id is not None
    if not explicit and not launched_as_multi_process():
        return
    if explicit and not (coordinator and 0 <= process_id < num_processes):
        raise ValueError(
            f"--process_id={process_id} needs --coordinator=HOST:PORT and --num_processes > "
            f"process_id (got {coordinator!r}, {num_processes})"
        )
    # Before the CPU backend exists; other backends ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = dict(
        # The runtime's own deadline comes later than ours (see below).
        initialization_timeout=join_timeout + 60,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS,
    )
    if explicit:
        kwargs.update(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    where = coordinator or "the environment's coordinator"
    message = (
        f"process {process_id} could not join the run at {where} within {join_timeout} s (are "
        f"all {num_processes} processes started, with the same --coordinator?)"
    )
    failures: list[BaseException] = []

    def join():
        try:
            jax.distributed.initialize(**kwargs)
        except Exception as e:
            failures.append(e)

    joining = threading.Thread(target=join, name="join", daemon=True)
    joining.start()
    joining.join(join_timeout)
    if joining.is_alive():
        # At its deadline the runtime aborts the process from one of its threads, with a log
        # line that names no flag and no missing process: this process ends first, with one.
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)
    if failures:  # The runtime's errors are long and name no flag.
        detail = " ".join(str(failures[0]).split())[:300]
        raise OSError(f"{message}: {detail}") from failures[0]


def check_same_run(**what: Any) -> None:
    """Raises ``ValueError`` naming the fields on which this process's launch differs from
    process 0's (config, workdir, mode...); nothing with one process."""
    if jax.process_count() == 1:
        return
    digests = {
        k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).digest()
        for k, v in what.items()
    }
    mine = np.frombuffer(b"".join(digests[k][:8] for k in sorted(digests)), np.uint8)
    first = multihost_utils.broadcast_one_to_all(mine)
    differ = [
        k
        for i, k in enumerate(sorted(digests))
        if not np.array_equal(mine[8 * i : 8 * i + 8], np.asarray(first)[8 * i : 8 * i + 8])
    ]
    agree = multihost_utils.process_allgather(np.asarray([len(differ)]))
    if differ or int(np.max(agree)):
        raise ValueError(
            f"process {jax.process_index()} was launched with another "
            f"{', '.join(differ) or 'setting (on another process)'} than process 0: every process "
            "of a run needs the same --mode, --config (and overrides) and --workdir"
        )


def gather(x) -> np.ndarray:
    """The whole batch on this host: every process's rows of a local array, or every shard of a
    global ``jax.Array``, in process (data) order."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.max(multihost_utils.process_allgather(np.asarray([int(flag)]))))


def first_then_others(fn: Callable[[], T], what: str) -> T:
    """``fn()`` on process 0 first and then, once it has succeeded, on the others: for work that
    fills a cache the processes share (process 0 fills it, the others read it). An error on
    process 0 stops every process; ``what`` names the work in the others' message."""
    if jax.process_count() == 1:
        return fn()
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except Exception as e:  # Re-raised below, after telling the other processes.
            error = e
    if any_process(error is not None):
        raise error or RuntimeError(f"process 0 could not {what} (its error says why)")
    return result if jax.process_index() == 0 else fn()
