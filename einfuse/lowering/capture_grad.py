"""Gradients of float captured tensors: the derivative of the score with respect to each read.

A learned bias table (T5/Swin relative positions, ALiBi slopes as a parameter, per-head gates) is
read inside the score: ``s = x/sqrt(E) + table(h, p - m + 52)``. With ``dS[m,p]`` the gradient of
the loss with respect to the score (the backward plan's ``P (dP - D)``), the table's gradient is a
scatter-add over every kept pair::

    dTable[idx_r(p, m, h, b)] += dS[m,p] * ds/dr (x, p, m, h, b)      for every read r of the table

``ds/dr`` comes from the chain rule over the score's IR tree, the same rules as ``ds/dx``
(:mod:`einfuse.lowering.backward`), with the read as the variable: inside an index value the
derivative is sympy's (``d/dr (r * (m - p)) = m - p``), and the Q.K product is a constant. Indices
are clamped as in the forward pass, so a read clamped to the table's edge sends its gradient there.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.captures import kind_of, reads
from einfuse.ir.expr import Access, Binary, Compare, Const, Expr, IndexValue, Select, Unary, as_expr, walk
from einfuse.lowering.backward import STEP, _add, _div, _mul, _sub, _u, _unary_derivative


@dataclass(frozen=True)
class ReadGrad:
    """One read of a float captured tensor in the score and ``ds/dr`` there."""

    name: str
    read: sympy.Basic  # the read NAME(i0, i1, ...) (its indices say where the gradient goes)
    dscore: Expr       # ds/dr over the Q.K leaf and index values


def read_gradients(score: Expr) -> tuple[ReadGrad, ...]:
    """``ds/dr`` for every distinct read of a float captured tensor in ``score``, by name then text."""
    found: set = set()
    for n in walk(score):
        if isinstance(n, IndexValue):
            found |= {r for r in reads(n.expr) if kind_of(r) == "float"}
        elif isinstance(n, Select) and isinstance(n.cond, sympy.Basic):
            pass  # a read in a predicate changes the score only where it flips: derivative 0 a.e.
    out = []
    for r in sorted(found, key=lambda r: (r.func.__name__, str(r))):
        out.append(ReadGrad(r.func.__name__, r, _dr(score, r)))
    return tuple(out)


def _dr(e: Expr, r: sympy.Basic) -> Expr:
    """``d e / d r`` (see the module docstring); the rules mirror ``lowering.backward._d``."""
    if isinstance(e, (Access, Const)):
        return Const(0.0)
    if isinstance(e, IndexValue):
        if r not in e.expr.atoms(type(r)):
            return Const(0.0)
        d = sympy.diff(e.expr, r)
        if d.has(sympy.Derivative, sympy.Subs):
            raise CodegenError(f"cannot differentiate {e.expr} with respect to the captured read {r}")
        return as_expr(d)
    if isinstance(e, Select):
        then, other = _dr(e.then, r), _dr(e.otherwise, r)
        return then if then == other else Select(e.cond, then, other)
    if isinstance(e, Unary):
        du = _dr(e.arg, r)
        if isinstance(du, Const) and du.value == 0.0:
            return Const(0.0)
        return _mul(_unary_derivative(e.op, e.arg, e), du)
    if isinstance(e, Binary):
        a, b = e.left, e.right
        da, db = _dr(a, r), _dr(b, r)
        if e.op == "add":
            return _add(da, db)
        if e.op == "sub":
            return _sub(da, db)
        if e.op == "mul":
            return _add(_mul(da, b), _mul(a, db))
        if e.op == "div":
            return _div(_sub(_mul(da, b), _mul(a, db)), _mul(b, b))
        if e.op in ("max", "min"):
            if da == db:
                return da
            gt = _u(STEP, _sub(a, b) if e.op == "max" else _sub(b, a))
            return _add(_mul(gt, da), _mul(_sub(Const(1.0), gt), db))
    if isinstance(e, Compare):
        raise CodegenError("a comparison is not a value")
    raise CodegenError(f"cannot differentiate score node {e!r} with respect to a captured tensor")


__all__ = ["ReadGrad", "read_gradients"]
