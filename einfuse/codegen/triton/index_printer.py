"""Print sympy index expressions and predicates as Triton expressions.

The rules (exact floor division and Mod, the unsigned path, common denominators, range tests, value
kinds) are target-independent and live in :class:`einfuse.codegen.index_base.BaseIndexPrinter`;
this module only says how Triton spells them (``tl.where``, ``.to(tl.uint32)``, ``_floordiv``, ...).

This is the one sympy -> Triton printer: the attention generator (``emit.py``, through
``score_printer.py``) and the linear-attention and decode generators (``linear_emit.py``) all use it.
Names may be bound to ``tl.constexpr`` arguments (Python ints inside the kernel), so the printed
code never calls tensor methods on a bare name and the helpers are exact for Python ints as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import sympy

from einfuse.codegen.index_base import BaseIndexPrinter, Printed, common_form

__all__ = ["HELPERS", "IndexPrinter", "Printed", "common_form", "float_literal"]


class IndexPrinter(BaseIndexPrinter):
    """Prints sympy expressions with symbols replaced by Triton names (see :class:`BaseIndexPrinter`).

    ``tensors``: symbols whose Triton names are always int32 tensors (never constexpr): a
    non-negative numerator over them divides and takes remainders unsigned (one shift/and for powers
    of two, where signed // and % need a rounding fix-up; per element in a mask, that is most of its
    cost).
    """

    target = "Triton"
    UNARY = {
        "exp": "tl.exp({})",
        "log": "tl.log({})",
        "neg": "(-{})",
        "sigmoid": "_sigmoid({}, FAST_MATH)",
        "tanh": "_tanh({}, FAST_MATH)",
        "relu": "tl.maximum({}, 0.0)",
        "reciprocal": "(1.0 / {})",
        "sqrt": "tl.sqrt({})",
        "abs": "tl.abs({})",
        "elu1": "_elu1({})",
        "square": "_square({})",
        "sin": "tl.sin({})",
        "cos": "tl.cos({})",
        "tan": "_tan({})",
        "step": "_step({})",  # derivatives only (einfuse.lowering.backward.STEP); backward modules define it
    }

    def capture_read(self, e: sympy.Basic) -> Printed:
        """``tl.load`` of the element, each index clamped to its dimension (einfuse.ir.captures);
        int captures load as int32, float ones as float32."""
        base, codes = self.capture_indices(e)
        off = " + ".join(f"tl.minimum(tl.maximum({c}, 0), {base}_n{k} - 1) * {base}_s{k}"
                         for k, c in enumerate(codes))
        if e.is_integer:
            return Printed(f"tl.load({base} + {off}).to(tl.int32)", "int")
        return Printed(f"tl.load({base} + {off}).to(tl.float32)", "float")

    def flit(self, v: float) -> str:
        return float_literal(v)

    def constexpr(self, e: sympy.Basic, names: Mapping[sympy.Symbol, str]) -> str | None:
        from einfuse.codegen.triton.score_printer import constexpr_code

        return constexpr_code(e, names)

    def as_float(self, out: Printed) -> str:
        """Converted by ``* 1.0`` rather than ``.to(tl.float32)``: a name may hold a ``tl.constexpr``
        (a Python int in the kernel), which has no ``.to``; an integer literal becomes ``3.0``."""
        return _as_float(out)

    def fn(self, name: str, arg: str) -> str:
        return f"tl.{name}({arg})"

    def abs_(self, a: Printed) -> str:
        return f"tl.abs({a.code})"

    def minmax(self, is_max: bool, a: str, b: str, kind: str) -> str:
        return f"tl.{'maximum' if is_max else 'minimum'}({a}, {b})"

    def where(self, cond: str, a: str, b: str) -> str:
        return f"tl.where({cond}, {a}, {b})"

    def and_(self, parts: list[str]) -> str:
        return "(" + " & ".join(parts) + ")"

    def or_(self, parts: list[str]) -> str:
        return "(" + " | ".join(parts) + ")"

    def not_(self, a: str) -> str:
        return f"({a} == 0)"

    def range_test(self, diff: str, width: int) -> str:
        return f"(({diff}).to(tl.uint32) < {width})"

    def udiv(self, n: str, d: str) -> str:
        return f"(({n}).to(tl.uint32) // {d}).to(tl.int32)"

    def umod(self, n: str, d: str) -> str:
        return f"(({n}).to(tl.uint32) % {d}).to(tl.int32)"

    def div_nonneg(self, n: str, d: str) -> str:
        return f"({n} // {d})"

    def floordiv(self, n: str, d: str) -> str:
        return f"_floordiv({n}, {d})"

    def floormod(self, n: str, d: str) -> str:
        return f"_floormod({n}, {d})"

    def floor_to_int(self, a: str) -> str:
        return f"tl.floor({a}).to(tl.int32)"


def float_literal(v: float) -> str:
    """A Python float as Triton source; inf and nan have no literal of their own."""
    if math.isinf(v):
        return "float('inf')" if v > 0 else "float('-inf')"
    if math.isnan(v):
        return "float('nan')"
    return repr(v)


def _as_float(out: Printed) -> str:
    if out.kind == "float":
        return out.code
    if out.code.lstrip("-").isdigit():
        return f"{out.code}.0"
    return f"({out.code} * 1.0)"


# Helpers the printed code may call; emitted once into every generated module that needs them.
HELPERS = '''
@triton.jit
def _floordiv(a, d):
    """floor(a / d) for a positive divisor d, whether // truncates (tensors) or floors (Python
    ints, i.e. constexpr operands): the remainder a - q*d is negative only after truncation."""
    q = a // d
    return tl.where(a - q * d < 0, q - 1, q)


@triton.jit
def _floormod(a, d):
    """a - d * floor(a / d): the non-negative remainder for a positive divisor d."""
    r = a % d
    return tl.where(r < 0, r + d, r)
'''
