"""The host malloc policy: what it changes (page faults of XLA:CPU's temporary buffer) and its
configuration. Policies are applied in subprocesses, since they change the whole process."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sde_jax.programs import host_malloc

ROOT = pathlib.Path(__file__).resolve().parents[1]

_FAULTS = r"""
import json, resource, sys
from sde_jax.programs import host_malloc
applied = host_malloc.apply_policy(sys.argv[1])
import jax, jax.numpy as jnp
# A cumulative sum is not fused with its consumer, so its 64 MiB result is a temporary buffer of
# the compiled computation, allocated and freed on every call.
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x) * x)).lower(jnp.ones(1 << 24)).compile()
x = jnp.ones(1 << 24)
for _ in range(2):
    f(x).block_until_ready()
# Mean over many calls: XLA frees a call's temporary buffer on its own thread, so now and then
# the next call starts first and the heap has to grow by (and first-touch) one more buffer.
calls = 32
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(calls):
    value = float(f(x))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / calls
temp = f.memory_analysis().temp_size_in_bytes
print(json.dumps(dict(applied=applied, faults=faults, temp=temp, value=value)))
"""


def _run(code, *args, env=None):
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not host_malloc.is_glibc(), reason="the policy sets glibc's malloc")
def test_keep_stops_refaulting_the_temporary_buffer_on_every_call():
    default = _run(_FAULTS, "default")
    keep = _run(_FAULTS, "keep")
    assert not default["applied"] and keep["applied"]
    pages = default["temp"] / 4096
    assert pages > 16_000
    # glibc maps the temporary buffer afresh on each call, so each call first-touches it again.
    assert default["faults"] > 0.9 * pages, default
    # Kept in the process, the buffer is reused: at most half of those faults remain (about a
    # tenth at worst measured, with another process busy on the second core).
    assert keep["faults"] < 0.5 * default["faults"], (keep, default)
    assert keep["value"] == default["value"]


_AUTO = r"""
import json
from sde_jax.programs import host_malloc
print(json.dumps(dict(cpu=host_malloc.computes_on_cpu(), applied=host_malloc.apply_policy("auto"))))
"""


@pytest.mark.skipif(not host_malloc.is_glibc(), reason="the policy sets glibc's malloc")
@pytest.mark.parametrize(
    "platforms, expected", [("cpu", True), ("cuda", False), ("tpu,cpu", False)]
)
def test_auto_keeps_memory_only_when_jax_computes_on_the_cpu(platforms, expected):
    out = _run(_AUTO, env={"JAX_PLATFORMS": platforms})
    assert out == {"cpu": expected, "applied": expected}


def test_unknown_policy_names_the_field():
    with pytest.raises(ValueError, match=r"config.host_malloc.*'auto', 'keep', 'default'"):
        host_malloc.apply_policy("always")


def test_experiment_rejects_an_unknown_policy():
    from configs.tiny import get_config
    from sde_jax.programs.experiment import Experiment

    config = get_config()
    assert Experiment.from_config(config).host_malloc == "auto"
    config.host_malloc = "off"
    with pytest.raises(ValueError, match=r"config\.host_malloc"):
        Experiment.from_config(config)
