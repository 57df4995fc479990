"""Hostile inputs shared by the tests and the reliability campaign (docs/RELIABILITY.md):
Hypothesis strategies that draw malformed spec files, and a catalog of bad calls with
the error each one must get. `hypothesis` is only needed for the strategies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import normgen
from normgen import ops
from normgen.spec.library import bundled_paths
from normgen.spec.loader import TOP_KEYS

try:
    from hypothesis import strategies as st
except ImportError:  # the strategies need hypothesis (the `test` extra); the call catalog does not
    st = None

X = np.random.default_rng(0).standard_normal((4, 6, 5)).astype(np.float32)


def bn(**kw):
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    args = dict(running_mean=rm, running_var=rv, training=True) | kw
    return rm, rv, args


BAD_CALLS = {
    "wrong rank": (lambda: normgen.load("group_norm").forward(np.zeros((4,), np.float32), num_groups=2),
                   r"group_norm: input has 1 dimensions \(4,\), but 'N \(G c\) \*spatial' needs at least 2"),
    "weight shape": (lambda: normgen.load("group_norm").forward(X, np.ones(5, np.float32), num_groups=3),
                     r"weight has shape \(5,\), expected \(6,\)"),
    "weight dtype": (lambda: normgen.load("group_norm").forward(X, np.ones(6, np.float64), num_groups=3),
                     r"weight has dtype float64, expected float32 \(the dtype of x\)"),
    "x dtype": (lambda: normgen.load("layer_norm").forward(X.astype(np.int32), normalized_shape=(5,)),
                r"x has dtype int32; the cpu backend takes float32 or float64"),
    "x type": (lambda: normgen.load("layer_norm").forward([[1.0, 2.0]], normalized_shape=(2,)),
               r"x must be a NumPy array, got list"),
    "groups do not divide": (lambda: ops.group_norm(X, 4),
                             r"dimension 1 of the input has size 6, which G=4 does not divide"),
    "missing size": (lambda: normgen.load("group_norm").forward(X),
                     r"missing call argument num_groups= \(the size of axis 'G'\)"),
    "bad size": (lambda: normgen.load("group_norm").forward(X, num_groups=0),
                 r"num_groups= must be a positive integer, got 0"),
    "normalized shape": (lambda: ops.layer_norm(X, (6, 5, 4)),
                         r"normalized_shape=\(6, 5, 4\) does not match the trailing dimensions \(4, 6, 5\)"),
    "normalized shape mismatch": (lambda: ops.layer_norm(X, (4,)),
                                  r"normalized_shape=\(4,\) does not match the trailing dimensions \(5,\)"),
    "unknown argument": (lambda: normgen.load("layer_norm").forward(X, normalized_shape=(5,), num_groups=2),
                         r"unexpected argument\(s\) num_groups"),
    "out shape": (lambda: ops.layer_norm(X, (5,), out=np.empty((4, 6), np.float32)),
                  r"out has shape \(4, 6\) and dtype float32, expected \(4, 6, 5\) and float32"),
    "out dtype": (lambda: ops.layer_norm(X, (5,), out=np.empty(X.shape, np.float64)),
                  r"out has shape \(4, 6, 5\) and dtype float64, expected \(4, 6, 5\) and float32"),
    "out read-only": (lambda: ops.layer_norm(X, (5,), out=np.lib.stride_tricks.as_strided(
        np.empty(X.shape, np.float32), writeable=False)), r"out is read-only"),
    "out aliases input": (lambda: (lambda a: ops.layer_norm(a, (5,), out=a[:, :, :]))(X.copy()),
                          r"out overlaps an input; pass a separate array"),
    "out broadcast": (lambda: ops.layer_norm(X, (5,), out=np.broadcast_to(np.empty(5, np.float32), X.shape)),
                      r"out is read-only|cannot write"),
    "running shape": (lambda: normgen.load("batch_norm").forward(X, **bn(running_mean=np.zeros(5, np.float32))[2]),
                      r"running_mean has shape \(5,\), expected \(6,\)"),
    "running read-only": (lambda: normgen.load("batch_norm").forward(
        X, **bn(running_var=np.lib.stride_tricks.as_strided(np.ones(6, np.float32), writeable=False))[2]),
        r"running_var is read-only; running statistics are updated in place"),
    "running half given": (lambda: normgen.load("batch_norm").forward(X, running_mean=np.zeros(6, np.float32)),
                           r"give both running_mean and running_var, or neither"),
    "one value per channel": (lambda: ops.batch_norm(X[:1, :, :1], np.zeros(6, np.float32),
                                                     np.ones(6, np.float32), training=True),
                              r"expected more than 1 value per channel when training"),
    "momentum": (lambda: normgen.load("batch_norm").forward(X, **bn(momentum="fast")[2]),
                 r"momentum must be a number or None, got 'fast'"),
    "momentum none": (lambda: normgen.load("batch_norm").forward(X, **bn(momentum=None)[2]),
                      r"momentum=None \(cumulative average\) needs num_batches_tracked"),
    "eps": (lambda: ops.layer_norm(X, (5,), eps="tiny"), r"eps must be a number, got 'tiny'"),
    "mixture weights": (lambda: ops.switchable_norm(X, np.ones(2), np.ones(3), training=True),
                        r"mean_weight has shape \(2,\), expected \(3,\)"),
    "too many params": (lambda: normgen.load("layer_norm").forward(X, X, X, X, normalized_shape=(5,)),
                        r"takes 2 positional parameter\(s\) after x \(weight, bias\), got 3"),
}


if st is not None:
    TOKENS = ["N", "C", "G", "c", "H", "W", "spatial", "batch", "(", ")", "*", " ", "  ", "(G c)", "*spatial", "é",
              "ñ", "0", "1x", "-", "_", "N N", "()", "((", "*(", "\t", "\u200b", "名前", "a" * 300]


    axis_text = st.lists(st.sampled_from(TOKENS), max_size=8).map(" ".join) | st.text(max_size=40)
    # expressions of fused specs: well formed, broken, and with names the op already uses
    expr_text = st.lists(st.sampled_from(["x", "y", "r", "+", "-", "*", "/", "(", ")", "silu(", "gelu_tanh(", "2",
                                          "1e999", "weight", "exp(", " ", "foo("]), max_size=8).map("".join)
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                       st.sampled_from(["mean", "none", "std", "rms", "l2", "dtype", "num_groups", "x", "int8",
                                        "x + residual", "silu(y)"]), axis_text, expr_text)


    def toml_value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(v), repr(v))
        if isinstance(v, list):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


    @st.composite
    def toml_specs(draw):
        """TOML documents with the spec's keys (and others) holding values of any type."""
        keys = draw(st.lists(st.sampled_from(list(TOP_KEYS) + ["extra", "kept2"]), max_size=9))
        lines = []
        tables = []
        for k in keys:
            if k in ("sizes", "affine", "running", "fuse") and draw(st.booleans()):
                sub = draw(st.lists(st.sampled_from(["axes", "weight", "bias", "momentum", "G", "c", "normalized", "zz",
                                                     "weight_offset", "cast", "prologue", "epilogue", "keep_prologue",
                                                     "quantize"]), max_size=4))
                body = [f"{s} = {toml_value(draw(scalar | st.lists(scalar, max_size=3)))}" for s in sub if s is not None]
                tables.append(f"[{k}]\n" + "\n".join(body))
            else:
                v = draw(scalar | st.lists(scalar, max_size=4))
                if v is not None:
                    lines.append(f"{k} = {toml_value(v)}")
        return "\n".join(lines + tables) + "\n"


    @st.composite
    def mutated_bundled(draw):
        text = Path(draw(st.sampled_from([str(p) for p in bundled_paths()]))).read_text()
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["delete", "insert", "dup", "swap"]))
            if not text:
                break
            i = draw(st.integers(0, len(text) - 1))
            if op == "delete":
                text = text[:i] + text[i + draw(st.integers(1, 5)):]
            elif op == "insert":
                text = text[:i] + draw(st.sampled_from(TOKENS + ['"', "=", "[", "]", "\n", "#", "'"])) + text[i:]
            elif op == "dup":
                lines = text.splitlines()
                j = draw(st.integers(0, len(lines) - 1))
                text = "\n".join(lines[: j + 1] + [lines[j]] + lines[j + 1:])
            else:
                lines = text.splitlines()
                j = draw(st.integers(0, len(lines) - 1))
                k = draw(st.integers(0, len(lines) - 1))
                lines[j], lines[k] = lines[k], lines[j]
                text = "\n".join(lines)
        return text
