"""The spec language: bundled specs load, Python-built specs match files, and bad specs
fail with the file, the key, a caret under the token and what is allowed (pinned)."""

from __future__ import annotations

import textwrap

import pytest

from normgen import SpecError, build_spec, load_spec, parse_spec
from normgen.spec.library import bundled_names, bundled_paths
from normgen.spec import Center, Scale

BUNDLED = ["add_layer_norm", "add_rms_norm", "batch_norm", "gated_rms_norm", "gemma_rms_norm", "group_norm",
           "group_norm_silu", "instance_norm", "layer_norm", "rms_norm", "standardize", "switchable_norm",
           "weight_norm", "weight_standardization"]


def test_every_row_of_the_design_table_and_the_fused_specs_are_bundled():
    assert bundled_names() == BUNDLED


@pytest.mark.parametrize("path", bundled_paths(), ids=lambda p: p.stem)
def test_bundled_specs_load(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.doc


def test_group_norm_semantics():
    spec = load_spec(next(p for p in bundled_paths() if p.stem == "group_norm"))
    assert spec.name == "group_norm"
    assert spec.kept_axes == ("N", "G")
    assert spec.reduced_axes == ("c", "spatial")
    assert spec.center is Center.MEAN and spec.scale is Scale.STD and spec.eps == 1e-5
    assert spec.size_args == {"num_groups": "G"}
    assert spec.affine.axes.names == ("G", "c") and spec.affine.params == ("weight", "bias")


def test_mixture_and_running():
    spec = load_spec([p for p in bundled_paths() if p.stem == "switchable_norm"][0])
    assert spec.is_mixture and spec.kept == (("N", "C"), ("N",), ("C",))
    assert spec.running.axes == ("C",) and spec.running.momentum == 0.1


def test_python_build_equals_file():
    built = build_spec("group_norm", "N (G c) *spatial", kept="N G", sizes={"G": "num_groups"},
                       affine={"axes": "(G c)"}, doc="GroupNorm: C = G*c; statistics per (N, G) over c and the spatial axes.")
    loaded = load_spec([p for p in bundled_paths() if p.stem == "group_norm"][0])
    assert built.kept == loaded.kept and built.input.names == loaded.input.names
    assert built.affine.axes.names == loaded.affine.axes.names and built.sizes == loaded.sizes


def test_empty_kept_is_one_statistic():
    spec = build_spec("global_norm", "N C", kept="")
    assert spec.kept_axes == () and spec.reduced_axes == ("N", "C")


def _err(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text).lstrip(), "my_norm.toml", default_name="my_norm")
    return str(info.value)


# Each message is pinned in full: the file and line, the key, the caret, and what is allowed.
PINNED = {
    "unknown axis in kept": (
        '''
        input = "N C *spatial"
        kept = "N K"
        ''',
        '''my_norm.toml:2:11: key 'kept': unknown axis 'K'
            kept = "N K"
                      ^
          allowed: the axes of input 'N C *spatial': N, C, *spatial'''),
    "duplicate key": (
        '''
        input = "N C"
        kept = "N"
        kept = "C"
        ''',
        '''my_norm.toml:3:1: key 'kept': duplicate key 'kept' (first set at line 2)
            kept = "C"
            ^^^^
          allowed: each key once'''),
    "axis used twice": (
        '''
        input = "N C C"
        kept = "N"
        ''',
        '''my_norm.toml:1:14: key 'input': axis 'C' is used twice (first at column 3)
            input = "N C C"
                         ^
          allowed: each axis name once per expression'''),
    "unknowable split": (
        '''
        input = "N (G c) *spatial"
        kept = "N G"
        ''',
        '''my_norm.toml:1:12: key 'input': the sizes of 'G' and 'c' in '(G c)' cannot be known from the shape
            input = "N (G c) *spatial"
                       ^^^^^
          allowed: give all but one part of a split in [sizes], e.g. G = "num_g" or G = 4'''),
    "unknown top-level key": (
        '''
        input = "N C"
        kept = "N"
        colour = "red"
        ''',
        '''my_norm.toml:3:1: key 'colour': unknown key 'colour' in a spec
            colour = "red"
            ^^^^^^
          allowed: name, doc, input, kept, center, scale, eps, sizes, affine, running, fuse'''),
    "affine axis not an input axis": (
        '''
        input = "N C *spatial"
        kept = "N"
        [affine]
        axes = "D"
        ''',
        '''my_norm.toml:4:9: key 'affine.axes': unknown axis 'D'
            axes = "D"
                    ^
          allowed: the axes of input 'N C *spatial': N, C, *spatial'''),
    "variadic without star": (
        '''
        input = "N C *spatial"
        kept = "N C spatial"
        ''',
        '''my_norm.toml:2:13: key 'kept': 'spatial' is a variadic group in the input; write it '*spatial'
            kept = "N C spatial"
                        ^^^^^^^
          allowed: the axes of input 'N C *spatial': N, C, *spatial'''),
    "bad center": (
        '''
        input = "N C"
        kept = "N"
        center = "median"
        ''',
        '''my_norm.toml:3:11: key 'center': unknown value 'median'
            center = "median"
                      ^^^^^^
          allowed: 'mean', 'none\''''),
    "negative eps": (
        '''
        input = "N C"
        kept = "N"
        eps = -1
        ''',
        '''my_norm.toml:3:7: key 'eps': eps must be a finite number >= 0, got -1
            eps = -1
                  ^
          allowed: a number such as 1e-5, or "dtype" for the machine epsilon of the input dtype'''),
    "two free variadic groups": (
        '''
        input = "*a *b"
        kept = "*a"
        ''',
        '''my_norm.toml:1:13: key 'input': two variadic groups ('*a' and '*b') without a given shape: the split between them cannot be known
            input = "*a *b"
                        ^^
          allowed: give one of them in [sizes], e.g. b = "b_shape"'''),
    "empty reduced set": (
        '''
        input = "N C"
        kept = "N C"
        ''',
        '''my_norm.toml:2:9: key 'kept': every input axis is kept, so each statistic covers one element
            kept = "N C"
                    ^^^
          allowed: leave at least one input axis out of kept (the reduced axes)'''),
    "running axis not kept": (
        '''
        input = "N C *spatial"
        kept = "N"
        [running]
        axes = "C"
        ''',
        '''my_norm.toml:4:9: key 'running.axes': 'C' is not a kept axis
            axes = "C"
                    ^
          allowed: a subset of the kept axes: N'''),
    "mixture component not a coarsening": (
        '''
        input = "N C *spatial"
        kept = ["N", "C"]
        ''',
        '''my_norm.toml:2:15: key 'kept': mixture component 'C' keeps 'C', which the first component 'N' reduces
            kept = ["N", "C"]
                          ^
          allowed: each component keeps a subset of the first one's axes (its statistics are merged from the first's)'''),
    "nested groups": (
        '''
        input = "N ((G c))"
        kept = "N"
        ''',
        '''my_norm.toml:1:13: key 'input': groups cannot nest
            input = "N ((G c))"
                        ^
          allowed: one level: (G c)'''),
    "std without centering": (
        '''
        input = "N C"
        kept = "N"
        center = "none"
        scale = "std"
        ''',
        '''my_norm.toml:4:10: key 'scale': scale 'std' measures spread around the mean, but center = 'none'
            scale = "std"
                     ^^^
          allowed: center = 'mean' with scale 'std', or scale 'rms' without centering'''),
    "size of a plain axis": (
        '''
        input = "N C"
        kept = "N"
        [sizes]
        C = 4
        ''',
        '''my_norm.toml:4:5: key 'sizes.C': cannot give the size of 'C': its size comes from the input shape
            C = 4
                ^
          allowed: nothing: this input has no split or variadic axes'''),
    "not TOML": (
        '''
        input = N C
        ''',
        '''my_norm.toml:1:9: key 'input': not valid TOML: Invalid value
            input = N C
                    ^
          allowed: TOML: key = value lines, [tables], strings in double quotes'''),
    "unknown key in a table": (
        '''
        input = "N C"
        kept = "N"
        [affine]
        axes = "C"
        colour = "red"
        ''',
        '''my_norm.toml:5:1: key 'affine.colour': unknown key 'colour' in table [affine]
            colour = "red"
            ^^^^^^
          allowed: axes, weight, bias, weight_offset, cast'''),
    "reserved argument name": (
        '''
        input = "N (G c)"
        kept = "N G"
        sizes = { G = "eps" }
        ''',
        '''my_norm.toml:3:16: key 'sizes.G': argument name 'eps' is taken by the op
            sizes = { G = "eps" }
                           ^^^
          allowed: any name except bias, comm, dprologue, eps, input, mean_weight, momentum, num_batches_tracked, out, process_group, running_mean, running_var, save, target, training, var_weight, weight, x, y'''),
}


@pytest.mark.parametrize("case", list(PINNED), ids=lambda c: c.replace(" ", "-"))
def test_pinned_error_messages(case):
    text, message = PINNED[case]
    assert _err(text) == textwrap.dedent(message).replace("\n        ", "\n")


def test_python_built_spec_errors_have_a_caret():
    with pytest.raises(SpecError) as info:
        build_spec("x", "N C", kept="N Q")
    assert str(info.value) == (
        "<python>: key 'kept': unknown axis 'Q'\n"
        '    kept = "N Q"\n'
        "              ^\n"
        "  allowed: the axes of input 'N C': N, C")


def test_missing_file_and_binary_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(bad)


def test_a_spec_built_directly_obeys_the_same_rules():
    """The rules live in Spec.__post_init__: no way around them by constructing a Spec."""
    import dataclasses

    from normgen.spec import Spec
    from normgen.spec.axes import parse_axes

    spec = load_spec(next(p for p in bundled_paths() if p.stem == "layer_norm"))
    with pytest.raises(SpecError) as info:
        dataclasses.replace(spec, center=Center.NONE)  # std without centering
    assert "key 'scale'" in str(info.value) and "measures spread around the mean" in str(info.value)
    with pytest.raises(SpecError) as info:
        Spec(name="p", input=parse_axes("N C"), kept=(("N", "K"),), center=Center.MEAN, scale=Scale.STD, eps=1e-5)
    assert "key 'kept': unknown axis 'K'" in str(info.value)
    with pytest.raises(SpecError, match="eps must be a finite number >= 0"):
        Spec(name="p", input=parse_axes("N C"), kept=(("N",),), center=Center.MEAN, scale=Scale.STD, eps=-1.0)
    ok = Spec(name="p", input=parse_axes("N C"), kept=(("N",),), center=Center.MEAN, scale=Scale.STD, eps=1e-5)
    assert ok.reduced_axes == ("C",)


def test_build_spec_with_a_string_for_a_table_says_so():
    with pytest.raises(SpecError) as info:
        build_spec("p", "N C H W", kept="H W", affine="C")
    assert "key 'affine': expected a table, got a string" in str(info.value)
