"""`normgen bench`: the benchmark modes behind the command line (normgen/cli.py parses the
options): the reference cases or one --shape on the CPU or a GPU, and --fused, --small,
--interleaved, --memory. Every mode times normgen against a baseline measured in the same
run (PyTorch, a copy of the same bytes) and can save its results as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import cli_args
from ..errors import NormgenError
from ..op.op import load


def bench(args: argparse.Namespace) -> int:
    """`normgen bench`: the mode the options name, else the reference cases (or one --shape)."""
    import os

    # --small and --interleaved measure what a user's process does: OpenMP's settings as they are
    if args.small:
        return _bench_small(args)
    if args.interleaved:
        return _bench_interleaved(args)
    # PyTorch's OpenMP workers spin after every call by default, taking the cores from
    # whichever provider runs next; waiting passively leaves PyTorch's own times unchanged.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..progress import Progress
    from . import cpu as bench
    from . import cuda as bench_gpu

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:  # what a run writes when it is done: checked before it starts
            cli_args.output_file(path, option)
    if args.memory:
        return _bench_memory(args)
    cli_args.target_dtype(args.dtype, args.target)
    if args.fused:
        return _bench_fused(args)
    every_provider = bench_gpu.PROVIDERS if args.target == "cuda" else ("normgen", "torch", "numpy", "copy")
    providers = tuple(p.strip() for p in args.providers.split(",")) if args.providers else every_provider
    if "normgen" not in providers or not set(providers) <= set(every_provider):
        raise NormgenError(f"--providers {args.providers}: expected normgen and any of the others, each known on "
                           f"--target {args.target}", allowed=", ".join(every_provider))
    if args.plot and args.target == "cpu" and not (args.memory or args.fused):
        _require_matplotlib()
    if args.device and args.target != "cuda":
        raise NormgenError("--device is for --target cuda", allowed="--target cuda --device PROFILE")
    if args.eval and not args.shape:
        raise NormgenError("bench --eval times one --shape in evaluation mode", allowed="--eval with --shape")
    if args.target == "cuda":
        bench_gpu.require_gpu()
        if args.device:
            bench_gpu.plan_for(args.device)
    if args.shape:
        if len(args.spec or []) != 1:
            raise NormgenError("bench --shape needs exactly one --spec", allowed="--spec SPEC --shape N,C,...")
        op = load(args.spec[0])  # a bad name or size is an error before anything compiles
        sizes = cli_args.call_sizes(op.spec, args.size)
        if args.eval and op.spec.running is None:
            raise NormgenError(f"bench --eval: {op.name} has no running statistics to evaluate with",
                               allowed="--eval for a spec with [running] statistics (batch_norm, instance_norm)")
        cases = [bench.Case(f"{args.spec[0]} {list(args.shape)} {args.layout}", args.spec[0], args.shape,
                            args.layout, tuple(sizes.items()), "eval" if args.eval else "train")]
    else:
        if args.size:
            raise NormgenError("--size gives the call-time sizes of a --shape", allowed="--size with --shape")
        every = bench_gpu.gpu_cases() if args.target == "cuda" else bench.reference_cases()
        cases = [c for c in every
                 if (not args.spec or c.spec in args.spec) and (not args.case or any(k in c.name for k in args.case))]
        if not cases:
            raise NormgenError("no benchmark case matches the --spec and --case given",
                               allowed="--spec " + ", ".join(sorted({c.spec for c in every})) + "; --case a part of "
                               "a case name, e.g. " + every[0].name)
    directions = ("forward",) if args.forward else ("backward",) if args.backward else ("forward", "backward")
    with_out = (False,) if args.no_out or args.target == "cuda" else (False, True)
    if args.target == "cuda":
        from ..runtime.cuda import device_name

        where = device_name()
    else:
        where = "CPU"
    print(f"normgen bench: {len(cases)} case(s) on {where}, {args.dtype}, median of {args.repeat} after "
          f"{args.warmup} warm-up runs, providers interleaved"
          + (", L2 flushed before every timed call" if args.target == "cuda" else ""), flush=True)
    results = []
    status = Progress(enabled=not args.quiet)
    save = _bench_saver(args, where)

    def progress(m) -> None:
        results.append(m)
        vs = m.ratio("normgen", "torch")
        copy = m.gbps["normgen"] / m.gbps["copy"] if "copy" in m.gbps else float("nan")
        status.print(f"  {m.case:<38} {m.direction:<8} out={'yes' if m.with_out else 'no ':<3} normgen "
                     f"{m.ms['normgen']:8.3f} ms {m.gbps['normgen']:6.1f} GB/s  x torch {vs:5.2f}  of copy {copy:4.0%}")
        if args.target == "cuda":  # what a time limit interrupts is kept
            save(results, quiet=True)

    try:
        if args.target == "cuda":  # one call: torch.compile's compile budget spans the cases
            status.update(f"bench: {len(cases)} case(s) on the GPU: compile, warm up, time", force=True)
            bench_gpu.run_cases(cases, directions=directions, dtype=args.dtype, repeat=args.repeat,
                                warmup=args.warmup, providers=providers, compile_budget_s=args.compile_budget,
                                progress=progress)
        else:
            for i, case in enumerate(cases, 1):  # one case at a time, so that the status line can name it
                status.update(f"bench {case.name} ({i}/{len(cases)}): compile, warm up, time", force=True)
                bench.run_cases([case], directions=directions, dtype=args.dtype, threads=args.threads,
                                repeat=args.repeat, warmup=args.warmup, providers=providers, with_out=with_out,
                                progress=progress)
    finally:
        status.close()
    print()
    print(bench_gpu.table(results) if args.target == "cuda" else bench.table(results))
    save(results)
    return 0


def _bench_fused_cuda(args: argparse.Namespace) -> int:
    """`normgen bench --target cuda --fused`: the fused CUDA kernels on a GPU (bench/fused_cuda.py)."""
    from ..runtime.cuda import device_name
    from . import fused_cuda

    directions = ("forward",) if args.forward else ("train",) if args.backward else ("forward", "train")
    results = fused_cuda.run(directions, args.dtype, args.repeat, args.warmup,
                             progress=lambda r: print(f"  {r.case:<36} {r.direction:<7} " + "  ".join(
                                 f"{k} {v:.3f} ms" for k, v in r.ms.items()), flush=True))
    print(f"\nnormgen bench --target cuda --fused on {device_name()}: {args.dtype}, median of {args.repeat} after "
          f"{args.warmup} warm-up runs, L2 flushed before every timed call (train = forward + backward)")
    print(fused_cuda.table(results))
    _save_mode_json(args, "fused-cuda", {"gpu": device_name(), "dtype": args.dtype, "repeat": args.repeat,
                                         "results": [vars(r) for r in results]})
    return 0


def _require_matplotlib() -> None:
    """--plot on the CPU draws with matplotlib: say so before the benchmark runs, not after."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NormgenError("--plot draws with matplotlib, which is not installed",
                           allowed="pip install 'normgen[bench]' (or matplotlib), or leave out --plot") from None


def _bench_fused(args: argparse.Namespace) -> int:
    """`normgen bench --fused`: fused specs against PyTorch eager and torch.compile (bench/fused.py)."""
    from ..runtime import threads as cpu
    from . import fused

    if args.target == "cuda":
        return _bench_fused_cuda(args)
    if args.threads:
        cpu.set_num_threads(args.threads)
    directions = ("forward",) if args.forward else ("train",) if args.backward else ("forward", "train")
    print(f"normgen bench --fused: {args.dtype}, {cpu.threads()} threads, median of {args.repeat} after {args.warmup} "
          "warm-up runs, providers interleaved (train = forward + backward)", flush=True)
    results = fused.run(directions, args.dtype, args.repeat, args.warmup,
                        progress=lambda r: print(f"  {r.case:<36} {r.direction:<7} " + "  ".join(
                            f"{k} {v:.2f} ms" for k, v in r.ms.items()), flush=True))
    print()
    print(fused.table(results))
    _save_mode_json(args, "fused", {"threads": cpu.threads(), "dtype": args.dtype, "repeat": args.repeat,
                                    "results": [vars(r) for r in results]})
    return 0


def _bench_small(args: argparse.Namespace) -> int:
    """`normgen bench --small`: µs per call of small calls against PyTorch (bench/small.py)."""
    from ..runtime import threads as cpu
    from . import small

    _cpu_only(args, "--small")
    paths = tuple(args.paths.split(",")) if args.paths else small.PATHS
    unknown = [p for p in paths if p not in small.PATHS]
    if unknown:
        raise NormgenError(f"bench --small: unknown path(s) {', '.join(unknown)}", allowed=", ".join(small.PATHS))
    rounds = args.repeat if args.repeat != 15 else 40  # (15: the parser's default, for the other modes)
    print(f"normgen bench --small: {args.dtype}, {cpu.threads()} threads, µs per call: median of {rounds} rounds "
          f"of {args.calls or 20} calls, providers interleaved; ng/torch = normgen's time over PyTorch's", flush=True)
    results = small.run(paths, args.dtype, rounds=rounds, inner=args.calls or 20, only=args.case,
                        progress=lambda r: print(f"  {r.case:<30} {r.path:<12} normgen {r.us['normgen']:9.1f} µs  "
                                                 f"torch {r.us['torch']:9.1f} µs  {r.ratio:5.2f}x", flush=True))
    print()
    print(small.table(results))
    _save_mode_json(args, "small", {"threads": cpu.threads(), "dtype": args.dtype, "rounds": rounds,
                                    "calls": args.calls or 20, "results": [vars(r) for r in results]})
    return 0


def _bench_interleaved(args: argparse.Namespace) -> int:
    """`normgen bench --interleaved`: alone against between PyTorch ops (bench/interleaved.py)."""
    import os

    from ..runtime import threads as cpu
    from . import interleaved

    _cpu_only(args, "--interleaved")
    directions = ("forward",) if args.forward else ("backward",) if args.backward else ("forward", "backward")
    print(f"normgen bench --interleaved: float32, {cpu.threads()} threads, median of {args.repeat}; interleaved: a "
          "torch GELU before every timed call; ratio = interleaved / alone; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}", flush=True)
    results = interleaved.run(directions, args.repeat, args.warmup, only=args.case,
                              progress=lambda r: print(f"  {r.case:<30} {r.direction:<8} normgen "
                                                       f"{r.slowdown('normgen'):5.2f}x  torch "
                                                       f"{r.slowdown('torch'):5.2f}x", flush=True))
    print()
    print(interleaved.table(results))
    _save_mode_json(args, "interleaved", {"threads": cpu.threads(), "repeat": args.repeat,
                                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                          "results": [vars(r) for r in results]})
    return 0


def _cpu_only(args: argparse.Namespace, mode: str) -> None:
    from ..runtime import threads as cpu

    if args.target != "cpu":
        raise NormgenError(f"bench {mode} runs on the CPU (got --target {args.target})")
    if args.threads:
        cpu.set_num_threads(args.threads)
    import torch

    torch.set_num_threads(cpu.threads())


def _save_mode_json(args: argparse.Namespace, mode: str, data: dict) -> None:
    """--json: bench/results/MODE-DATE.json (or the path given), with the machine it ran on."""
    import datetime
    import json

    from ..paths import repo_root
    from .cpu import machine

    if args.json is None:
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(args.json) if args.json else (repo_root() or Path(".")) / "bench" / "results" / f"{mode}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **data}, indent=1))
    print(f"wrote {path}")


def _bench_memory(args: argparse.Namespace) -> int:
    """`normgen bench --memory`: resident memory against PyTorch, one fresh process per run."""
    from . import memory

    specs = tuple(args.spec or memory.SPECS)
    bad = [s for s in specs if s not in memory.SPECS]
    if bad or args.target != "cpu":
        raise NormgenError(f"bench --memory measures CPU processes of {', '.join(memory.SPECS)}; got "
                           f"{', '.join(bad) or '--target ' + args.target}", allowed=", ".join(memory.SPECS))
    print(f"normgen bench --memory: {len(specs)} spec(s) x {len(memory.LOOPS)} loops x "
          f"{len(memory.PROVIDERS)} providers, each in a fresh process", flush=True)
    rows = memory.run_all(specs, calls=args.calls, progress=lambda r: print(
        f"  {r['spec']:<11} {r['loop']:<5} {r['provider']:<13} peak {r['peak_mib']:6.0f} MiB  "
        f"held {r['held_mib']:6.0f} MiB", flush=True))
    print()
    print(memory.table(rows))
    steady = memory.run_steady(specs)
    print()
    print("fixed shapes, both providers interleaved in one process (steady state):")
    print(memory.steady_table(steady))
    _save_mode_json(args, "memory", {"runs": rows, "steady": steady})
    return 0


def _bench_saver(args: argparse.Namespace, where: str):
    """save(results): the JSON (--json) and the plot (--plot) of a benchmark run."""
    import datetime

    from ..paths import repo_root
    from ..runtime import threads as cpu
    from . import cpu as bench
    from . import cuda as bench_gpu

    path = None
    if args.json is not None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(args.json) if args.json else (repo_root() or Path(".")) / "bench" / "results" / \
            f"{args.target}-{stamp}.json"
    extra = {"dtype": args.dtype, "repeat": args.repeat, "target": args.target}
    extra.update({"gpu": where} if args.target == "cuda" else {"threads": cpu.threads()})

    def save(results, quiet: bool = False) -> None:
        if path is not None:
            bench.save_json(results, path, extra)
        if args.plot and args.target == "cuda":
            bench_gpu.plot(results, Path(args.plot), f"{where}, {args.dtype}")
        elif args.plot and not quiet:
            bench.plot(results, Path(args.plot))
        if not quiet:
            print("".join(f"wrote {p}\n" for p in (path, args.plot) if p), end="")
    return save
