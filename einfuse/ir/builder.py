"""Building a cascade in Python: ranks, tensors and Einsums accumulated, validated once at the end.

The DSL (:mod:`einfuse.frontends.dsl`) traces user functions into expressions and assembles them
with :class:`CascadeBuilder`; the plan layer restates kernel plans as cascades with it too (the plan
check), which is why it lives in the IR and not in a front end.
"""

from __future__ import annotations

import sympy

from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Expr
from einfuse.ir.ranks import Rank, index_symbol
from einfuse.ir.tensor import Tensor
from einfuse.ir.validate import validate


def acc(tensor: str, *indices: sympy.Expr) -> Access:
    return Access(tensor, tuple(indices))


class CascadeBuilder:
    """Accumulates ranks, tensors and Einsums; ``build()`` validates and returns the cascade."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ranks: dict[str, Rank] = {}
        self.tensors: dict[str, Tensor] = {}
        self.einsums: list[Einsum] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.params: dict[str, float] = {}
        self.attrs: dict[str, object] = {}
        self.captures: dict = {}  # name -> einfuse.ir.captures.Capture

    def rank(self, *names: str) -> CascadeBuilder:
        for n in names:
            self.ranks.setdefault(n, Rank.of(n))
        return self

    def input(self, name: str, *ranks: str, dtype: str = "f32") -> Access:
        self.rank(*ranks)
        self.tensors[name] = Tensor(name, ranks, dtype)
        self.inputs.append(name)
        return acc(name, *(index_symbol(r) for r in ranks))

    def tensor(self, name: str, *ranks: str, output: bool = False) -> None:
        self.rank(*ranks)
        self.tensors[name] = Tensor(name, ranks)
        if output:
            self.outputs.append(name)

    def einsum(self, name: str, ranks: tuple[str, ...], expr: Expr, reduce: str | None = "sum",
               where: sympy.Basic | None = None, comment: str = "", output: bool = False) -> Access:
        """Declare tensor ``name[ranks]`` and the Einsum computing it; returns an access to it."""
        if name not in self.tensors:
            self.tensor(name, *ranks, output=output)
        out = acc(name, *(index_symbol(r) for r in ranks))
        self.einsums.append(Einsum(out, expr, reduce, where, comment))
        return out

    def build(self) -> Cascade:
        c = Cascade(self.name, dict(self.ranks), dict(self.tensors), tuple(self.einsums),
                    tuple(self.inputs), tuple(self.outputs), (), dict(self.params), dict(self.attrs),
                    dict(self.captures))
        # Einsums that reduce over nothing carry no reduction (canonical form, as the parser reads it)
        einsums = tuple(
            ev if c.reduced_vars(ev) else Einsum(ev.output, ev.expr, None, ev.where, ev.comment)
            for ev in c.einsums)
        return validate(c.with_einsums(einsums))
