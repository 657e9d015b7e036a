"""Bitwise and, or, xor of integer index expressions, as sympy functions.

sympy has no integer bitwise operators, and a mask such as a Morton (Z-order) interleave or a
``(q & 63) < 8`` stride test needs them. These are plain :class:`sympy.Function` classes: they fold
on integer arguments (two's complement, as Python's ``&``), carry the assumptions the printers rely
on (integer; non-negative when the arguments are), print as ``bitand(p, 63)`` in the text form and
parse back by that name. Shifts by a constant need no function: ``x << k`` is ``x * 2**k`` and
``x >> k`` is ``floor(x / 2**k)`` (both exact for negative ``x`` too).

Every evaluator of index expressions knows them: :mod:`einfuse.ir.symeval` (NumPy),
``torch_eval`` (torch), the Triton ``index_printer`` and the interval bounds of block sparsity.
"""

from __future__ import annotations

import operator

import sympy


class _Bitwise(sympy.Function):
    nargs = 2
    _op = staticmethod(operator.and_)

    @classmethod
    def eval(cls, a: sympy.Basic, b: sympy.Basic) -> sympy.Basic | None:
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(cls._op(int(a), int(b)))
        return None

    def _eval_is_integer(self) -> bool:
        return True

    def _eval_is_nonnegative(self) -> bool | None:
        return True if all(a.is_nonnegative for a in self.args) else None


class bitand(_Bitwise):  # noqa: N801  (printed and parsed by this name, like sympy's floor)
    """``a & b`` of two integers."""

    _op = staticmethod(operator.and_)

    def _eval_is_nonnegative(self) -> bool | None:
        return True if any(a.is_nonnegative for a in self.args) else None


class bitor(_Bitwise):  # noqa: N801
    """``a | b`` of two integers."""

    _op = staticmethod(operator.or_)


class bitxor(_Bitwise):  # noqa: N801
    """``a ^ b`` of two integers."""

    _op = staticmethod(operator.xor)


BITWISE: dict[str, type[sympy.Function]] = {"bitand": bitand, "bitor": bitor, "bitxor": bitxor}
"""Name -> function class, for parsers and printers."""

NUMPY_NAMES = {bitand: "bitwise_and", bitor: "bitwise_or", bitxor: "bitwise_xor"}
"""The NumPy / torch function of each class (``np.bitwise_and``, ``torch.bitwise_and``, ...)."""

TRITON_INFIX = {bitand: "&", bitor: "|", bitxor: "^"}


def shift_left(x: sympy.Expr, k: int) -> sympy.Expr:
    """``x << k`` for a constant ``k >= 0``."""
    return x * sympy.Integer(2) ** k


def shift_right(x: sympy.Expr, k: int) -> sympy.Expr:
    """``x >> k`` for a constant ``k >= 0`` (an arithmetic shift: floor division by ``2**k``)."""
    return sympy.floor(x / sympy.Integer(2) ** k)


__all__ = ["BITWISE", "NUMPY_NAMES", "TRITON_INFIX", "bitand", "bitor", "bitxor", "shift_left", "shift_right"]
