"""The plan layer: fused cascades in, back-end-neutral kernel plans out.

IR -> passes -> **plan** -> emitters (Triton, CUTLASS) and the simulator. Everything a back end
needs to know about a cascade (grid, reduction loop and its tile classes, running state, score and
mask over logical positions, finalize, split-KV combine, stages) is read here, once.
"""

from einfuse.lowering.lower import family_of, kernel_plan
from einfuse.lowering.plan import KernelPlan, Loop, StateVar, format_plan

__all__ = ["KernelPlan", "Loop", "StateVar", "family_of", "format_plan", "kernel_plan"]
