"""The `normgen` command line.

    normgen list                         bundled specs
    normgen show SPEC                    a spec: axes, kept and reduced sets, parameters
    normgen plan SPEC --shape 32,128,56,56 [--layout channels_last] [--backward]
                     [--target cuda [--device h100] [--json]]
    normgen generate SPEC|--reference [-o DIR]   readable generated sources
    normgen check SPEC|--all             compare the kernels with the NumPy oracle
    normgen cache info|clear
    normgen --version

SPEC is a bundled name (see `normgen list`) or a path to a .toml spec file. User errors
(a bad spec, a bad shape, a missing argument) print a message and exit with status 2;
a failed check exits with status 1. Values are checked before any work starts
(cli_args.py): shapes, strides, call-time sizes, dtypes the target runs, output folders.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__, cli_args
from .errors import NormgenError


def _op(spec: str):
    from .op.op import load

    return load(spec)


def cmd_list(args: argparse.Namespace) -> int:
    from .spec.library import bundled_names, find_spec

    for name in bundled_names():
        spec = find_spec(name)
        print(f"{name:<24} {spec.doc}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    op = _op(args.spec)
    spec = op.spec
    print(f"{spec.name}  ({spec.source})")
    if spec.doc:
        print(f"  {spec.doc}")
    print(f"  input      {spec.input}")
    for i, kept in enumerate(spec.kept):
        reduced = [a for a in spec.axis_names if a not in kept]
        tag = "kept" if not spec.is_mixture else f"kept[{i}]"
        print(f"  {tag:<10} {spec.axes_str(kept) or '(none: one statistic)'}   reduced: {spec.axes_str(tuple(reduced))}")
    print(f"  center     {spec.center.value}")
    print(f"  scale      {spec.scale.value}, eps {spec.eps}")
    if spec.affine:
        offset = f" (effective weight: weight + {spec.affine.weight_offset:g})" if spec.affine.weight_offset else ""
        print(f"  affine     {', '.join(spec.affine.params)} over '{spec.affine.axes}'{offset}")
    if spec.running:
        print(f"  running    over '{spec.axes_str(spec.running.axes)}', momentum {spec.running.momentum}")
    if spec.sizes:
        print("  call sizes " + ", ".join(f"{v}= gives {k}" if isinstance(v, str) else f"{k} = {v}"
                                          for k, v in spec.sizes))
    if spec.is_mixture:
        print(f"  mixture    softmax(mean_weight), softmax(var_weight) over {len(spec.kept)} components")
    _show_fuse(spec)
    return 0


def _device(args: argparse.Namespace):
    """The GPU to plan for: --device (a profile name), else the GPU CuPy sees, else the default profile."""
    from .plan.device import DEFAULT_PROFILE, profile

    if args.target != "cuda":
        if args.device:
            raise NormgenError("--device is for --target cuda", allowed="--target cuda --device PROFILE")
        return None
    if args.device:
        profile(args.device)  # an unknown name is a user error
        return args.device
    from .runtime.cuda import cupy_device

    gpu = cupy_device()
    return gpu.profile if gpu is not None else DEFAULT_PROFILE


def _show_fuse(spec) -> None:
    from .spec.derive import derivative

    f = spec.fuse
    if f is None:
        return
    if f.prologue is not None:
        print(f"  prologue   h = {f.prologue}" + ("   (returned as fwd.prologue)" if f.keep_prologue else ""))
        for name in ("x",) + f.prologue_inputs:
            print(f"             dh/d{name} = {derivative(f.prologue, name)}")
    if f.epilogue is not None:
        print(f"  epilogue   out = {f.epilogue}")
        for name in ("y",) + f.epilogue_inputs:
            print(f"             dout/d{name} = {derivative(f.epilogue, name)}")
    if f.extras:
        print(f"  extras     {', '.join(f.extras)} (arrays shaped like x, passed by name)")
    if f.quantize:
        print(f"  quantize   {f.quantize}, one float32 scale per kept index (fwd.scale); forward only")


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from .layouts import layout_strides
    from .plan.describe import describe_plan
    from .plan.traffic import plan_json

    if args.json and args.target != "cuda":
        raise NormgenError("--json describes CUDA plans: add --target cuda", allowed="--json with --target cuda")
    op = _op(args.spec)
    sizes = cli_args.call_sizes(op.spec, args.size)
    cli_args.target_dtype(args.dtype, args.target)
    shape = args.shape
    strides, copied = cli_args.call_strides(shape, args.strides or layout_strides(shape, args.layout))
    plan = op.plan(shape, strides=strides, dtype=args.dtype, direction="backward" if args.backward else "forward",
                   params=not args.no_params, target=args.target, device=_device(args), **sizes)
    if args.eval and not plan.eval_steps:
        raise NormgenError(f"{op.name}: --eval plans a forward call with running statistics, and this "
                           f"{plan.kernel.direction.value} plan has none",
                           allowed="--eval without --backward, for a spec with [running] statistics")
    if args.json:
        out = plan_json(plan, evaluation=args.eval)
        print(json.dumps(out if copied is None else {"copied": copied, **out}))
    else:
        print(describe_plan(plan) if copied is None else f"copy     {copied}\n{describe_plan(plan)}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .codegen import generate
    from .paths import repo_root
    from .progress import Progress

    if args.reference and (args.spec or args.shape):
        raise NormgenError("generate --reference writes the reference plans of every bundled spec; it takes no "
                           "SPEC or --shape", allowed="generate SPEC --shape ..., or generate --reference")
    if not args.reference and (not args.spec or not args.shape):
        raise NormgenError("generate needs SPEC and --shape (or --reference for the bundled reference plans)",
                           allowed="generate SPEC --shape N,C,..., or generate --reference")
    progress = Progress(enabled=not args.quiet)
    progress.update("generate: rendering " + ("the reference plans of the bundled specs" if args.reference
                                              else "the plans"), force=True)
    try:
        if args.reference:
            root = repo_root()
            outdir = args.output or (root / "generated" if root else Path("generated"))
            files = generate.all_reference_sources()
        else:
            outdir = args.output or "."
            op = _op(args.spec)
            sizes = cli_args.call_sizes(op.spec, args.size)
            files = generate.sources(op, args.shape, layout=args.layout,
                                     dtype=cli_args.target_dtype(args.dtype, args.target), sizes=sizes,
                                     target=args.target, device=_device(args))
        outdir = cli_args.output_dir(outdir)  # everything is rendered before anything is written
        progress.update(f"generate: writing {len(files)} files to {outdir}", force=True)
        try:
            for path, written in generate.write(outdir, files):
                progress.print(f"{'wrote    ' if written else 'unchanged'} {path}")
        except OSError as e:
            raise NormgenError(f"-o {outdir}: cannot write {e.filename} ({e.strerror})",
                               allowed="a folder you can write to") from None
    finally:
        progress.close()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .layouts import LAYOUTS
    from .progress import Progress
    from .spec.library import bundled_names
    from .verify import session
    from .verify.check import CUDA_DTYPES, DTYPES, TOLERANCE

    if args.all and args.spec:
        raise NormgenError(f"check got both --all and the spec {args.spec!r}",
                           allowed="check SPEC (one spec), or check --all (every bundled spec)")
    names = bundled_names() if args.all else [args.spec] if args.spec else []
    if not names:
        raise NormgenError("check needs SPEC or --all", allowed="check SPEC, or check --all")
    layouts = tuple(dict.fromkeys(args.layout)) if args.layout else LAYOUTS
    supported = cli_args.backend_dtypes(args.target)
    dtypes = tuple(dict.fromkeys(args.dtype)) if args.dtype else \
        tuple(d for d in (CUDA_DTYPES if args.target == "cuda" else DTYPES) if d in supported)
    for d in dtypes:
        cli_args.target_dtype(d, args.target)
    ops = [_op(name) for name in names]
    progress = Progress(enabled=not args.quiet)
    if args.target == "cuda":
        print(_cuda_runner_note(), flush=True)
    header = f"{'spec':<24} {'checks':>6} {'failed':>6}  {'max error fwd':>13}  {'max error bwd':>13}  {'time':>6}"
    totals = {"failed": 0, "checks": 0, "of": 0}

    def result(r) -> None:
        if args.verbose:
            key, val = r.worst
            progress.print(f"  {'ok  ' if r.ok else 'FAIL'} {r.case:<28} {r.layout:<14} {r.dtype:<8} {r.mode:<5} "
                           f"{r.plan:<16} worst {key}={val:.1e}" + (f"  {r.error}" if r.error else ""))

    def spec_done(planned, results, seconds) -> None:
        failed = [r for r in results if not r.ok]
        fwd = max((v for r in results for k, v in r.errors.items() if not k.startswith("d")), default=0.0)
        bwd = max((v for r in results for k, v in r.errors.items() if k.startswith("d")), default=0.0)
        progress.print(f"{planned.op.name:<24} {len(results):>6} {len(failed):>6}  {fwd:>13.2e}  {bwd:>13.2e}  "
                       f"{seconds:>5.1f}s" + ("  FAILED" if failed else ""))
        for r in failed[: args.show_failures]:
            key, val = r.worst
            progress.print(f"    FAIL {r.case} {r.layout} {r.dtype} {r.mode} {r.plan}: "
                           + (r.error or f"{key} = {val:.2e} > {r.tol:.0e}"))
        totals["failed"] += len(failed)
        totals["checks"] += len(results)
        totals["of"] += planned.of

    progress.print(header)
    try:
        session.run(ops, layouts=layouts, dtypes=dtypes, whole=args.full, target=args.target, jobs=args.jobs,
                    show=progress.update, on_result=result, on_spec=spec_done)
    finally:
        progress.close()
    total_fail = totals["failed"]
    part = "" if totals["checks"] == totals["of"] else \
        f"; {totals['checks']} of the {totals['of']} checks of the full matrix, --full runs all"
    print(f"{'all' if args.all else names[0]}: {'OK' if not total_fail else f'{total_fail} FAILED'} "
          f"(errors are max |kernel - oracle| / max(1, max |oracle|); tolerance "
          + ", ".join(f"{d} {TOLERANCE[d]:.0e}" for d in dtypes)
          + f"{part}; {time.perf_counter() - progress.start:.0f}s)")
    return 1 if total_fail else 0


def _cuda_runner_note() -> str:
    from .runtime import cuda

    where = cuda.device_name()
    return f"CUDA kernels run on: {where}"


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.command import bench

    return bench(args)


def cmd_cache(args: argparse.Namespace) -> int:
    from .runtime import cache

    if args.action == "info":
        info = cache.info()
        print(f"cache dir {info['dir']}\n  modules  {info['modules']}\n  size     {info['bytes'] / 1e6:.1f} MB")
    else:
        n = cache.clear()
        print(f"removed {n} module(s) from {cache.cache_dir()}")
    return 0


#: every dtype a kernel of some target runs; a command refuses those its --target does not run
DTYPES = ("float32", "float64", "float16", "bfloat16")


def parser() -> argparse.ArgumentParser:
    from .layouts import LAYOUTS

    p = argparse.ArgumentParser(prog="normgen", description="A compiler for normalization layers.")
    p.add_argument("--version", action="version", version=f"normgen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="list the bundled specs").set_defaults(fn=cmd_list)

    s = sub.add_parser("show", help="describe a spec")
    s.add_argument("spec", help="a bundled spec name or a path to a .toml file")
    s.set_defaults(fn=cmd_show)

    def shape_args(s: argparse.ArgumentParser, required: bool) -> None:
        s.add_argument("--shape", type=cli_args.shape, required=required,
                       help="shape of x, e.g. 32,128,56,56 (every dimension >= 1)")
        s.add_argument("--layout", default="contiguous", choices=LAYOUTS, help="memory layout of x")
        s.add_argument("--dtype", default="float32", choices=DTYPES,
                       help="dtype of x (a --target that does not run it says which it runs)")
        s.add_argument("--target", default="cpu", choices=("cpu", "cuda"), help="CPU (Numba) or CUDA kernels")
        s.add_argument("--size", type=cli_args.size, action="append", default=[], metavar="NAME=VALUE",
                       help="a call-time size, e.g. num_groups=32 or normalized_shape=1024 (repeatable)")
        s.add_argument("--device", metavar="PROFILE",
                       help="with --target cuda: plan for this GPU (h100, h200, a100, l40s, rtx4090; default: the "
                            "GPU present, else h100)")

    s = sub.add_parser("plan", help="print the loop nest the planner chooses")
    s.add_argument("spec")
    shape_args(s, required=True)
    s.add_argument("--strides", type=cli_args.strides,
                   help="element strides of x, e.g. 1,4 (overrides --layout; write --strides=-4,1 for a negative "
                        "first stride: a call copies such an input, and the plan is the copy's)")
    s.add_argument("--backward", action="store_true", help="plan the backward pass")
    s.add_argument("--no-params", action="store_true", help="plan a call without weight and bias")
    s.add_argument("--eval", action="store_true", help="the steps of an evaluation call (running statistics)")
    s.add_argument("--json", action="store_true",
                   help="with --target cuda: the kernels, their launches and modeled DRAM traffic as JSON")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("generate", help="write readable generated sources")
    s.add_argument("spec", nargs="?")
    shape_args(s, required=False)
    s.add_argument("-o", "--output", help="output folder (default: . ; generated/ with --reference)")
    s.add_argument("--reference", action="store_true", help="the reference plans of every bundled spec")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("check", help="compare generated kernels with the NumPy oracle")
    s.add_argument("spec", nargs="?")
    s.add_argument("--all", action="store_true", help="every bundled spec")
    s.add_argument("--layout", action="append", choices=LAYOUTS, help="only these layouts (repeatable)")
    s.add_argument("--dtype", action="append", choices=DTYPES,
                   help="only these dtypes (default: float32, float64; with --target cuda also float16, "
                        "bfloat16; both backends take all four)")
    s.add_argument("--target", default="cpu", choices=("cpu", "cuda"),
                   help="cpu: the Numba kernels; cuda: the CUDA kernels (on the GPU, or on the CPU emulator "
                        "when there is none)")
    s.add_argument("--full", action="store_true",
                   help="every case x layout x dtype x mode (default: a representative part that checks each "
                        "layout, dtype, mode, case and kernel entry point of every strategy at least once)")
    s.add_argument("-j", "--jobs", type=cli_args.count(1), help="processes that compile kernels (default: every CPU)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.add_argument("-v", "--verbose", action="store_true", help="one line per check")
    s.add_argument("--show-failures", type=cli_args.count(0), default=10, help="failures to detail per spec")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("bench", help="time kernels against PyTorch, NumPy and a copy of the same bytes")
    s.add_argument("--spec", action="append", help="only cases of this spec (repeatable)")
    s.add_argument("--case", action="append", help="only cases whose name contains this (repeatable)")
    shape_args(s, required=False)
    s.add_argument("--eval", action="store_true", help="with --shape: evaluation mode (running statistics)")
    s.add_argument("--threads", type=cli_args.count(1), help="threads for normgen and PyTorch (default: all CPUs)")
    s.add_argument("--repeat", type=cli_args.count(1), default=15, help="timed runs per provider (median reported)")
    s.add_argument("--warmup", type=cli_args.count(0), default=3, help="untimed runs first")
    s.add_argument("--forward", action="store_true", help="forward only")
    s.add_argument("--backward", action="store_true", help="backward only")
    s.add_argument("--no-out", action="store_true", help="skip the out= runs")
    s.add_argument("--providers", help="comma-separated (default: normgen,torch,numpy,copy on cpu; "
                   "normgen,torch,compile,copy on cuda, compile: torch.compile)")
    s.add_argument("--compile-budget", type=cli_args.seconds, default=90.0,
                   help="cuda: seconds of torch.compile compiling, after which cases run without it")
    s.add_argument("--json", nargs="?", const="", help="save results (default bench/results/TARGET-DATE.json)")
    s.add_argument("--plot", help="draw GB/s per provider to this PNG")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    s.add_argument("--fused", action="store_true",
                   help="fused specs (add_rms_norm, group_norm_silu) against PyTorch eager and torch.compile")
    s.add_argument("--memory", action="store_true",
                   help="resident memory (peak, held after) against PyTorch, each loop in a fresh process")
    s.add_argument("--calls", type=cli_args.count(1), help="with --memory: calls per loop (default 50 training, "
                   "400 inference); with --small: calls per timed block (default 20)")
    s.add_argument("--small", action="store_true",
                   help="µs per call of small calls (normgen.ops, normgen.torch modules with and without grad, "
                        "torch.compile) against PyTorch")
    s.add_argument("--paths", help="with --small: comma-separated subset of ops,module,module+grad,compiled")
    s.add_argument("--interleaved", action="store_true",
                   help="layer_norm and group_norm alone and between PyTorch ops (forward, backward), busy cores")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("cache", help="inspect or clear the kernel cache")
    s.add_argument("action", choices=("info", "clear"))
    s.set_defaults(fn=cmd_cache)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    if argv is not None and any("\0" in a for a in argv):  # only in-process: an OS argv cannot hold NUL
        p.error("an argument holds a NUL character; expected text without NUL (as any command line has)")
    args, extra = p.parse_known_args(argv)
    if extra:  # argparse's own message names them under the top-level usage: say it under the command's
        (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(map(repr, extra))}; allowed: the "
                                        f"arguments in the usage line above (normgen {args.command} -h)")
    try:
        return args.fn(args)
    except NormgenError as e:
        print(f"normgen: error: {e}" if e.location is None else f"normgen: error in {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("normgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
