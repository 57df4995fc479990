"""Readable text for plans: what `normgen plan` prints.

    >>> print(describe_plan(plan))
"""

from __future__ import annotations

from . import formulas
from .model import Plan, Strategy


def describe_plan(plan: Plan) -> str:
    """The plan's decisions, its loop dims, its loop nest and the steps a call runs."""
    k, la = plan.kernel, plan.launch
    b = plan.binding
    fused = ("fused (statistics and normalization in one kernel)" if la.fused else
             f"phased ({la.n_parts} part{'s' if la.n_parts > 1 else ''} per group, merged with Chan's formula, "
             "then normalize)")
    lines = [f"plan {k.spec} · {k.direction.value} · {k.target} · {k.dtype}",
             f"  input    {b.describe()}"]
    if plan.device is not None:
        lines.append(f"  device   {plan.device}")
    lines += [f"  strategy {k.strategy.value}, {fused}", "  loop dims (outer -> inner, after coalescing):"]
    arrays = [a for a, _ in la.strides]
    for i, d in enumerate(k.dims):
        role = "kept" if d.kept else "reduced"
        where = ("group" if i in k.groups else "row" if i in k.rows else
                 "inner" if i == k.inner else "tail" if i == k.tail else "?")
        strides = " ".join(f"{a}:{la.stride(a)[i]}" for a in arrays)
        lines.append(f"    {d.name:<14} {role:<8} {where:<6} size {la.sizes[i]:<8} strides {strides}")
    if k.target == "cpu" and k.strategy is Strategy.COLUMNS:
        lines.append(f"  tiles    {la.seg} columns per unit, {la.row_chunk} rows per two-pass chunk; rows back to back "
                     f"taken {la.kb} at a time: reading pass {'yes' if la.kb_read else 'no'}, "
                     f"writing pass {'yes' if la.kb_write else 'no'}")
    if k.target == "cuda":
        lines.extend(_cuda_lines(plan))
    spec = plan.binding.spec
    lines += [f"  {'math' if i == 0 else '':<8} {line}" for i, line in enumerate(formulas.lines(k, spec))]
    lines.append("  loop nest:")
    lines.extend("    " + line for line in loop_nest(plan))
    lines.append("  steps of a training call:")
    lines.extend(_steps(plan.steps, k.target == "cuda"))
    if plan.eval_steps:
        lines.append("  steps of an evaluation call:")
        lines.extend(_steps(plan.eval_steps, True))
    if k.target == "cuda":
        moved = sum(s.bytes_read + s.bytes_written for s in plan.steps)
        dev = plan.device
        lines.append(f"  traffic  {_mb(moved)} modeled for a training call, {moved / plan.min_bytes:.2f} x the "
                     f"{_mb(plan.min_bytes)} any implementation moves (inputs read once, outputs written once); "
                     f"at {dev.bandwidth_gbs:.0f} GB/s no less than {moved / dev.bandwidth_gbs / 1e3:.0f} us")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _steps(steps, cuda: bool) -> list[str]:
    width = max(len(s.entry) for s in steps)
    out = []
    for s in steps:
        where = f"{s.launch}: " if s.launch else ""
        out.append(f"    {s.entry:<{width}}  {where}{s.what}")
        if cuda and s.entry != "host":
            out.append(f"    {'':<{width}}    {s.threads:,} threads, {s.shared_bytes} B shared, "
                       f"reads {_mb(s.bytes_read)}, writes {_mb(s.bytes_written)}")
    return out


def _cuda_lines(plan: Plan) -> list[str]:
    """What the CUDA kernels are compiled for and launched with."""
    k, la = plan.kernel, plan.launch
    loads = (f"{k.vec} elements (16 bytes) per load along {k.dims[k.inner].label} when aligned "
             f"({'sizes and strides allow it' if la.vec_ok else 'sizes or strides do not: scalar loads'})"
             if k.vec > 1 else f"scalar loads ({k.dims[k.inner].label} is strided)")
    out = [f"  loads    {loads}"]
    if k.strategy is Strategy.ROWS:
        unit = f"{la.threads_per_unit} threads per unit, blocks of {la.block[0]}"
        if la.fused and k.cache:
            unit += (f"; each thread keeps {k.cache} x {k.vec} elements of {'x and dy' if k.direction.value == 'backward' else 'x'}"
                     " in registers (x read from DRAM once)")
        elif la.fused:
            unit += "; groups too large to keep in registers: x streamed twice"
        if la.n_copies > 1:
            unit += (f"; {la.n_copies} units per group, each reading all of it for the statistics (the other "
                     "units' halves from L2) and normalizing its own share")
        out.append(f"  units    {unit}")
    else:
        out.append(f"  tiles    blocks of ({k.tile[0]} x {k.vec} elements along the row) x {k.tile[1]} rows, "
                   f"{la.n_parts} parts of the rows per tile")
    return out


def loop_nest(plan: Plan) -> list[str]:
    if plan.kernel.target == "cuda":
        return _cuda_nest(plan)
    k, la = plan.kernel, plan.launch
    g = ", ".join(k.dims[i].label for i in k.groups) or "(one group)"
    r = ", ".join(k.dims[i].label for i in k.rows)
    inner = k.dims[k.inner].label
    parts = " x parts" if la.n_parts > 1 else ""
    forward = k.direction.value == "forward"
    apply = formulas.apply_line(k, plan.binding.spec)
    out = []
    if k.strategy is Strategy.ROWS:
        out.append(f"for unit in parallel(groups {g}{parts}):")
        if r:
            out.append(f"  for row in rows({r}):")
        chunk = f"segments({inner}, {la.seg})" if k.target == "cpu" else f"{inner}, {k.vec} at a time, strided by the unit's threads"
        out.append(f"    for chunk in {chunk}:   # exact two-pass in cache, Chan merge")
        out.append(f"      {formulas.sums_line(k)}")
        out.append("  finalize mean, rstd" if forward else "  finalize a, b")
        out.append(f"  for row, chunk again: {apply}   # contiguous over {inner}")
    else:
        tail = f" x {k.dims[k.tail].label}" if k.tail is not None else ""
        seg = f"column segments of {la.seg}" if k.target == "cpu" else "column tiles"
        out.append(f"for unit in parallel(groups {g} x {seg}{parts}):")
        out.append(f"  for row in rows({r}):   # shifted sums per column, Chan merge")
        acc = "x" if forward else "(g, g·x̂)"
        out.append(f"    acc[column] += {acc}[row, column{tail}]   # contiguous over {inner}")
        out.append("  finalize mean, rstd per column" if forward else "  finalize a, b per column")
        out.append(f"  for row: {apply}   # per column")
    return out


def _cuda_nest(plan: Plan) -> list[str]:
    """The GPU's loop nest: units of threads over slots of `vec` elements."""
    k, la = plan.kernel, plan.launch
    g = ", ".join(k.dims[i].label for i in k.groups) or "(one group)"
    r = ", ".join(k.dims[i].label for i in k.rows)
    inner = k.dims[k.inner].label
    forward = k.direction.value == "forward"
    apply = formulas.apply_line(k, plan.binding.spec)
    if k.strategy is Strategy.COLUMNS:
        tail = f" x {k.dims[k.tail].label}" if k.tail is not None else ""
        acc = "x" if forward else "(g, g·x̂)"
        return [f"for block in parallel(groups {g} x row tiles of {k.tile[0]} x {k.vec} elements x {la.n_parts} parts):",
                f"  for row in rows({r}), {k.tile[1]} at a time:   # thread (x, y): row y, elements x*{k.vec}..",
                f"    acc[element] += {acc}[row, element]   # {inner}{tail}: contiguous, sums in the compute type",
                "  add over y (float64, shared memory), fold each column's tail; parts: warp merge (Chan)",
                f"  for row: {apply}   # per element, statistics per column"]
    unit = f"{la.threads_per_unit} threads"
    share = f" x {la.n_copies} shares" if la.n_copies > 1 else f" x {la.n_parts} parts" if la.n_parts > 1 else ""
    rows = f"rows({r}) x " if r else ""
    out = [f"for unit of {unit} in parallel(groups {g}{share}):",
           f"  for slot in {rows}{inner} / {k.vec}, strided by {la.threads_per_unit}:   # {k.vec} elements a load"]
    if not forward:
        kept = la.fused and k.cache
        out += [(f"    keep x, dy[slot] in registers ({k.cache} slots a thread); " if kept else "    ")
                + "sums of g and g·x̂ in the compute type",
                "  sums over the unit (float64)" + ("" if la.fused else "; parts: added"),
                f"  for slot {'kept' if kept else 'again'}: {apply}"]
    elif la.fused and k.cache:
        out += [f"    keep x[slot] in registers ({k.cache} slots a thread); sums of x - K in the compute type",
                "  sums over the unit (float64); mean; M2 exactly from registers" if la.n_copies == 1 else
                "  sums over the unit (float64; other shares read for the statistics only); mean, M2",
                f"  for slot kept: {apply}"]
    else:
        out += ["    sums of x - K in the compute type, added to float64 every few slots",
                "  sums over the unit (float64); mean, M2" + ("" if la.fused else "; parts: warp merge (Chan)"),
                f"  for slot again: {apply}"]
    return out
