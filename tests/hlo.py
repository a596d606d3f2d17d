"""Inspection of compiled XLA programs: which computations run inside loops."""

import re

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_CALLEES = re.compile(
    r"(?:condition|body|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
    r"|branch_computations=\{([^}]*)\}"
)
_HOST = ("callback", "outfeed", "infeed", "send(", "recv(", "host")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name = {}, None
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
        elif name is not None and line.startswith(" "):
            comps[name].append(line)
    return comps


def loop_bodies_and_host_ops(hlo: str) -> tuple[int, list[str]]:
    """Number of while loops, and every host-transfer instruction reachable from a loop body.

    Args:
        hlo: the text of a compiled program (``jax.jit(f).lower(...).compile().as_text()``).
    """
    comps = _computations(hlo)

    def callees(line):
        out = []
        for single, multi in _CALLEES.findall(line):
            out += [single] if single else [c.strip().lstrip("%") for c in multi.split(",")]
        return out

    roots, n_loops = [], 0
    for lines in comps.values():
        for line in lines:
            if " while(" in line:
                n_loops += 1
                roots += [c for c in callees(line)]
    seen, stack, host_ops = set(), list(roots), []
    while stack:
        c = stack.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            op = line.split("=", 1)[-1]
            if any(h in op.lower() for h in _HOST):
                host_ops.append(line.strip()[:160])
            stack += callees(line)
    return n_loops, host_ops
