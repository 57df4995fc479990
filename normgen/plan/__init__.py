"""The planner: a Spec bound to a call's shape, strides, dtype and target becomes a Plan.

    bind.py       the logical dimensions of x for one call (splits and variadic groups spelled out)
    model.py      what a plan is: Kernel (structure), Launch (numbers), the steps of a call
    passes.py     the structural passes: dims, memory order, coalescing, strategy
    launch.py     how the work runs on the CPU: parts, blocks, tiles; the steps of a call
    device.py     what the GPU planner knows of a GPU (profiles, or CuPy's device)
    launch_cuda.py  ... how it runs on a GPU: units, copies, parts, tiles, vector width, registers
    traffic.py    the kernels of a CUDA call, their launches and modeled DRAM traffic (--json)
    geometry.py   the run-time numbers the kernels receive, in one table
    planner.py    make_plan: the passes in order
    describe.py   the plan as readable text (`normgen plan`)
"""

from .bind import Binding, LogicalDim, bind
from .model import Direction, Kernel, Launch, Options, ParamGrads, Plan, Reduction, Strategy
from .planner import make_plan

__all__ = ["bind", "Binding", "LogicalDim", "make_plan", "Plan", "Kernel", "Launch", "Options", "Direction",
           "Strategy", "Reduction", "ParamGrads"]
