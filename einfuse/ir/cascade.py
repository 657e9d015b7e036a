"""A cascade: a DAG of Einsums over declared ranks and tensors, with declared inputs and outputs.

Recurrences over iterative ranks (``RM[m1+1,p] = max(RM[m1,p], LM[m1,p])``) are the only cycles a
cascade may contain; :mod:`einfuse.ir.validate` checks that. The DAG is exposed as a networkx graph
whose nodes are Einsum positions, so passes and executors can order, group and fuse Einsums.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import networkx as nx
import sympy

from einfuse.ir.captures import Capture
from einfuse.ir.einsum import Einsum
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, Partition, Rank, index_symbol, size_symbol
from einfuse.ir.tensor import Tensor


@dataclass(frozen=True, eq=False)
class Cascade:
    """An Einsum cascade.

    ``params`` gives default values for size symbols that are not tensor extents (window sizes, tile
    sizes, kernel sizes...). ``attrs`` carries front-end facts that back ends may use as hints (e.g.
    ``{"family": "softmax"}``); nothing semantic may live only there.
    """

    name: str
    ranks: dict[str, Rank]
    tensors: dict[str, Tensor]
    einsums: tuple[Einsum, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    partitions: tuple[Partition, ...] = ()
    params: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)
    captures: dict[str, Capture] = field(default_factory=dict)
    """Captured tensors (:mod:`einfuse.ir.captures`): extra inputs read by gathers inside index
    expressions (``idx(rel_bias(p - m + 52))``, ``Eq(doc_ids(p), doc_ids(m))``)."""

    # ---- lookups -------------------------------------------------------------------------------
    def rank_of_index(self, sym: sympy.Symbol) -> Rank | None:
        """The rank whose index variable is ``sym`` (None for b, h and size symbols)."""
        for r in self.ranks.values():
            if r.index == sym:
                return r
        return None

    def index_vars(self) -> dict[sympy.Symbol, Rank]:
        return {r.index: r for r in self.ranks.values()}

    def iteration_vars(self, e: Einsum) -> list[sympy.Symbol]:
        """Rank index variables of an Einsum's iteration space: output ones first, then reduced."""
        ivars = self.index_vars()
        out = [s for s in _ordered_symbols(e.output.indices) if s in ivars]
        rest = sorted((s for s in e.all_symbols() if s in ivars and s not in out), key=str)
        return out + rest

    def reduced_vars(self, e: Einsum) -> list[sympy.Symbol]:
        outs = e.output_symbols()
        return [s for s in self.iteration_vars(e) if s not in outs]

    def producers(self, tensor: str) -> list[int]:
        return [i for i, e in enumerate(self.einsums) if e.output.tensor == tensor]

    def consumers(self, tensor: str) -> list[int]:
        return [i for i, e in enumerate(self.einsums) if tensor in e.operand_tensors()]

    def intermediates(self) -> list[str]:
        return [t for t in self.tensors if t not in self.inputs and t not in self.outputs]

    def partition_of(self, rank: str) -> Partition | None:
        for p in self.partitions:
            if p.parent == rank:
                return p
        return None

    def size_symbols(self) -> set[sympy.Symbol]:
        """Every size symbol the cascade's extents, indices and constraints mention."""
        syms: set[sympy.Symbol] = set()
        for r in self.ranks.values():
            syms |= r.extent.free_symbols
        ivars = set(self.index_vars()) | {BATCH_INDEX, HEAD_INDEX}
        for e in self.einsums:
            syms |= {s for s in e.all_symbols() if s not in ivars}
        return syms

    def graph(self) -> nx.MultiDiGraph:
        """Einsum-level dependency graph; edges carry the tensor that flows along them."""
        g = nx.MultiDiGraph()
        for i, e in enumerate(self.einsums):
            g.add_node(i, einsum=e)
        for j, e in enumerate(self.einsums):
            for t in e.operand_tensors():
                for i in self.producers(t):
                    g.add_edge(i, j, tensor=t)
        return g

    def tensor_graph(self) -> nx.DiGraph:
        """Tensor-level dataflow graph (operand -> output), used for display and pass analysis."""
        g = nx.DiGraph()
        g.add_nodes_from(self.tensors)
        for e in self.einsums:
            for t in e.operand_tensors():
                g.add_edge(t, e.output.tensor)
        return g

    def extent(self, rank: str) -> sympy.Expr:
        return self.ranks[rank].extent

    def with_einsums(self, einsums: Iterable[Einsum], **changes: object) -> Cascade:
        return replace(self, einsums=tuple(einsums), **changes)

    def replace(self, **changes: object) -> Cascade:
        return replace(self, **changes)

    def __str__(self) -> str:
        from einfuse.ir.printer import format_cascade

        return format_cascade(self)


def _ordered_symbols(exprs: Iterable[sympy.Expr]) -> list[sympy.Symbol]:
    out: list[sympy.Symbol] = []
    for ex in exprs:
        for s in sorted(sympy.sympify(ex).free_symbols, key=str):
            if s not in out:
                out.append(s)
    return out


def default_rank(name: str) -> Rank:
    return Rank(name, size_symbol(name))


__all__ = ["Cascade", "default_rank", "index_symbol"]
