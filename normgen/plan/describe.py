"""Readable text for plans: what `normgen plan` prints.

    >>> print(describe_plan(plan))
"""

from __future__ import annotations

from .model import Plan, Strategy


def describe_plan(plan: Plan) -> str:
    """The plan's decisions, its loop dims, its loop nest and the steps a call runs."""
    k, la = plan.kernel, plan.launch
    b = plan.binding
    fused = ("fused (statistics and normalization in one kernel)" if la.fused else
             f"phased ({la.n_parts} part{'s' if la.n_parts > 1 else ''} per group, merged with Chan's formula, "
             "then normalize)")
    lines = [f"plan {k.spec} · {k.direction.value} · {k.target} · {k.dtype}",
             f"  input    {b.describe()}",
             f"  strategy {k.strategy.value}, {fused}",
             "  loop dims (outer -> inner, after coalescing):"]
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
    lines.append("  loop nest:")
    lines.extend("    " + line for line in loop_nest(plan))
    lines.append("  steps of a training call:")
    width = max(len(s.entry) for s in plan.steps)
    lines.extend(f"    {s.entry:<{width}}  {s.launch + ': ' if s.launch else ''}{s.what}" for s in plan.steps)
    return "\n".join(lines)


def loop_nest(plan: Plan) -> list[str]:
    k, la = plan.kernel, plan.launch
    g = ", ".join(k.dims[i].label for i in k.groups) or "(one group)"
    r = ", ".join(k.dims[i].label for i in k.rows)
    inner = k.dims[k.inner].label
    parts = " x parts" if la.n_parts > 1 else ""
    out = []
    if k.strategy is Strategy.ROWS:
        out.append(f"for unit in parallel(groups {g}{parts}):")
        if r:
            out.append(f"  for row in rows({r}):")
        chunk = f"segments({inner}, {la.seg})" if k.target == "cpu" else f"{inner}, strided by the unit's threads"
        out.append(f"    for chunk in {chunk}:   # exact two-pass in cache, Chan merge")
        out.append("      moments += chunk")
        out.append("  finalize mean, rstd")
        out.append(f"  for row, chunk again: y = (x - mean) * rstd * weight + bias   # contiguous over {inner}")
    else:
        tail = f" x {k.dims[k.tail].label}" if k.tail is not None else ""
        seg = f"column segments of {la.seg}" if k.target == "cpu" else "column tiles"
        out.append(f"for unit in parallel(groups {g} x {seg}{parts}):")
        out.append(f"  for row in rows({r}):   # shifted sums per column, Chan merge")
        out.append(f"    acc[column] += x[row, column{tail}]   # contiguous over {inner}")
        out.append("  finalize mean, rstd per column")
        out.append("  for row: y[row, column] = (x - mean[column]) * rstd[column] * weight + bias")
    return out
