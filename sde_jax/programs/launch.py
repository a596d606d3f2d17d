"""``main.py --num_processes=N``: one logical run as N cooperating processes on this machine.

The launcher starts N copies of the same command line, each with its ``--process_id`` and the
address of a coordinator on 127.0.0.1 (a free port), so that JAX's distributed runtime joins them
(over gloo collectives on the CPU). It forwards SIGTERM and SIGINT to all of them, and when one
process fails it gives the others a grace period to stop on their own (the runtime's heartbeat or
a failed collective stops them) and then terminates them, so a run never hangs on a dead peer. Its
exit status is the first failure's, or 0.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

# How long the other processes may take to stop after one failed, before they are terminated.
GRACE_SECONDS = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], num_processes: int) -> int:
    """Runs ``python <argv> --process_id=i --coordinator=127.0.0.1:<port>`` for i < N; returns
    the exit status of the run (the first nonzero one of its processes, else 0)."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, *argv, f"--process_id={i}", f"--coordinator={coordinator}"],
            # Process 0 reports for the run; the others' errors still reach stderr.
            stdout=None if i == 0 else subprocess.DEVNULL,
        )
        for i in range(num_processes)
    ]

    def forward(signum, frame):
        del frame
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed, failed_at = None, None
        while True:
            running = [p.poll() is None for p in procs]
            if failed is None:
                failed = next(
                    (i for i, p in enumerate(procs) if p.returncode not in (None, 0)), None
                )
                if failed is not None:
                    failed_at = time.monotonic()
                    print(
                        f"process {failed} of {num_processes} exited with status "
                        f"{procs[failed].returncode}; stopping the others within "
                        f"{GRACE_SECONDS:g} s",
                        file=sys.stderr,
                        flush=True,
                    )
            if not any(running):
                break
            if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
                _stop(procs)
            time.sleep(0.1)
        return 0 if failed is None else procs[failed].returncode
    finally:
        _stop(procs)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10.0
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
