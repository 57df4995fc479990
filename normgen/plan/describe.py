"""Readable text for plans: what `normgen plan` prints."""

from __future__ import annotations

from .planner import Plan, Strategy


def describe_plan(plan: Plan) -> str:
    k, la = plan.kernel, plan.launch
    b = plan.binding
    lines = [f"plan {k.spec} · {k.direction.value} · {k.target} · {k.dtype}",
             f"  input    {b.describe()}",
             f"  strategy {k.strategy.value}, " + (f"fused (statistics and normalize in one visit per unit)"
                                                  if la.fused else f"phased ({la.n_parts} parts per group, "
                                                  "merged with Chan's formula, then normalize)"),
             _parallel(plan),
             "  loop dims (outer -> inner, after coalescing):"]
    arrays = [a for a, _ in la.strides]
    for i, d in enumerate(k.dims):
        role = "kept" if d.kept else "reduced"
        where = ("group" if i in k.groups else "row" if i in k.rows else
                 "inner" if i == k.inner else "tail" if i == k.tail else "?")
        strides = " ".join(f"{a}:{la.stride(a)[i]}" for a in arrays)
        lines.append(f"    {d.name:<14} {role:<8} {where:<6} size {la.sizes[i]:<8} strides {strides}")
    lines.append("  loop nest:")
    lines.extend("    " + line for line in loop_nest(plan))
    return "\n".join(lines)


def _parallel(plan: Plan) -> str:
    la = plan.launch
    if plan.kernel.target != "cuda":
        return f"  parallel {la.n_blocks} blocks over {la.threads} thread(s)"
    grid, bx, by, tpu = la.gpu
    who = ("a warp" if tpu == 32 else f"{tpu} threads") if plan.kernel.strategy is Strategy.ROWS else \
        f"a {bx}x{by} tile of threads"
    return (f"  grid     {grid} blocks of {bx * by} threads ({bx}x{by}); {who} per unit of work"
            + (f"; {la.n_parts} parts per group, merged by a second kernel" if la.n_parts > 1 else ""))


def loop_nest(plan: Plan) -> list[str]:
    k, la = plan.kernel, plan.launch
    g = ", ".join(k.dims[i].label for i in k.groups) or "(one group)"
    r = ", ".join(k.dims[i].label for i in k.rows)
    inner = k.dims[k.inner].label
    out = []
    if k.strategy is Strategy.ROWS:
        out.append(f"for unit in parallel(groups {g}{' x parts' if not la.fused else ''}):")
        if r:
            out.append(f"  for row in rows({r}):")
        out.append(f"    for chunk in segments({inner}, {la.seg}):   # exact two-pass in cache, Chan merge")
        out.append("      moments += chunk")
        out.append("  finalize mean, rstd")
        out.append(f"  for row, chunk again: y = (x - mean) * rstd * weight + bias   # contiguous over {inner}")
    else:
        tail = f" x {k.dims[k.tail].label}" if k.tail is not None else ""
        out.append(f"for unit in parallel(groups {g} x column segments of {la.seg}"
                   f"{' x row parts' if not la.fused else ''}):")
        out.append(f"  for chunk in blocks of {la.row_chunk} rows ({r}):   # exact two-pass per column, Chan merge")
        out.append(f"    for row in chunk: acc[column] += x[row, column{tail}]   # contiguous over {inner}")
        out.append("  finalize mean, rstd per column")
        out.append("  for row: y[row, column] = (x - mean[column]) * rstd[column] * weight + bias")
    return out
