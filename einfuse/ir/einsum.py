"""One extended Einsum: an output access, a value expression, a reduction and a constraint."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.ir.expr import Access, Expr, accesses, index_symbols

REDUCE_OPS = ("sum", "max", "min")
REDUCE_IDENTITY = {"sum": 0.0, "max": float("-inf"), "min": float("inf")}


@dataclass(frozen=True)
class Einsum:
    """``output = reduce_{ranks not in output} expr  : where``.

    ``reduce`` names the reduction applied over every iteration rank that does not appear in the
    output's indices (``sum`` is the Einsum default, ``None`` means the Einsum must not reduce).
    ``where`` is an iteration-space constraint: points where it is false are not in the iteration
    space at all, so they contribute nothing to a reduction and produce no output element.
    """

    output: Access
    expr: Expr
    reduce: str | None = "sum"
    where: sympy.Basic | None = None
    comment: str = ""

    def __post_init__(self) -> None:
        if self.reduce is not None and self.reduce not in REDUCE_OPS:
            raise ValueError(f"{self.name}: unknown reduction {self.reduce!r}")
        if self.where is not None:
            w = sympy.sympify(self.where)
            object.__setattr__(self, "where", None if w is sympy.true else w)

    @property
    def name(self) -> str:
        return self.output.tensor

    def operands(self) -> list[Access]:
        return accesses(self.expr)

    def operand_tensors(self) -> list[str]:
        seen: list[str] = []
        for a in self.operands():
            if a.tensor not in seen:
                seen.append(a.tensor)
        return seen

    def output_symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for i in self.output.indices:
            out |= i.free_symbols
        return out

    def all_symbols(self) -> set[sympy.Symbol]:
        syms = self.output_symbols() | index_symbols(self.expr)
        if self.where is not None:
            syms |= self.where.free_symbols
        return syms

    def label(self) -> str:
        idx = ",".join(str(i) for i in self.output.indices)
        return f"{self.output.tensor}[{idx}]"
