"""Pass analysis: the lower bound on passes over a rank's fibers (FuseMax, Sec. III).

A *pass* over rank ``R`` is one traversal of its fibers. An Einsum that reduces over ``R`` produces a
tensor that is complete only once the whole fiber has been visited; an Einsum that traverses ``R``
again and needs that tensor must wait for the traversal to finish, so it belongs to a later pass.
Reading a tensor element-wise along ``R`` (the producer wrote it at the same ``r``) creates no such
wait: the two Einsums can be fused tile by tile. ``N`` read-after-complete dependencies in sequence
give ``N + 1`` passes, whatever the mapping.

For a partitioned rank (``M -> M1, M0``) the traversal is driven by the outermost index (``m1``): a
dependency inside one ``M0`` tile is buffered on chip and costs no pass over ``M`` (ask for rank
``M0`` to count the passes within a tile). Reads of running tensors carried from the previous
iteration (``RM[m1,p]`` written at ``m1+1``) are progressive and never force a new pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access
from einfuse.ir.printer import format_expr
from einfuse.ir.ranks import index_symbol
from einfuse.ir.symzero import is_zero


@dataclass(frozen=True)
class PassReport:
    """Passes over ``rank`` and, per Einsum, which pass it belongs to and why."""

    cascade: str
    rank: str
    traversal: str
    passes: int
    reasons: dict[str, str] = field(default_factory=dict)
    pass_of: dict[str, int | None] = field(default_factory=dict)

    def __str__(self) -> str:
        via = "" if self.traversal == self.rank.lower() else f" (traversed by {self.traversal})"
        plural = "pass" if self.passes == 1 else "passes"
        lines = [f"{self.cascade}: {self.passes} {plural} over rank {self.rank}{via}"]
        width = max((len(k) for k in self.reasons), default=0)
        for name, why in self.reasons.items():
            k = self.pass_of.get(name)
            tag = f"pass {k}" if k else "  -   "
            lines.append(f"  {name:<{width}}  {tag}  {why}")
        return "\n".join(lines)


def traversal_var(c: Cascade, rank: str) -> sympy.Symbol:
    """The index whose loop traverses ``rank``'s fibers: the outermost index of its partitions."""
    if rank not in c.ranks and c.partition_of(rank) is None:
        known = ", ".join(c.ranks)
        raise PassError(f"rank {rank} is not a rank of cascade {c.name} (ranks: {known})")
    seen = {rank}
    while (part := c.partition_of(rank)) is not None:
        rank = part.outer
        if rank in seen:  # pragma: no cover - malformed partitions
            break
        seen.add(rank)
    return index_symbol(rank)


def is_carried(c: Cascade, a: Access) -> bool:
    """Whether access ``a`` reads a running tensor one step behind its recurrence (``RM[m1,p]`` where
    ``RM[m1+1,p] = ...``): the value comes from the previous iteration, not from a finished pass."""
    t = c.tensors.get(a.tensor)
    if t is None or not t.iterative:
        return False
    for pos, rank in enumerate(t.ranks):
        if rank not in t.iterative:
            continue
        v = index_symbol(rank)
        if a.indices[pos] != v:
            continue
        for i in c.producers(a.tensor):
            if is_zero(c.einsums[i].output.indices[pos] - v - 1):
                return True
    return False


def count_passes(c: Cascade, rank: str = "M") -> PassReport:
    """The lower bound on passes over ``rank`` for any mapping, with the reason per Einsum."""
    t = traversal_var(c, rank)
    n = len(c.einsums)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for j, e in enumerate(c.einsums):
        for a in e.operands():
            if not is_carried(c, a):
                g.add_edges_from((i, j) for i in c.producers(a.tensor) if i != j)
    try:
        order = list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        raise PassError(f"cascade {c.name}: dependency cycle that is not a recurrence") from None

    iterates = [t in c.iteration_vars(e) for e in c.einsums]
    pass_no: list[int | None] = [None] * n
    complete = [0] * n  # passes that must finish before the Einsum's output is complete
    reasons: list[str] = [""] * n
    for j in order:
        e = c.einsums[j]
        best, why, best_streams = 0, "", False
        for a in e.operands():
            if is_carried(c, a):
                continue
            for i in c.producers(a.tensor):
                if i == j:
                    continue
                streams = iterates[j] and iterates[i] and _mentions(a, t) and t in _out_syms(c.einsums[i])
                if streams:
                    need = pass_no[i] or 1
                    text = f"streams {a.tensor} along {t} in step with its producer"
                else:
                    need = complete[i] + (1 if iterates[j] else 0)
                    text = _wait_text(c, c.einsums[i], complete[i], t)
                if (need, streams) > (best, best_streams):  # on a tie, say what fuses
                    best, why, best_streams = need, text, streams
        if iterates[j]:
            k = max(best, 1)
            pass_no[j] = complete[j] = k
            body = why if why and best == k else "reads only inputs"
            reasons[j] = f"traverses {t}; {body}"
            if t in c.reduced_vars(e):
                reasons[j] += f"; {e.reduce}-reduces over {t}: {e.name} is complete only after pass {k}"
        else:
            complete[j] = best
            reasons[j] = (f"does not traverse {t}; {why}" if best else
                          f"does not traverse {t}; needs no pass over {rank}")
    report_reasons: dict[str, str] = {}
    report_pass: dict[str, int | None] = {}
    for j, e in enumerate(c.einsums):
        key = e.name if e.name not in report_reasons else format_expr(e.output)
        report_reasons[key] = reasons[j]
        report_pass[key] = pass_no[j]
    passes = max((k for k in pass_no if k is not None), default=0)
    return PassReport(c.name, rank, str(t), passes, report_reasons, report_pass)


def _mentions(a: Access, t: sympy.Symbol) -> bool:
    return any(t in sympy.sympify(i).free_symbols for i in a.indices)


def _out_syms(e: Einsum) -> set[sympy.Symbol]:
    return e.output_symbols()


def _wait_text(c: Cascade, producer: Einsum, done: int, t: sympy.Symbol) -> str:
    if done == 0:
        return f"reads {producer.name}, which needs no pass"
    how = ""
    if t in c.reduced_vars(producer):
        how = f" ({producer.reduce}-reduced over {t})"
    return f"needs all of {producer.name}{how}, complete only after pass {done}"


__all__ = ["PassReport", "count_passes", "is_carried", "traversal_var"]
