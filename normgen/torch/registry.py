"""What the custom ops' string arguments name: specs (and their Ops), call-time sizes and
process groups.

A torch.library schema takes tensors, numbers and strings, so an op call names its spec
by a stable string id, resolved here to the Op that runs it:

- a bundled spec is its name: "layer_norm";
- any other spec (a .toml file, a Spec built in Python, an Op with its own plan options)
  is "<name>@<digest>", the digest of the spec's meaning (its source file and doc do not
  count), registered when a module or `spec_key` first sees it. A graph compiled in one
  process runs in another only once that process has registered the same spec (built the
  same module, or called `spec_key`).

Sizes travel as one canonical string ("normalized_shape=(64,)", "num_groups=4"), decoded
once per distinct string. Process groups are registered like specs, under "group<n>".
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any

from ..errors import CallError
from ..op import Op, load
from ..op.distributed import Group, group_of
from ..spec import Spec, bundled_names

_OPS: dict[str, Op] = {}
# id(Op) -> (key, Op): the Op is held so that its id is never reused by another object
_KEY_OF: dict[int, tuple[str, Op]] = {}
_GROUPS: dict[str, Group] = {}
_GROUP_KEY: dict[int, tuple[str, Any]] = {}  # id(process group or communicator) -> (key, it)


def spec_key(spec: str | Path | Spec | Op) -> str:
    """The string id of a spec (a bundled name, a .toml path, a Spec or an Op), registered
    so that `op_of` finds its Op.

    >>> spec_key("group_norm"), spec_key("examples/pos_norm.toml")
    ('group_norm', 'pos_norm@3f0c9a1e52d7')
    """
    if isinstance(spec, str) and spec in _OPS:
        return spec
    known = _KEY_OF.get(id(spec))
    if known is not None:
        return known[0]
    op = load(spec)
    known = _KEY_OF.get(id(op))
    if known is not None:
        return known[0]
    key = _key(op)
    _OPS.setdefault(key, op)
    _KEY_OF[id(op)] = (key, op)
    return key


def _key(op: Op) -> str:
    name = op.spec.name
    if name in bundled_names() and load(name).spec == op.spec and op.options == load(name).options:
        return name
    meaning = dataclasses.replace(op.spec, source="", doc="")
    text = repr(meaning) + ("" if op.options == type(op.options)() else repr(op.options))
    return f"{op.spec.name}@{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def op_of(key: str) -> Op:
    """The Op registered under `key`."""
    op = _OPS.get(key)
    if op is None:
        raise CallError(f"normgen.torch: no spec is registered under '{key}' in this process; build the module "
                        "(or call normgen.torch.registry.spec_key(spec)) before running a graph that uses it")
    return op


# The bundled specs are registered up front (a few ms): a graph that calls them is then traced
# through dictionary lookups only, even when no module was built before torch.compile ran.
for _name in bundled_names():
    spec_key(_name)


def sizes_key(sizes: dict[str, Any]) -> str:
    """Call-time sizes as one canonical string: "name=value;..." (values: int or tuple of ints)."""
    return ";".join(f"{k}={_literal(sizes[k])}" for k in sorted(sizes))


def _literal(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + "".join(f"{int(n)}," for n in v) + ")"
    return str(int(v))


@functools.lru_cache(maxsize=1024)
def _parse_sizes(key: str) -> tuple[tuple[str, Any], ...]:
    out = []
    for part in key.split(";") if key else ():
        name, _, value = part.partition("=")
        out.append((name, ast.literal_eval(value)))
    return tuple(out)


def sizes_of(key: str) -> dict[str, Any]:
    """The sizes dictionary of a `sizes_key` string."""
    return dict(_parse_sizes(key))


def group_key(process_group: Any = None, comm: Any = None) -> str:
    """The string id of a call's `process_group` (torch.distributed, or a normgen Group) or
    `comm` (mpi4py); "" for neither. Each group object is registered once."""
    if process_group is None and comm is None:
        return ""
    which = process_group if process_group is not None else comm
    known = _GROUP_KEY.get(id(which))
    if known is not None:
        return known[0]
    key = f"group{len(_GROUPS)}"
    _GROUPS[key] = group_of(process_group, comm)
    _GROUP_KEY[id(which)] = (key, which)
    return key


def group_of_key(key: str) -> Group | None:
    if not key:
        return None
    if key not in _GROUPS:
        raise CallError(f"normgen.torch: no process group is registered under '{key}' in this process")
    return _GROUPS[key]
