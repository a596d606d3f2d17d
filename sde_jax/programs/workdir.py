"""A run's signature, ``<workdir>/run.json``: what its checkpoints' contents depend on.

Every mode checks it before any work (:func:`check_signature`), so that a workdir is never resumed,
sampled or evaluated with a different network, SDE, image shape or data scaling. Training records
it with its first checkpoint (:func:`write_signature`, called by
:class:`sde_jax.programs.checkpoint.Checkpoints`), so a command that fails before saving leaves no
``run.json`` behind, and a workdir whose ``run.json`` is missing is checked against its checkpoints
by restoring them before one is written.

Keys that a ``run.json`` written by an older version lacks (e.g. ``centered``) are not checked:
what that run used cannot be known from the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

SIGNATURE = "run.json"


def _normalized(signature: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(signature))  # Tuples become lists, as in the file.


def check_signature(workdir: str, signature: dict[str, Any]) -> None:
    """Raises ``ValueError`` (one line, naming each difference) if ``workdir`` holds a run whose
    recorded signature differs from ``signature``. Writes nothing."""
    path = os.path.join(workdir, SIGNATURE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        existing = json.load(f)
    signature = _normalized(signature)
    diffs = [
        f"{k}: workdir has {existing[k]!r}, config has {signature.get(k)!r}"
        for k in sorted(existing)
        if existing[k] != signature.get(k)
    ]
    if diffs:
        raise ValueError(
            f"workdir {workdir!r} holds a run of a different model; refusing to resume or "
            f"overwrite it (use a new --workdir). Differences: {'; '.join(diffs)}"
        )


def write_json(path: str, obj: Any, *, sort_keys: bool = False) -> None:
    """Writes ``obj`` to ``path`` atomically: a reader sees the old file or the whole new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=sort_keys)
    os.replace(tmp, path)


def write_signature(workdir: str, signature: dict[str, Any]) -> None:
    """Records ``signature`` as ``workdir``'s ``run.json`` if it has none (process 0 only)."""
    path = os.path.join(workdir, SIGNATURE)
    if os.path.exists(path) or jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    write_json(path, _normalized(signature), sort_keys=True)
