"""Kernel entry points and their arguments: the one table the templates and the backends share.

Templates print each entry point's signature from here (`signature`), and the backends
pass arguments by name, ordered from here (`order`), so an argument added, removed or
moved is changed in one place. An argument may belong to one target only (the CPU's
per-block parameter gradients and scratch memory; the GPU's per-group sums), or to one
strategy (the columns kernels' scratch).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plan.model import Direction, HSource, Kernel, Strategy, extra_array, extra_grad


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # a key of CUDA_TYPES
    target: str | None = None  # only on this target
    columns_only: bool = False  # only in columns kernels
    fused_only: bool = False  # only in kernels of fused plans (the name "@in"/"@out": the fused arrays)
    fused_too: bool = False  # a columns_only argument that fused rows kernels take too


#: the C type of each kind of argument (T: storage type, CT: compute/statistics type)
CUDA_TYPES = {
    "in": "const T* __restrict__", "out": "T* __restrict__",
    "stat_in": "const CT* __restrict__", "stat_out": "CT* __restrict__",
    "f64_in": "const double* __restrict__", "f64_out": "double* __restrict__",
    "geometry": "const long long* __restrict__", "f64": "const double", "i64": "const long long",
}

_X, _DY = Arg("x", "in"), Arg("dy", "in")
_W, _B = Arg("weight", "in"), Arg("bias", "in")
# a fused plan's x-like arrays (plan/model.py ARRAYS): read ("@in": extra inputs; backward: h or y, dh)
# and written ("@out": forward h; backward the extras' gradients); the backward also needs the bias
_FIN, _FOUT, _FB = Arg("@in", "in", fused_only=True), Arg("@out", "out", fused_only=True), \
    Arg("bias", "in", fused_only=True)
_QSCALE = Arg("qscale", "stat_out", fused_only=True)  # a quantized output's scale per group
_G = Arg("g", "geometry")
_CPU_BLOCKS = (Arg("blk_lo", "i64", "cpu"), Arg("blk_hi", "i64", "cpu"))
_SCRATCH = Arg("scratch", "f64_out", "cpu", True)  # float64 accumulators per block
_SCRATCH_DT = Arg("scratch_dt", "out", "cpu", True, fused_too=True)  # per-element constants, or h, in x's dtype
_DPARAMS = Arg("dparams", "f64_out", "cpu")  # per-block parameter gradients [blocks, 2, n_param]

#: every entry point, its arguments in order
ENTRIES: dict[str, tuple[Arg, ...]] = {
    "forward_fused": (_X, _FIN, Arg("y", "out"), _FOUT, _W, _B, Arg("moments", "f64_out"),
                      Arg("kstats", "stat_out"), _QSCALE, _SCRATCH, _SCRATCH_DT, _G, Arg("eps", "f64"), *_CPU_BLOCKS),
    "forward_partial": (_X, _FIN, _FOUT, Arg("moments", "f64_out"), _SCRATCH,
                        Arg("scratch_dt", "out", "cpu", fused_only=True), _G, *_CPU_BLOCKS),
    "forward_apply": (_X, _FIN, Arg("y", "out"), _FOUT, _W, _B, Arg("kstats", "stat_in"), _SCRATCH_DT, _G,
                      *_CPU_BLOCKS),
    "backward_fused": (_X, _FIN, _DY, Arg("dx", "out"), _FOUT, _W, _FB, Arg("kstats", "stat_in"),
                       Arg("sums", "f64_out", "cuda"), _DPARAMS, _SCRATCH, _SCRATCH_DT, _G, *_CPU_BLOCKS),
    "backward_partial": (_X, _FIN, _DY, _W, _FB, Arg("kstats", "stat_in"), Arg("sums", "f64_out"),
                         Arg("pgrad", "f64_out", "cuda", True), _DPARAMS, _SCRATCH, _G, *_CPU_BLOCKS),
    "backward_apply": (_X, _FIN, _DY, Arg("dx", "out"), _FOUT, _W, _FB, Arg("kstats", "stat_in"),
                       Arg("coef", "stat_in"), _SCRATCH, _SCRATCH_DT, _G, *_CPU_BLOCKS),
    # the GPU's parameter-gradient reduction and its merge kernels (a warp per group)
    "param_partial": (_X, _DY, Arg("kstats", "stat_in"), Arg("partial", "f64_out"), _G),
    "forward_merge": (Arg("parts", "f64_in"), Arg("moments", "f64_out"), Arg("kstats", "stat_out"),
                      Arg("n_groups", "i64"), Arg("n_parts", "i64"), Arg("eps", "f64")),
    "backward_merge": (Arg("sums", "f64_in"), Arg("kstats", "stat_in"), Arg("totals", "f64_out"),
                       Arg("coef", "stat_out"), Arg("n_groups", "i64"), Arg("n_parts", "i64"), Arg("count", "f64")),
}

#: what each entry point computes (for the headers of generated files)
ENTRY_DOC = {
    "forward_fused": "moments of each group, then normalize it (one unit per group)",
    "forward_partial": "moments of each part of each group (merged afterwards)",
    "forward_apply": "normalize with given statistics (merged parts, mixtures, running statistics)",
    "backward_fused": "sums of g and g·x̂ of each group, then dx (one unit per group)",
    "backward_partial": "sums of g and g·x̂ of each part of each group (added afterwards)",
    "backward_apply": "dx = c0·g + c1·(x - mean) + c2 with per-group coefficients",
    "param_partial": "the backward's parameter-gradient reduction: sums of dy·x̂ and dy per parameter index",
    "forward_merge": "a warp per group: merge the parts' moments (Chan), finalize",
    "backward_merge": "a warp per group: add the parts' sums, coefficients of dx",
}


def fused_arrays(kernel: Kernel) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A fused kernel's x-like arrays besides x, y, dy and dx: (read, written)."""
    f = kernel.fusion
    if f is None:
        return (), ()
    extras = tuple(extra_array(e) for e in f.extras)
    if kernel.direction is Direction.FORWARD:
        return extras, ("h",) if f.keep else ()
    source = ("h",) if f.h_from is HSource.STORED else ("y",) if f.h_from is HSource.FROM_Y else ()
    return source + extras + (("dh",) if f.dh else ()), tuple(extra_grad(e) for e in f.grads)


def arguments(kernel: Kernel, entry: str) -> tuple[Arg, ...]:
    """The arguments of `entry` in a kernel of this target and strategy, in order."""
    columns = kernel.strategy is Strategy.COLUMNS
    fused = kernel.fusion is not None
    reads, writes = fused_arrays(kernel)
    out: list[Arg] = []
    for a in ENTRIES[entry]:
        if (a.target is not None and a.target != kernel.target) or \
                (a.columns_only and not (columns or (a.fused_too and fused))) or (a.fused_only and not fused):
            continue
        if a.name == "qscale" and not (fused and kernel.fusion.quantize):
            continue
        if a.name in ("@in", "@out"):
            out.extend(Arg(n, a.kind) for n in (reads if a.name == "@in" else writes))
        else:
            out.append(a)
    return tuple(out)


def order(kernel: Kernel, entry: str, values: dict, skip: tuple[str, ...] = ()) -> tuple:
    """The values of `entry`'s arguments, by name, in the kernel's order (leaving out `skip`)."""
    return tuple(values[a.name] for a in arguments(kernel, entry) if a.name not in skip)


def signature(kernel: Kernel, entry: str) -> str:
    """The parameter list of `entry` as the target's language writes it."""
    args = arguments(kernel, entry)
    if kernel.target == "cuda":
        return ", ".join(f"{CUDA_TYPES[a.kind]} {a.name}" for a in args)
    return ", ".join(a.name for a in args)
