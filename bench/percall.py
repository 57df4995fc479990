"""One small call repeated, for bench/percall.sh: after warm-up it writes DIR/READY and waits
for DIR/GO (the script turns callgrind's instrumentation on), runs N calls, writes DIR/DONE and
waits for DIR/END. Calls on layer_norm [1, 4096], float32, one thread:

    module    nt.LayerNorm under no_grad        torch   torch.nn.LayerNorm under no_grad
    ops       normgen.ops.layer_norm (NumPy)     opout   the Op with out= (its recipe)
    normalize normgen.torch.normalize            fyi     kernels.forward_y_impl
    grad      nt.LayerNorm forward + backward    tgrad   torch.nn.LayerNorm forward + backward

    usage: python bench/percall.py CALL N DIR
"""

import os
import sys
import time

import numpy as np
import torch

import normgen.torch as nt
from normgen import ops
from normgen.op.op import load
from normgen.torch import function, kernels

torch.set_num_threads(1)
call, n, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = torch.randn(1, 4096)
m, tm = nt.LayerNorm(4096), torch.nn.LayerNorm(4096)
op = load("layer_norm")
xa, ya = x.numpy(), np.empty((1, 4096), np.float32)
w, b = np.ones(4096, np.float32), np.zeros(4096, np.float32)
xg, dy = x.clone().requires_grad_(True), torch.randn(1, 4096)
CALLS = {
    "module": lambda: m(x),
    "torch": lambda: tm(x),
    "ops": lambda: ops.layer_norm(xa, (4096,), w, b),
    "opout": lambda: op(xa, out=ya, training=True, eps=1e-5, weight=w, bias=b, normalized_shape=(4096,)),
    "normalize": lambda: function.normalize("layer_norm", x, {"weight": m.weight, "bias": m.bias}, eps=1e-5,
                                            normalized_shape=(4096,)),
    "fyi": lambda: kernels.forward_y_impl(op, x, m.weight, m.bias, {"normalized_shape": (4096,)}, 1e-5, True),
    "grad": lambda: m(xg).backward(dy),
    "tgrad": lambda: tm(xg).backward(dy),
}


def wait_for(name: str) -> None:
    while not os.path.exists(os.path.join(folder, name)):
        time.sleep(0.05)


f = CALLS[call]
with torch.enable_grad() if "grad" in call else torch.no_grad():
    for _ in range(30):
        f()
    open(os.path.join(folder, "READY"), "w").close()
    wait_for("GO")
    for _ in range(n):
        f()
    open(os.path.join(folder, "DONE"), "w").close()
    wait_for("END")
