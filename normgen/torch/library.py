"""normgen's custom operators (torch.library), in the `normgen` namespace: three schemas for
every spec, which names the spec and its call-time sizes by strings (registry.py).

    normgen::forward        y, statistics and batch moments of x; functional (reads the
                            running statistics in evaluation, never writes them)
    normgen::backward       dx, the parameters' and the extra inputs' gradients
    normgen::update_running running statistics from the forward's moments, in place

Each has a real implementation for CPU and CUDA tensors (kernels.py) and a fake one
(fake.py) that torch.compile, torch.export and meta tensors use; `normgen::forward` has
its autograd formula (autograd.py) registered with torch.library.register_autograd, and
`normgen::update_running` declares the running statistics it writes (`Tensor(a!)`), so
functionalization and CUDA graphs know about the mutation. Dynamo treats all three as
opaque: it neither traces into Numba nor guards on data.

Fused specs (DESIGN.md, Fusion) fit the same schemas: `extras` carries the inputs shaped
like x besides x (residual, z) in the spec's order, the forward returns its extra outputs
(a kept prologue h) in a list, and the backward takes their gradients and returns the
extras' (fake.py `extra_inputs`, `extra_outputs`). The backward recomputes h from x and the
extras (it is not among the backward's inputs).
"""

from __future__ import annotations

import torch

from .autograd import backward, setup_context
from .fake import backward_fake, forward_fake, update_fake
from .kernels import backward_impl, forward_impl, update_impl
from .vmap import vmap_loop, vmap_refused

NAMESPACE = "normgen"

SCHEMAS = {
    "forward": "forward(Tensor x, Tensor? weight, Tensor? bias, Tensor[] extras, Tensor? running_mean, "
               "Tensor? running_var, Tensor? mean_weight, Tensor? var_weight, str spec, str sizes, float? eps, "
               "bool training, str group) -> (Tensor y, Tensor stats, Tensor moments, Tensor[] extra_out)",
    "backward": "backward(Tensor dy, Tensor?[] dextra_out, Tensor x, Tensor? weight, Tensor? bias, Tensor[] extras, "
                "Tensor? running_mean, Tensor? running_var, Tensor? mean_weight, Tensor? var_weight, Tensor stats, "
                "Tensor moments, str spec, str sizes, float? eps, bool training, str group) "
                "-> (Tensor dx, Tensor[] dparams, Tensor[] dextras)",
    "update_running": "update_running(Tensor moments, Tensor(a!) running_mean, Tensor(b!) running_var, "
                      "Tensor? num_batches_tracked, SymInt[] shape, str spec, str sizes, float? momentum) -> ()",
}

# pt2_compliant: opcheck passes for them (tests/test_torch_ops.py). cudagraph_unsafe: CuPy allocates
# the statistics and scratch from its own memory pool, which a captured graph must not keep
# addresses in, so Inductor's CUDA graphs (mode="reduce-overhead") leave these two ops outside
# the graph. (On CUDA they no longer read the device from the host in training or evaluation
# forwards, nor in a training backward, across ranks too: runtime/cuda_ranks.py; mixtures and
# an evaluation-mode backward still do.) update_running is torch operations only.
TAGS = {"forward": (torch.Tag.pt2_compliant_tag, torch.Tag.cudagraph_unsafe),
        "backward": (torch.Tag.pt2_compliant_tag, torch.Tag.cudagraph_unsafe),
        "update_running": (torch.Tag.pt2_compliant_tag,)}

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_schema, tags=TAGS[_name])

for _name, _real, _fake in (("forward", forward_impl, forward_fake), ("backward", backward_impl, backward_fake),
                            ("update_running", update_impl, update_fake)):
    for _key in ("CPU", "CUDA"):
        _lib.impl(_name, _real, _key)
    torch.library.register_fake(f"{NAMESPACE}::{_name}", _fake, lib=_lib)

torch.library.register_autograd(f"{NAMESPACE}::forward", backward, setup_context=setup_context, lib=_lib)
for _name in ("forward", "backward"):
    torch.library.register_vmap(f"{NAMESPACE}::{_name}", vmap_loop(_name), lib=_lib)
torch.library.register_vmap(f"{NAMESPACE}::update_running", vmap_refused, lib=_lib)

forward = torch.ops.normgen.forward.default
backward_op = torch.ops.normgen.backward.default
update_running = torch.ops.normgen.update_running.default
