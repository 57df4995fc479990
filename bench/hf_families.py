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

_spec = importlib.util.spec_from_file_location("hf_cases", Path(__file__).parent.parent / "tests/test_hf_models.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, rep16 = nt.convert(copy.deepcopy(original).to(torch.bfloat16), report=True)
        bf16 = f"swapped {len(rep16.swapped)}, left {len(rep16.left)}"
        if rep16.left:
            bf16 += f" ({rep16.left[0][2][:90]}...)"
        print(f"{family:12s} {len(rep.swapped):4d} {len(rep.left):4d} {dy:9.2e} {cases.scaled_error(got, want):9.2e} "
              f"{dg:10.2e} {rg:9.2e}  {bf16}")


if __name__ == "__main__":
    main()
