"""The symbolic values a score_mod / mask_mod sees while it is traced, and the ``ef.*`` helpers.

``ef.attention`` calls the user's functions once with :class:`Index` arguments for ``b``, ``h``,
``q_idx`` and ``kv_idx``. An :class:`Index` wraps a sympy expression and gives every Python
operator its FlexAttention meaning:

* arithmetic (``+ - * / // % **``, ``abs``, unary ``-``) gives an :class:`Index`;
* comparisons, ``==`` and ``!=`` included, give a :class:`Predicate` (a sympy relation). On bare
  sympy symbols ``q == kv`` would be Python's structural equality, decided at trace time: that is
  the bug this wrapper exists for;
* on predicates ``&``, ``|``, ``^``, ``~`` are logical; on indices they are bitwise (``bitand``,
  ``bitor``, ``bitxor`` of :mod:`einfuse.ir.bitwise`), and ``<<``/``>>`` shift by a constant;
* ``if``, ``and``/``or``/``not`` and Python's ``min``/``max`` need a truth value that does not
  exist yet: they raise and name the operator or ``ef`` helper to use instead.

Both classes expose ``_sympy_`` (so ``sympy.Abs(q - kv)`` and other sympy functions keep working)
and a high ``_op_priority`` (so ``sympy_expr * q`` stays an :class:`Index`). The score is an IR
expression (:class:`~einfuse.ir.expr.Expr`): ``s > 0`` is a comparison of values, ``ef.where`` on it
a select. A Python ``bool`` where a condition belongs means a comparison was decided by Python
(``==`` between plain sympy expressions); it raises with the fix instead of silently folding.
"""

from __future__ import annotations

from typing import Union

import sympy

from einfuse.errors import SpecError
from einfuse.ir import expr as ir
from einfuse.ir.bitwise import bitand, bitor, bitxor, shift_left, shift_right
from einfuse.ir.expr import Compare, Condition, Expr

Value = Union["Index", int, float, sympy.Expr, Expr]

PYTHON_BOOL_HINT = (
    "a comparison was decided by Python at trace time (== or != between plain sympy expressions, "
    "e.g. results of sympy.floor, compare structurally); compare the traced index arguments or their "
    "arithmetic (q // 32 == kv // 32), or use ef.eq / ef.ne")


def _sym(x: object, what: str = "operand") -> sympy.Basic:
    """The sympy form of an index-like operand; raises TypeError for anything else."""
    if isinstance(x, bool):
        raise SpecError(f"a Python bool ({x}) used as an index {what}: {PYTHON_BOOL_HINT}")
    if isinstance(x, (Index, Predicate)):
        return x.expr
    if isinstance(x, (int, float)):
        return sympy.sympify(x)
    if isinstance(x, sympy.Basic):
        return x
    raise TypeError(f"unsupported {what} {x!r}")


def is_index_like(x: object) -> bool:
    """An :class:`Index`, a number or a sympy expression (not a predicate, not a score value)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, (Index, int, float)):
        return True
    return isinstance(x, sympy.Expr)


def _no_truth(what: str) -> SpecError:
    return SpecError(f"{what} has no truth value while tracing: use & | ~ instead of and/or/not, "
                     "ef.where(cond, a, b) instead of if/else, ef.maximum/ef.minimum instead of max/min")


class _Traced:
    __slots__ = ("expr",)
    _op_priority = 100.0  # above sympy's 10: sympy defers mixed operators to ours

    def __init__(self, expr: sympy.Basic) -> None:
        self.expr = expr

    def _sympy_(self) -> sympy.Basic:
        return self.expr

    def __hash__(self) -> int:
        return hash(self.expr)

    def __repr__(self) -> str:
        return str(self.expr)


def _binary(fn):
    """An Index operator: index operands give an Index, a score operand defers to the Expr."""
    def op(self: Index, other: object) -> object:
        if isinstance(other, (Expr, Condition)) or not is_index_like(other) and not isinstance(other, bool):
            return NotImplemented
        return Index(fn(self.expr, _sym(other)))
    return op


def _rbinary(fn):
    def op(self: Index, other: object) -> object:
        if isinstance(other, (Expr, Condition)) or not is_index_like(other) and not isinstance(other, bool):
            return NotImplemented
        return Index(fn(_sym(other), self.expr))
    return op


def _comparison(op: str):
    def cmp(self: Index, other: object) -> object:
        if isinstance(other, Expr):  # a comparison with the score: a condition on values
            return ir.compare(op, ir.as_expr(self.expr), other)
        if isinstance(other, (Predicate, Condition)) or not (is_index_like(other) or isinstance(other, bool)):
            return NotImplemented
        return Predicate(ir._SYMPY_COMPARE[op](self.expr, _sym(other)))
    return cmp


def _shift(x: sympy.Expr, k: object, left: bool) -> sympy.Expr:
    kk = _sym(k, "shift amount")
    if not (kk.is_Integer and kk >= 0):
        raise SpecError(f"shift amounts must be integer constants >= 0, got {kk}")
    return shift_left(x, int(kk)) if left else shift_right(x, int(kk))


class Index(_Traced):
    """An integer-valued index expression being traced (``q_idx``, ``kv_idx // 32``, ...)."""

    __add__ = _binary(lambda a, b: a + b)
    __radd__ = _rbinary(lambda a, b: a + b)
    __sub__ = _binary(lambda a, b: a - b)
    __rsub__ = _rbinary(lambda a, b: a - b)
    __mul__ = _binary(lambda a, b: a * b)
    __rmul__ = _rbinary(lambda a, b: a * b)
    __truediv__ = _binary(lambda a, b: a / b)
    __rtruediv__ = _rbinary(lambda a, b: a / b)
    __floordiv__ = _binary(lambda a, b: sympy.floor(a / b))
    __rfloordiv__ = _rbinary(lambda a, b: sympy.floor(a / b))
    __mod__ = _binary(sympy.Mod)
    __rmod__ = _rbinary(sympy.Mod)
    __pow__ = _binary(lambda a, b: a ** b)
    __rpow__ = _rbinary(lambda a, b: a ** b)
    __and__ = _binary(bitand)
    __rand__ = _rbinary(bitand)
    __or__ = _binary(bitor)
    __ror__ = _rbinary(bitor)
    __xor__ = _binary(bitxor)
    __rxor__ = _rbinary(bitxor)
    __lt__ = _comparison("lt")
    __le__ = _comparison("le")
    __gt__ = _comparison("gt")
    __ge__ = _comparison("ge")
    __eq__ = _comparison("eq")  # type: ignore[assignment]
    __ne__ = _comparison("ne")  # type: ignore[assignment]
    __hash__ = _Traced.__hash__

    def __lshift__(self, k: object) -> Index:
        return Index(_shift(self.expr, k, left=True))

    def __rshift__(self, k: object) -> Index:
        return Index(_shift(self.expr, k, left=False))

    def __neg__(self) -> Index:
        return Index(-self.expr)

    def __pos__(self) -> Index:
        return self

    def __abs__(self) -> Index:
        return Index(sympy.Abs(self.expr))

    def __invert__(self) -> Index:
        return Index(-self.expr - 1)  # two's complement ~x

    def __bool__(self) -> bool:
        raise _no_truth(f"index {self.expr}")


def _logic(fn, reflected: bool = False):
    def op(self: Predicate, other: object) -> object:
        if isinstance(other, bool):
            raise SpecError(f"a Python bool ({other}) combined with the predicate {self.expr}: "
                            f"{PYTHON_BOOL_HINT}")
        if isinstance(other, (Compare, Condition)):
            return NotImplemented  # a condition on the score: ir's & | build a Condition
        if isinstance(other, Predicate):
            o = other.expr
        elif isinstance(other, sympy.Basic) and isinstance(other, sympy.logic.boolalg.Boolean):
            o = other
        else:
            return NotImplemented
        return Predicate(fn(o, self.expr) if reflected else fn(self.expr, o))
    return op


class Predicate(_Traced):
    """A boolean predicate over indices being traced (``q >= kv``, ``q // 32 == kv // 32``)."""

    __and__ = _logic(sympy.And)
    __rand__ = _logic(sympy.And, reflected=True)
    __or__ = _logic(sympy.Or)
    __ror__ = _logic(sympy.Or, reflected=True)
    __xor__ = _logic(sympy.Xor)
    __rxor__ = _logic(sympy.Xor, reflected=True)

    def __invert__(self) -> Predicate:
        return Predicate(sympy.Not(self.expr))

    def __eq__(self, other: object) -> Predicate:  # type: ignore[override]
        return Predicate(sympy.Equivalent(self.expr, _pred(other)))

    def __ne__(self, other: object) -> Predicate:  # type: ignore[override]
        return Predicate(sympy.Xor(self.expr, _pred(other)))

    __hash__ = _Traced.__hash__

    def __bool__(self) -> bool:
        # a predicate sympy decided (q >= 0, or q == q when sympy's cache compares two equal
        # arguments) has its truth value; anything else is only known per (q, kv) pair
        if self.expr is sympy.true or self.expr is sympy.false:
            return self.expr is sympy.true
        raise _no_truth(f"predicate {self.expr}")


def _pred(x: object) -> sympy.Basic:
    if isinstance(x, bool):
        raise SpecError(f"a Python bool ({x}) compared with a predicate: {PYTHON_BOOL_HINT}")
    if isinstance(x, Predicate):
        return x.expr
    if isinstance(x, sympy.Basic) and isinstance(x, sympy.logic.boolalg.Boolean):
        return x
    raise SpecError(f"{x!r} is not a predicate")


def wrap(x: sympy.Basic) -> Index | Predicate:
    """The traced wrapper of a sympy expression or predicate."""
    if isinstance(x, sympy.logic.boolalg.Boolean) or getattr(x, "is_Relational", False):
        return Predicate(x)
    return Index(x)


def unwrap(x: object) -> object:
    """sympy expressions in place of traced wrappers (anything else unchanged)."""
    return x.expr if isinstance(x, (Index, Predicate)) else x


def condition(cond: object) -> object:
    """A ``where`` condition as :func:`einfuse.ir.expr.select` takes it (sympy predicate, Compare
    or Condition); a Python bool raises, since it means a comparison was decided by Python."""
    if isinstance(cond, bool):
        raise SpecError(f"ef.where got the Python bool {cond} as its condition: {PYTHON_BOOL_HINT}")
    cond = unwrap(cond)
    if isinstance(cond, (Compare, Condition)):
        return cond
    if isinstance(cond, sympy.Basic) and (cond.is_Relational or isinstance(cond, sympy.logic.boolalg.Boolean)):
        return cond
    raise SpecError(f"ef.where needs a condition such as q >= kv or s > 0, got {cond!r}")


# ---- helpers exported as ef.* ---------------------------------------------------------------------

def where(cond: object, then: Value, otherwise: Value) -> Index | Expr:
    """``then`` where ``cond`` holds, else ``otherwise``: an :class:`Index` (a sympy Piecewise)
    when the condition is on indices and both branches are integer indices (so the result can be
    compared in a mask), else a score expression."""
    c = condition(cond)
    if isinstance(c, sympy.Basic) and _is_integer(then) and _is_integer(otherwise):
        t, o = _sym(then), _sym(otherwise)
        if c is sympy.true or c is sympy.false:
            return Index(t if c is sympy.true else o)
        return Index(sympy.Piecewise((t, c), (o, True)))
    return ir.select(c, unwrap(then), unwrap(otherwise))


def _is_integer(x: object) -> bool:
    """An integer-valued index operand (float branches such as ``-inf`` make a score select)."""
    return is_index_like(x) and not isinstance(x, float) and bool(_sym(x).is_integer)


def eq(a: Value, b: Value) -> Predicate | Compare | sympy.Basic:
    """``a == b``: a predicate on indices, or a condition on score values."""
    return _compare("eq", a, b)


def ne(a: Value, b: Value) -> Predicate | Compare | sympy.Basic:
    """``a != b``: a predicate on indices, or a condition on score values."""
    return _compare("ne", a, b)


def _compare(op: str, a: Value, b: Value) -> object:
    if is_index_like(a) and is_index_like(b):
        return Predicate(ir._SYMPY_COMPARE[op](_sym(a), _sym(b)))
    return ir.compare(op, unwrap(a), unwrap(b))


def abs(x: Value) -> Index | Expr:  # noqa: A001  (ef.abs, like torch.abs)
    """``|x|`` of an index (an :class:`Index`) or of a score value."""
    return Index(sympy.Abs(_sym(x))) if is_index_like(x) else ir.unary("abs", unwrap(x))


def maximum(a: Value, b: Value) -> Index | Expr:
    """Elementwise maximum: an :class:`Index` when both are indices, else a score expression."""
    if is_index_like(a) and is_index_like(b):
        return Index(sympy.Max(_sym(a), _sym(b)))
    return ir.binary("max", ir.as_expr(unwrap(a)), ir.as_expr(unwrap(b)))


def minimum(a: Value, b: Value) -> Index | Expr:
    """Elementwise minimum: an :class:`Index` when both are indices, else a score expression."""
    if is_index_like(a) and is_index_like(b):
        return Index(sympy.Min(_sym(a), _sym(b)))
    return ir.binary("min", ir.as_expr(unwrap(a)), ir.as_expr(unwrap(b)))


def clamp(x: Value, lo: Value | None = None, hi: Value | None = None) -> Index | Expr:
    """``min(max(x, lo), hi)`` (either bound may be omitted), on indices or scores."""
    out = x
    if lo is not None:
        out = maximum(out, lo)
    if hi is not None:
        out = minimum(out, hi)
    return out


def _unary(op: str):
    def fn(x: Value) -> Expr:
        return ir.unary(op, ir.as_expr(unwrap(x)))
    fn.__name__ = op
    fn.__doc__ = f"``{op}`` of a score value (or of an index, as a float)."
    return fn


exp, log, tanh, sigmoid, relu, reciprocal, sqrt, sin, cos, tan = (
    _unary(op) for op in ("exp", "log", "tanh", "sigmoid", "relu", "reciprocal", "sqrt", "sin", "cos", "tan"))

__all__ = ["Index", "Predicate", "abs", "clamp", "condition", "cos", "eq", "exp", "is_index_like", "log",
           "maximum", "minimum", "ne", "reciprocal", "relu", "sigmoid", "sin", "sqrt", "tan", "tanh",
           "unwrap", "where", "wrap"]
