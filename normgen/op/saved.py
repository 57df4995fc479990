"""A Forward rebuilt from what a forward call leaves behind, for a backward that runs apart
from its forward.

Under torch.library custom ops (normgen.torch), the forward and the backward are two ops:
the backward sees the tensors autograd saved (x, the parameters, kstats and moments), not
the Forward object. `restore` checks the forward call's arguments again and rebuilds the
rest on the host from the statistics, without running a kernel:

- kstats (mean hi, mean lo, rstd per group) is what every backward reads;
- a mixture's intermediates (softmax weights, component moments) follow from the finest
  component's moments, as in the forward (mixture.py);
- across ranks, the element count per group is the count of the merged moments.

    >>> fwd = op.forward(x, w, b, num_groups=4)
    >>> again = restore(op, x, fwd.kstats, fwd.moments, w, b, num_groups=4)
    >>> op.backward(dy, again)          # the same gradients as op.backward(dy, fwd)
"""

from __future__ import annotations

from typing import Any

from ..spec import Center
from . import stats as st
from .args import CALL_ARGS, check_forward
from .distributed import on_device
from .mixture import mix_forward
from .op import Op
from .results import Forward


def restore(op: Op, x: Any, kstats: Any, moments: Any, *params: Any, **kwargs: Any) -> Forward:
    """The Forward of `op.forward(x, *params, **kwargs)` whose statistics were `kstats` and
    `moments` (None in evaluation, unless a mixture), for `op.backward`.

    Pass the forward call's arguments, with the running statistics only when they were
    normalized with (evaluation): nothing is updated. The Forward's y is a new array that
    no kernel writes (a backward never reads y).
    """
    spec = op.spec
    call_args = {k: kwargs.pop(k) for k in CALL_ARGS if k in kwargs}
    call = check_forward(spec, op._bind, x, params, kwargs, **call_args)
    mix = count = None
    if spec.is_mixture or (call.group is not None and not on_device(spec, call)):  # the device path reads no count
        host = call.backend.to_host(moments)
        shape = call.binding.stats_shape
        if call.group is not None:
            count = host[:, 0].reshape(shape)
        if spec.is_mixture:
            run = call.running
            norm = st.moments_normalizer(spec, host, call.eps, shape)
            _, mix = mix_forward(spec, call.binding, norm, call.mix, call.eval_mode,
                                 call.backend.to_host(run.mean) if run else None,
                                 call.backend.to_host(run.var) if run else None, call.eps)
    return Forward(y=call.y, kstats=kstats, call=call, centered=spec.center is Center.MEAN, mix=mix, count=count,
                   moments=moments)
