"""The planner: a Spec bound to a call's shape, strides, dtype and target becomes a Plan.

    bind.py       the logical dimensions of x for one call (splits and variadic groups spelled out)
    planner.py    the passes, in order, and every decision (strategy, launch, parts, tiles)
    describe.py   the plan as readable text (`normgen plan`)
"""

from .bind import Binding, LogicalDim, bind
from .planner import Direction, Kernel, Launch, Plan, Strategy, make_plan

__all__ = ["bind", "Binding", "LogicalDim", "make_plan", "Plan", "Kernel", "Launch", "Direction", "Strategy"]
