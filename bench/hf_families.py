"""Per model family (the tiny random configs of tests/test_hf_models.py): norm modules
converted and left by `nt.convert`, and the largest difference from the original model's
output and parameter gradients in float32 (train mode), absolute and relative to the
largest value; then the same conversion of the bfloat16 model (what is left, and why).

    PYTHONPATH=. python bench/hf_families.py
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import torch

import normgen.torch as nt
from normgen.torch.convert_check import ulp_distance

_spec = importlib.util.spec_from_file_location("hf_cases", Path(__file__).parent.parent / "tests/test_hf_models.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


def _bf16(original, kind: str) -> str:
    """The bfloat16 model converted: swapped/left, and the largest distance in ulps of each
    converted norm from the original on the inputs that norm sees in the original model."""
    seen = {}
    # copies: a model may add to a norm's output in place afterwards (ResNet's residual)
    hooks = [original.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen.__setitem__(n, (args[0].clone(), out.clone()))) for n in cases._norm_modules(original)]
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in cases._inputs(kind).items()}
    with torch.no_grad():
        original(**inputs)
    for h in hooks:
        h.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, rep = nt.convert(copy.deepcopy(original), report=True)
    text = f"swapped {len(rep.swapped)}, left {len(rep.left)}"
    if rep.left:
        return text + f" ({rep.left[0][2][:100]}...)"
    with torch.no_grad():
        ulps = max(ulp_distance(want, converted.get_submodule(n)(x)) for n, (x, want) in seen.items())
    return text + f", max {ulps:g} ulp"


def main() -> None:
    print(f"{'family':12s} {'conv':>4s} {'left':>4s} {'max|dy|':>9s} {'rel':>9s} {'max|dgrad|':>10s} {'rel':>9s}"
          "  bf16 (CPU)")
    for family, (_, kind) in cases.FAMILIES.items():
        original = cases._model(family).train()
        converted, rep = nt.convert(copy.deepcopy(original), report=True)
        want, want_grads = cases._run(original, kind)
        got, got_grads = cases._run(converted, kind)
        dy = (got - want).abs().max().item()
        dg = max((got_grads[n] - g).abs().max().item() for n, g in want_grads.items())
        rg = max(cases.scaled_error(got_grads[n], g) for n, g in want_grads.items())
        bf16 = _bf16(original.to(torch.bfloat16).eval(), kind)
        print(f"{family:12s} {len(rep.swapped):4d} {len(rep.left):4d} {dy:9.2e} {cases.scaled_error(got, want):9.2e} "
              f"{dg:10.2e} {rg:9.2e}  {bf16}")


if __name__ == "__main__":
    main()
