"""Value expressions on the right-hand side of an Einsum.

An expression is a small immutable tree: tensor accesses, constants, index values (a symbolic
function of rank indices, e.g. ``m - p`` for ALiBi), map operators (``+ - * / max min``), unary
operators (``exp``, ``sigmoid``, ...) and a ``where`` select on an index predicate. Index arithmetic
stays in sympy so that passes can reason about it; value arithmetic stays in this tree so that
back ends can emit it one node at a time.

Nodes are built through :func:`binary`, :func:`unary` and :func:`select`, which fold constant and
index-only sub-trees. That canonical form is what makes print -> parse round-trip exactly, and it is
why Python operators on nodes (used when a user's score function is traced) go through them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Union

import sympy

BINARY_OPS: tuple[str, ...] = ("add", "sub", "mul", "div", "max", "min")
UNARY_OPS: tuple[str, ...] = (
    "exp", "log", "neg", "sigmoid", "relu", "reciprocal", "tanh", "sqrt", "abs", "elu1", "square",
)
INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2}

ExprLike = Union["Expr", int, float, sympy.Expr]


class Expr:
    """Base of value-expression nodes; Python operators build canonical trees (for tracing)."""

    def __add__(self, other: ExprLike) -> Expr:
        return binary("add", self, as_expr(other))

    def __radd__(self, other: ExprLike) -> Expr:
        return binary("add", as_expr(other), self)

    def __sub__(self, other: ExprLike) -> Expr:
        return binary("sub", self, as_expr(other))

    def __rsub__(self, other: ExprLike) -> Expr:
        return binary("sub", as_expr(other), self)

    def __mul__(self, other: ExprLike) -> Expr:
        return binary("mul", self, as_expr(other))

    def __rmul__(self, other: ExprLike) -> Expr:
        return binary("mul", as_expr(other), self)

    def __truediv__(self, other: ExprLike) -> Expr:
        return binary("div", self, as_expr(other))

    def __rtruediv__(self, other: ExprLike) -> Expr:
        return binary("div", as_expr(other), self)

    def __neg__(self) -> Expr:
        return unary("neg", self)

    def exp(self) -> Expr:
        return unary("exp", self)

    def tanh(self) -> Expr:
        return unary("tanh", self)

    def sigmoid(self) -> Expr:
        return unary("sigmoid", self)

    def children(self) -> tuple[Expr, ...]:
        return ()


@dataclass(frozen=True, eq=True)
class Const(Expr):
    """A scalar constant (``inf`` and ``-inf`` allowed)."""

    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", float(self.value))


@dataclass(frozen=True, eq=True)
class Empty(Expr):
    """The absent value: an element that is not in the tensor's fibertree.

    Used to initialise running reductions (the running max starts empty, not at ``-inf``), so that a
    query row whose keys are all masked stays empty through the whole recurrence and ends as 0.
    """


@dataclass(frozen=True, eq=True)
class IndexValue(Expr):
    """The numeric value of an index expression (a sympy expression over rank indices, b, h)."""

    expr: sympy.Expr


@dataclass(frozen=True, eq=True)
class Access(Expr):
    """Read of ``tensor`` at ``indices`` (sympy expressions, e.g. ``m``, ``m1*M0 + m0``, ``m1 + 1``)."""

    tensor: str
    indices: tuple[sympy.Expr, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(sympy.sympify(i) for i in self.indices))


@dataclass(frozen=True, eq=True)
class Binary(Expr):
    """A map operator applied elementwise to two operands."""

    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, eq=True)
class Unary(Expr):
    """A unary operator applied elementwise."""

    op: str
    arg: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.arg,)


@dataclass(frozen=True, eq=True)
class Select(Expr):
    """``where(cond, then, otherwise)`` with ``cond`` a sympy predicate over indices."""

    cond: sympy.Basic
    then: Expr
    otherwise: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.then, self.otherwise)


_SYMPY_BINARY: dict[str, Callable[[sympy.Expr, sympy.Expr], sympy.Expr]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


def as_expr(value: ExprLike) -> Expr:
    """Lift a Python number or sympy index expression into an expression node."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not a value; use where(cond, a, b) for predicates")
    if isinstance(value, (int, float)):
        return Const(float(value))
    if isinstance(value, sympy.Basic):
        if value.is_Relational or isinstance(value, (sympy.logic.boolalg.BooleanFunction,
                                                     sympy.logic.boolalg.BooleanAtom)):
            raise TypeError(f"predicate {value} used as a value; use where(cond, a, b)")
        return _index_or_const(sympy.sympify(value))
    raise TypeError(f"cannot use {type(value).__name__} {value!r} in an einfuse expression")


def _index_or_const(e: sympy.Expr) -> Expr:
    if e.is_number:
        if e in (sympy.oo, -sympy.oo):
            return Const(math.inf if e == sympy.oo else -math.inf)
        return Const(float(e))
    return IndexValue(e)


def _as_sympy(e: Expr) -> sympy.Expr | None:
    """The sympy form of a constant or index value (None for anything else)."""
    if isinstance(e, IndexValue):
        return e.expr
    if isinstance(e, Const) and math.isfinite(e.value) and e.value.is_integer():
        # only integers fold: a sympy Float would print with fewer digits than the float holds
        return sympy.Integer(int(e.value))
    return None


def binary(op: str, left: Expr, right: Expr) -> Expr:
    """Build a map-operator node, folding index/constant arithmetic into one leaf."""
    if op not in BINARY_OPS:
        raise ValueError(f"unknown map operator {op!r}; expected one of {', '.join(BINARY_OPS)}")
    if isinstance(left, Const) and isinstance(right, Const):
        a, b = left.value, right.value
        if op == "div":
            folded = a / b if b != 0 else (math.copysign(math.inf, a) if a else math.nan)
        else:
            folded = {"add": a + b, "sub": a - b, "mul": a * b, "max": max(a, b), "min": min(a, b)}[op]
        if not math.isnan(folded):  # inf - inf stays an expression: NaN constants compare unequal
            return Const(folded)
    ls, rs = _as_sympy(left), _as_sympy(right)
    if ls is not None and rs is not None and op in _SYMPY_BINARY:
        folded_index = sympy.sympify(_SYMPY_BINARY[op](ls, rs))
        if not folded_index.has(sympy.nan, sympy.zoo):  # x/0 stays an expression
            return _index_or_const(folded_index)
    return Binary(op, left, right)


def unary(op: str, arg: Expr) -> Expr:
    """Build a unary node; ``neg`` of a constant or index value folds."""
    if op not in UNARY_OPS:
        raise ValueError(f"unknown unary operator {op!r}; expected one of {', '.join(UNARY_OPS)}")
    if op == "neg":
        if isinstance(arg, Const):
            return Const(-arg.value)
        s = _as_sympy(arg)
        if s is not None:
            return _index_or_const(-s)
    return Unary(op, arg)


def select(cond: sympy.Basic, then: ExprLike, otherwise: ExprLike) -> Expr:
    """``where(cond, then, otherwise)``; a constant predicate folds to one branch."""
    cond = sympy.sympify(cond)
    if cond is sympy.true:
        return as_expr(then)
    if cond is sympy.false:
        return as_expr(otherwise)
    return Select(cond, as_expr(then), as_expr(otherwise))


def walk(e: Expr) -> Iterator[Expr]:
    """Pre-order traversal of an expression tree."""
    yield e
    for c in e.children():
        yield from walk(c)


def accesses(e: Expr) -> list[Access]:
    """All tensor accesses in an expression, in left-to-right order."""
    return [n for n in walk(e) if isinstance(n, Access)]


def index_symbols(e: Expr) -> set[sympy.Symbol]:
    """Every sympy symbol an expression mentions (access indices, index values, predicates)."""
    out: set[sympy.Symbol] = set()
    for n in walk(e):
        if isinstance(n, Access):
            for i in n.indices:
                out |= i.free_symbols
        elif isinstance(n, IndexValue):
            out |= n.expr.free_symbols
        elif isinstance(n, Select):
            out |= n.cond.free_symbols
    return out


def substitute(e: Expr, mapping: dict) -> Expr:
    """Substitute sympy symbols everywhere in an expression (indices, index values, predicates)."""
    if not mapping:
        return e
    if isinstance(e, Access):
        return Access(e.tensor, tuple(sympy.sympify(i).subs(mapping) for i in e.indices))
    if isinstance(e, IndexValue):
        return _index_or_const(sympy.sympify(e.expr.subs(mapping)))
    if isinstance(e, Binary):
        return binary(e.op, substitute(e.left, mapping), substitute(e.right, mapping))
    if isinstance(e, Unary):
        return unary(e.op, substitute(e.arg, mapping))
    if isinstance(e, Select):
        return select(e.cond.subs(mapping), substitute(e.then, mapping), substitute(e.otherwise, mapping))
    return e


def rename_tensors(e: Expr, mapping: dict[str, str]) -> Expr:
    """Rename tensors in every access of an expression."""
    return map_accesses(e, lambda a: Access(mapping.get(a.tensor, a.tensor), a.indices))


def map_accesses(e: Expr, fn: Callable[[Access], Expr]) -> Expr:
    """Rebuild an expression with every access replaced by ``fn(access)``."""
    if isinstance(e, Access):
        return fn(e)
    if isinstance(e, Binary):
        return binary(e.op, map_accesses(e.left, fn), map_accesses(e.right, fn))
    if isinstance(e, Unary):
        return unary(e.op, map_accesses(e.arg, fn))
    if isinstance(e, Select):
        return select(e.cond, map_accesses(e.then, fn), map_accesses(e.otherwise, fn))
    return e


# Functional helpers for traced user code (score_mod functions): ef.exp(x), ef.tanh(x), ...
def exp(x: ExprLike) -> Expr:
    return unary("exp", as_expr(x))


def log(x: ExprLike) -> Expr:
    return unary("log", as_expr(x))


def tanh(x: ExprLike) -> Expr:
    return unary("tanh", as_expr(x))


def sigmoid(x: ExprLike) -> Expr:
    return unary("sigmoid", as_expr(x))


def relu(x: ExprLike) -> Expr:
    return unary("relu", as_expr(x))


def reciprocal(x: ExprLike) -> Expr:
    return unary("reciprocal", as_expr(x))


def maximum(a: ExprLike, b: ExprLike) -> Expr:
    return binary("max", as_expr(a), as_expr(b))


def minimum(a: ExprLike, b: ExprLike) -> Expr:
    return binary("min", as_expr(a), as_expr(b))


def where(cond: sympy.Basic, then: ExprLike, otherwise: ExprLike) -> Expr:
    return select(cond, then, otherwise)
