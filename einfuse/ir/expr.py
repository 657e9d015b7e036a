"""Value expressions on the right-hand side of an Einsum.

An expression is a small immutable tree: tensor accesses, constants, index values (a symbolic
function of rank indices, e.g. ``m - p`` for ALiBi), map operators (``+ - * / max min``), unary
operators (``exp``, ``sigmoid``, ...) and a ``where`` select on an index predicate or on a
comparison of values (``where(S[m,p] > 0, ...)``). Index arithmetic stays in sympy so that passes
can reason about it; value arithmetic stays in this tree so that back ends can emit it one node at
a time.

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
    "sin", "cos", "tan",
)
COMPARE_OPS: dict[str, str] = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
"""Comparisons of values (a :class:`Compare` condition) and their infix spelling."""
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

    def __abs__(self) -> Expr:
        return unary("abs", self)

    # ordering builds a condition on values (``where(s > 0, s, 0.1 * s)``); ``==`` stays structural
    # equality of trees (passes compare expressions), so equality of values is ``ef.eq(a, b)``
    def __lt__(self, other: ExprLike) -> Compare | sympy.Basic:
        return compare("lt", self, other)

    def __le__(self, other: ExprLike) -> Compare | sympy.Basic:
        return compare("le", self, other)

    def __gt__(self, other: ExprLike) -> Compare | sympy.Basic:
        return compare("gt", self, other)

    def __ge__(self, other: ExprLike) -> Compare | sympy.Basic:
        return compare("ge", self, other)

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


class _Logic:
    """``&``, ``|``, ``~`` on value conditions build a :class:`Condition` (for :func:`select`)."""

    def __and__(self, other: object) -> Condition:
        return Condition("and", (self, _as_condition(other)))

    def __rand__(self, other: object) -> Condition:
        return Condition("and", (_as_condition(other), self))

    def __or__(self, other: object) -> Condition:
        return Condition("or", (self, _as_condition(other)))

    def __ror__(self, other: object) -> Condition:
        return Condition("or", (_as_condition(other), self))

    def __invert__(self) -> Condition:
        return Condition("not", (self,))

    def __bool__(self) -> bool:
        raise TypeError("a comparison of scores has no truth value while tracing: use ef.where(cond, a, b) "
                        "instead of if/else, and & | ~ instead of and/or/not")


@dataclass(frozen=True, eq=True)
class Compare(_Logic, Expr):
    """``left <op> right`` on values, e.g. ``S[m,p] > 0``: a boolean that only a :class:`Select`
    condition holds (comparisons of index values are sympy predicates instead)."""

    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    @property
    def free_symbols(self) -> set[sympy.Symbol]:
        """Symbols the comparison mentions, like a sympy predicate's (readers of ``Select.cond``)."""
        return index_symbols(self)


@dataclass(frozen=True)
class Condition(_Logic):
    """A logical combination (``and``, ``or``, ``not``) of :class:`Compare` conditions and sympy
    predicates, built while tracing a score_mod. Not an IR node: :func:`select` expands it into
    nested selects (``where(a & b, x, y)`` is ``where(a, where(b, x, y), y)``)."""

    op: str
    args: tuple[object, ...]


def _as_condition(c: object) -> object:
    if isinstance(c, (Compare, Condition)):
        return c
    if hasattr(c, "_sympy_") and not isinstance(c, sympy.Basic):
        c = c._sympy_()
    if isinstance(c, sympy.Basic) and (c.is_Relational or isinstance(c, sympy.logic.boolalg.Boolean)):
        return c
    raise TypeError(f"{c!r} is not a condition; combine comparisons (s > 0, q >= kv) with & | ~")


@dataclass(frozen=True, eq=True)
class Select(Expr):
    """``where(cond, then, otherwise)``: ``cond`` is a sympy predicate over indices or a
    :class:`Compare` of values."""

    cond: sympy.Basic | Compare
    then: Expr
    otherwise: Expr

    def children(self) -> tuple[Expr, ...]:
        if isinstance(self.cond, Compare):
            return (self.cond, self.then, self.otherwise)
        return (self.then, self.otherwise)


_SYMPY_BINARY: dict[str, Callable[[sympy.Expr, sympy.Expr], sympy.Expr]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "max": sympy.Max,
    "min": sympy.Min,
}


def as_expr(value: ExprLike) -> Expr:
    """Lift a Python number or sympy index expression into an expression node (objects with a
    ``_sympy_`` method, such as the DSL's traced indices, count as sympy expressions)."""
    if isinstance(value, Compare):
        raise TypeError("a comparison of values is not a value; use where(cond, a, b)")
    if isinstance(value, Expr):
        return value
    if isinstance(value, Condition):
        raise TypeError("a condition is not a value; use where(cond, a, b)")
    if hasattr(value, "_sympy_") and not isinstance(value, sympy.Basic):
        value = value._sympy_()
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
    left, right = as_expr(left), as_expr(right)
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


_SYMPY_COMPARE = {"lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge, "eq": sympy.Eq,
                  "ne": sympy.Ne}


def compare(op: str, left: ExprLike, right: ExprLike) -> Compare | sympy.Basic:
    """``left <op> right``: a sympy predicate when both sides are index values or integer constants
    (the canonical form of an index comparison), else a :class:`Compare` of values."""
    if op not in COMPARE_OPS:
        raise ValueError(f"unknown comparison {op!r}; expected one of {', '.join(COMPARE_OPS)}")
    a, b = as_expr(left), as_expr(right)
    sa, sb = _as_sympy(a), _as_sympy(b)
    if sa is not None and sb is not None:
        return _SYMPY_COMPARE[op](sa, sb)
    if isinstance(a, Const) and isinstance(b, Const):
        return sympy.true if _SYMPY_COMPARE[op](a.value, b.value) else sympy.false
    return Compare(op, a, b)


def unary(op: str, arg: Expr) -> Expr:
    """Build a unary node; ``neg`` of a constant or index value folds."""
    if op not in UNARY_OPS:
        raise ValueError(f"unknown unary operator {op!r}; expected one of {', '.join(UNARY_OPS)}")
    arg = as_expr(arg)
    if op == "neg":
        if isinstance(arg, Const):
            return Const(-arg.value)
        s = _as_sympy(arg)
        if s is not None:
            return _index_or_const(-s)
    return Unary(op, arg)


def select(cond: sympy.Basic | Compare | Condition, then: ExprLike, otherwise: ExprLike) -> Expr:
    """``where(cond, then, otherwise)``; a constant predicate folds to one branch, and a
    :class:`Condition` expands into nested selects of its comparisons."""
    if isinstance(cond, Condition):
        if cond.op == "not":
            return select(cond.args[0], otherwise, then)
        a, b = cond.args
        if cond.op == "and":
            return select(a, select(b, then, otherwise), otherwise)
        return select(a, then, select(b, then, otherwise))
    if isinstance(cond, Compare):
        return Select(cond, as_expr(then), as_expr(otherwise))
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
        elif isinstance(n, Select) and not isinstance(n.cond, Compare):
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
        return select(substitute(e.cond, mapping) if isinstance(e.cond, Compare) else e.cond.subs(mapping),
                      substitute(e.then, mapping), substitute(e.otherwise, mapping))
    if isinstance(e, Compare):
        return compare(e.op, substitute(e.left, mapping), substitute(e.right, mapping))
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
        return select(map_accesses(e.cond, fn) if isinstance(e.cond, Compare) else e.cond,
                      map_accesses(e.then, fn), map_accesses(e.otherwise, fn))
    if isinstance(e, Compare):
        return compare(e.op, map_accesses(e.left, fn), map_accesses(e.right, fn))
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
