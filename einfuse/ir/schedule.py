"""Execution order of a cascade: groups of Einsums, each either plain or a recurrence.

A recurrence is a strongly connected set of Einsums whose cycle is broken only by *carried* reads:
a read of an iterative tensor at ``r`` of a value written at ``r+1``. Removing carried edges leaves a
DAG whose topological order is the order within one iteration. Executors and passes share this.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import sympy

from einfuse.errors import ValidationError
from einfuse.ir.cascade import Cascade
from einfuse.ir.symzero import is_zero


@dataclass(frozen=True)
class Group:
    """Einsums run together: ``loop_var`` is None for a single plain Einsum."""

    einsums: tuple[int, ...]
    loop_var: sympy.Symbol | None = None


def _writes_shifted(c: Cascade, i: int) -> sympy.Symbol | None:
    """The iteration variable v when Einsum i writes an iterative rank at v+1."""
    e = c.einsums[i]
    t = c.tensors[e.output.tensor]
    ivars = c.index_vars()
    for idx, rank in zip(e.output.indices, t.ranks):
        if rank in t.iterative:
            own = [s for s in idx.free_symbols if s in ivars and ivars[s].name == rank]
            if len(own) == 1 and is_zero(idx - own[0] - 1):
                return own[0]
    return None


def _is_carried(c: Cascade, producer: int, consumer: int, tensor: str) -> bool:
    v = _writes_shifted(c, producer)
    if v is None:
        return False
    t = c.tensors[tensor]
    pos = [k for k, r in enumerate(t.ranks) if r in t.iterative and c.index_vars().get(v) is not None
           and c.index_vars()[v].name == r]
    for a in c.einsums[consumer].operands():
        if a.tensor == tensor and pos and not is_zero(a.indices[pos[0]] - v):
            return False
    return bool(pos)


def schedule(c: Cascade) -> list[Group]:
    """Groups in an order that respects every dependency; raises on an illegal cycle."""
    g = nx.DiGraph()
    g.add_nodes_from(range(len(c.einsums)))
    carried: set[tuple[int, int]] = set()
    for j, e in enumerate(c.einsums):
        for t in e.operand_tensors():
            for i in c.producers(t):
                g.add_edge(i, j)
                if _is_carried(c, i, j, t):
                    carried.add((i, j))
    cond = nx.condensation(g)
    groups: list[Group] = []
    for node in nx.lexicographical_topological_sort(cond, key=lambda n: min(cond.nodes[n]["members"])):
        members = sorted(cond.nodes[node]["members"])
        if len(members) == 1 and not g.has_edge(members[0], members[0]):
            groups.append(Group((members[0],)))
            continue
        inner = nx.DiGraph()
        inner.add_nodes_from(members)
        inner.add_edges_from((i, j) for i, j in g.subgraph(members).edges if (i, j) not in carried)
        loop_vars = {_writes_shifted(c, i) for i in members} - {None}
        if not nx.is_directed_acyclic_graph(inner) or len(loop_vars) != 1:
            names = ", ".join(c.einsums[i].name for i in members)
            raise ValidationError(
                f"Einsum {c.einsums[members[0]].name}: cycle through {names} is not a recurrence over "
                "one iterative rank (write at r+1, read at r)")
        order = tuple(nx.lexicographical_topological_sort(inner))
        groups.append(Group(order, loop_vars.pop()))
    return groups
