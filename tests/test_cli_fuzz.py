"""Fuzz the command line: argv drawn from the real parser's subcommands and options, with
hostile values (negative, zero and huge dims, unknown sizes, typos, bad paths, text where
numbers go), run in process. Every run exits 0 or 2, prints no traceback, and every exit 2
says what would have been accepted.

The work behind a valid command that takes minutes (timing kernels, checking them against
the oracle, measuring memory) is replaced by stubs: what is fuzzed is everything the CLI
does before and around it. plan, show, list, generate and cache run for real (generate
renders sources and writes them under a temporary folder; nothing compiles).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normgen import cli
from normgen.layouts import LAYOUTS
from normgen.plan.device import PROFILES
from normgen.spec.library import bundled_names

SPECS = bundled_names()
#: words that show a refusal says what it accepts (argparse's own included)
ACCEPTS = ("allowed:", "choose from", "expected", "required", "must be", "needs")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def mostly(valid: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Five in six draws from `valid`: a command whose every value is hostile stops at the first."""
    return st.integers(0, 5).flatmap(lambda i: bad if i == 0 else valid)


def int_list(lo: int, hi: int, min_size: int = 1) -> st.SearchStrategy[str]:
    return st.lists(st.integers(lo, hi), min_size=min_size, max_size=5).map(lambda xs: ",".join(map(str, xs)))


HOSTILE = st.one_of(st.sampled_from(["", " ", "-", "--", "nan", "inf", "1e309", "0x10", "☃", "a=b=c", "=", ",", "-1",
                                     "../", "/", "/proc/x/y", "NUL", "1,,2", "4,-3", "0", "3,0,2",
                                     "100000000000,100000000000", str(2 ** 64), "a\0b", "x" * 300]),
                    st.text(max_size=12))
COUNTS = mostly(st.integers(1, 3).map(str), st.sampled_from(["0", "-2", "10000000000000000000000", "1.5", "two"]))


def values(tmp) -> dict[str, st.SearchStrategy]:
    """A value strategy per option dest: mostly plausible, sometimes wrong."""
    bad_spec = tmp / "bad.toml"
    bad_spec.write_text('input = "N C *spatial"\nkept = "N K"\n')
    a_file = tmp / "a_file"
    a_file.write_text("x")
    spec = mostly(st.sampled_from(SPECS), st.sampled_from(["nope", str(bad_spec), str(tmp), str(tmp / "none.toml"),
                                                           "layer_norm.toml"]))
    sizes = st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["num_groups", "normalized_shape", "bogus"]),
                      mostly(int_list(1, 8), int_list(-3, 3, min_size=0)))
    good_path = st.sampled_from([str(tmp / "out"), str(tmp / "out" / "deeper"), str(tmp / "p.png"),
                                 str(tmp / "r.json")])
    path = mostly(good_path, st.sampled_from([str(a_file), str(a_file / "below"), "/proc/normgen_fuzz/x", str(tmp),
                                              str(tmp / ("x" * 300)), str(tmp / "a\0b")]))
    return {
        "spec": spec,
        "shape": mostly(int_list(1, 12), HOSTILE),
        "strides": mostly(int_list(-9, 9), HOSTILE),
        "size": mostly(sizes, HOSTILE),
        "layout": mostly(st.sampled_from(LAYOUTS), st.sampled_from(["channel_last", "Contiguous", ""])),
        "dtype": mostly(st.sampled_from(cli.DTYPES), st.sampled_from(["float8", "int8", "f32"])),
        "target": mostly(st.sampled_from(["cpu", "cpu", "cuda"]), st.sampled_from(["gpu", "CPU"])),
        "device": mostly(st.sampled_from(sorted(PROFILES)), st.sampled_from(["h800", ""])),
        "output": path, "plot": path, "json": path,
        "case": mostly(st.sampled_from(["layer_norm", "[8192,1024]", "row"]), st.sampled_from(["zzz", ""])),
        "providers": mostly(st.sampled_from(["normgen,torch", "normgen,numpy,copy"]),
                            st.sampled_from(["torch", "normgen,,copy", "normgen,compile", "x"])),
        "action": st.sampled_from(["info", "clear", "purge"]),
        "compile_budget": mostly(st.sampled_from(["0", "1.5"]), st.sampled_from(["-1", "nan", "inf", "x"])),
    }


def sizes_for(spec_name: str, shape: str) -> list[str]:
    """--size arguments that fit a bundled spec and a shape: the trailing dim for a variadic
    axis' shape, 1 for a split part (it divides every size)."""
    from normgen.op import load

    spec = load(spec_name).spec
    variadic = {item.names[0] for item in spec.input.items if item.variadic}
    last = shape.split(",")[-1]
    return [f"--size={a}={last if ax in variadic else 1}" for a, ax in spec.size_args.items()]


def shape_for(spec_name: str) -> st.SearchStrategy[str]:
    """Shapes of the rank a bundled spec's input takes (a variadic axis: one or two dims)."""
    from normgen.op import load

    items = load(spec_name).spec.input.items
    fixed = sum(not item.variadic for item in items)
    free = any(item.variadic for item in items)
    return st.integers(fixed + free, fixed + 2 * free).flatmap(lambda r: int_list(1, 12, min_size=r).filter(
        lambda t: t.count(",") + 1 == r))


def draw_argv(data, tmp) -> list[str]:
    commands = subcommands()
    name = data.draw(st.sampled_from(sorted(commands) + ["--version", "frobnicate", ""]), label="command")
    argv = [name]
    sub = commands.get(name)
    if sub is None:
        return argv
    vals = values(tmp)
    acts = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    opts = {a.dest: a for a in acts if a.option_strings}
    spec = None
    for a in acts:  # positionals, usually given
        if not a.option_strings and data.draw(st.integers(0, 5), label=f"give {a.dest}"):
            argv.append(data.draw(vals.get(a.dest, HOSTILE), label=a.dest))
            spec = argv[-1] if a.dest == "spec" else spec
    if name == "bench" and data.draw(st.booleans(), label="one spec"):
        spec = data.draw(vals["spec"], label="--spec")
        argv += ["--spec", spec]
    if "shape" in opts and data.draw(st.integers(0, 4), label="give --shape"):
        shape = data.draw(mostly(shape_for(spec), vals["shape"]) if spec in SPECS else vals["shape"], label="--shape")
        argv.append(f"--shape={shape}")
        if spec in SPECS and data.draw(st.integers(0, 3), label="fitting sizes"):
            argv += sizes_for(spec, shape)
    for a in data.draw(st.lists(st.sampled_from(list(opts.values())), max_size=4), label="options") if opts else ():
        flag = data.draw(st.sampled_from(a.option_strings), label="spelling")
        if a.nargs == 0 or (a.nargs == "?" and data.draw(st.booleans(), label="bare")):
            argv.append(flag)
            continue
        strat = vals.get(a.dest, COUNTS if a.type not in (None, str) else HOSTILE)
        v = data.draw(strat, label=a.dest)
        # `--opt=value` lets values starting with '-' through, as a user would write them
        argv += [f"{flag}={v}"] if flag.startswith("--") and data.draw(st.booleans(), label="=") else [flag, v]
    if data.draw(st.integers(0, 9), label="junk?") == 0:
        argv.insert(data.draw(st.integers(0, len(argv)), label="where"), data.draw(HOSTILE, label="junk"))
    return argv


@pytest.fixture
def stubbed(monkeypatch, tmp_path):
    """The slow work behind valid commands replaced; files land under tmp_path."""
    from normgen import paths
    from normgen.bench import cpu as bench
    from normgen.bench import fused, memory
    from normgen.verify import session

    monkeypatch.setattr(session, "run", lambda ops, **kw: None)
    monkeypatch.setattr(bench, "run_cases", lambda cases, **kw: [])
    monkeypatch.setattr(bench, "save_json", lambda results, path, extra: None)
    monkeypatch.setattr(bench, "plot", lambda results, path: None)
    for name in ("run_all", "run_steady"):
        monkeypatch.setattr(memory, name, lambda *a, **kw: [])
    monkeypatch.setattr(memory, "table", lambda rows: "")
    monkeypatch.setattr(memory, "steady_table", lambda rows: "")
    monkeypatch.setattr(fused, "run", lambda *a, **kw: [])
    monkeypatch.setattr(fused, "table", lambda results: "")
    monkeypatch.setattr(paths, "repo_root", lambda: None)  # generate --reference and --json write to the cwd
    monkeypatch.setenv("NORMGEN_CACHE_DIR", str(tmp_path / "cache"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def run_main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: usage errors and --version
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue() + err.getvalue()


#: NORMGEN_FUZZ_EXAMPLES=5000 explores further with fresh random draws; by default the same 150 every run
EXPLORE = int(os.environ.get("NORMGEN_FUZZ_EXAMPLES", "0"))


@settings(max_examples=EXPLORE or 150, deadline=None, derandomize=not EXPLORE, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_cli_exits_0_or_2_and_says_what_is_allowed(stubbed, data):
    argv = draw_argv(data, stubbed)
    code, text = run_main(argv)
    if os.environ.get("NORMGEN_FUZZ_LOG"):  # what the draws reach: command, exit code
        with open(os.environ["NORMGEN_FUZZ_LOG"], "a") as f:
            f.write(f"{code}\t{argv!r}\t{text.strip().splitlines()[-1] if text.strip() else ''}\n")
    assert "Traceback" not in text, (argv, text)
    assert code in (0, 2), (argv, code, text)
    if code == 2:
        message = text[text.rindex("error"):]
        assert any(w in message for w in ACCEPTS), (argv, text)
