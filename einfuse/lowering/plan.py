"""The kernel plan: what a back end is asked to emit, before any code exists.

A :class:`KernelPlan` is the contract between the passes and the back ends (Triton, CUTLASS, the
simulator). It says, for one attention stage,

* the **grid**: which ranks run in parallel (batch, head, query tiles or chunks, KV splits);
* the **reduction loop**: the rank walked tile by tile, the tile size (a number, or the launch-time
  symbol a back end chooses), and how tiles are classed (every tile full, or full / partial / empty
  from the mask's block sparsity, with the tables built at launch);
* the **running state** kept on chip across the loop (row max, row sum and output accumulator; or
  the linear KV state with its decay; or per-split partial triples);
* the **score** expression over the ``Q.K`` product and the **mask** predicate, as IR expressions over
  logical positions ``p`` (query) and ``m`` (key), whatever tiling the passes applied;
* the **finalize** step and, for split-KV plans, the **combine** step;
* for multi-stage cascades (Agent, BASED), the **stages** in order and the elementwise combiners.

The family-specific facts an emitter prints from (the one-pass plan, the linear plan with its decay
factors, the decode plan with its split/combine lines, the stage split) are in ``detail``; the
lowered cascade the plan was read from is ``cascade`` (for comments and block tables). Plans are made
by :func:`einfuse.lowering.lower.kernel_plan` and printed by :func:`format_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy

from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, Expr
from einfuse.ir.printer import format_expr

FAMILIES = ("softmax", "sigmoid", "normsum", "linear", "decode", "staged")


@dataclass(frozen=True)
class Loop:
    """The reduction loop: ``rank`` walked in tiles of ``tile`` positions, classed by ``classes``."""

    rank: str
    tile: str
    classes: str


@dataclass(frozen=True)
class StateVar:
    """A value kept on chip across the loop: its name in the emitted code, shape and meaning."""

    name: str
    shape: str
    meaning: str


@dataclass(frozen=True)
class KernelPlan:
    """One back-end-neutral kernel plan (see the module docstring for the fields' meaning)."""

    name: str
    family: str
    grid: tuple[str, ...]
    loop: Loop
    state: tuple[StateVar, ...]
    score: Expr | None
    mask: sympy.Basic | None
    finalize: str
    combine: str | None
    detail: Any
    cascade: Cascade
    source: Cascade
    lowering: str
    stages: tuple[KernelPlan, ...] = ()
    combiners: tuple[str, ...] = ()

    @property
    def blocks_sparse(self) -> bool:
        """Whether the loop skips tiles (a mask exists, so some tiles may be empty)."""
        return self.mask is not None


def _score_text(score: Expr | None) -> str:
    from einfuse.lowering.onepass import DOT

    if score is None:
        return "-"
    if isinstance(score, Access) and score.tensor == DOT:
        return "Q.K"
    return format_expr(score).replace(f"{DOT}[m,p]", "Q.K")


def format_plan(plan: KernelPlan, indent: str = "") -> str:
    """The plan in readable text: one fact per line, stages indented below their parent."""
    lines = [f"{indent}kernel plan {plan.name}: {plan.family}"]
    if not plan.stages:
        lines += [f"{indent}  grid      {' x '.join(plan.grid)}",
                  f"{indent}  loop      over {plan.loop.rank} in tiles of {plan.loop.tile}; {plan.loop.classes}"]
    for s in plan.state:
        lines.append(f"{indent}  state     {s.name}[{s.shape}]  {s.meaning}")
    if plan.score is not None:
        lines.append(f"{indent}  score     {_score_text(plan.score)}")
    if not plan.stages:
        lines.append(f"{indent}  mask      {plan.mask if plan.mask is not None else 'none (every pair kept)'}")
    lines.append(f"{indent}  finalize  {plan.finalize}")
    if plan.combine:
        lines.append(f"{indent}  combine   {plan.combine}")
    lines.append(f"{indent}  lowering  {plan.lowering}")
    for i, st in enumerate(plan.stages):
        lines.append(f"{indent}  stage {i + 1}:")
        lines.append(format_plan(st, indent + "    "))
    for c in plan.combiners:
        lines.append(f"{indent}  then      {c}")
    return "\n".join(lines)


__all__ = ["FAMILIES", "KernelPlan", "Loop", "StateVar", "format_plan"]
