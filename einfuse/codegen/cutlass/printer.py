"""Print sympy index expressions, mask predicates and score expressions as CUDA C++.

The rules (exact floor division and Mod, the unsigned path, fractions over a common denominator,
one unsigned compare per paired bound, value kinds) are the Triton printer's, inherited from
:class:`einfuse.codegen.index_base.BaseIndexPrinter`; this class only spells them in C++:
``(c ? a : b)``, ``(int)((unsigned)(n) / 8u)``, ``ef_floordiv``, float literals with an ``f``
suffix, ``fmaxf`` for floats and ``max`` for ints (C++ overloads need one type, so a mixed max
converts the int first).

Positions, heads and sizes are ``int`` in the kernel (the kernel refuses lengths past 2**31).
"""

from __future__ import annotations

import math

from einfuse.codegen.index_base import BaseIndexPrinter, Printed, print_score

__all__ = ["HELPERS", "CppIndexPrinter", "cpp_float", "print_score"]


class CppIndexPrinter(BaseIndexPrinter):
    """Prints sympy expressions as C++ over ``int`` names (see :class:`BaseIndexPrinter`)."""

    target = "C++"
    TRUE = "true"
    FALSE = "false"
    PROMOTE_MINMAX = True
    UNARY = {
        "exp": "expf({})",
        "log": "logf({})",
        "neg": "(-{})",
        "sigmoid": "ef_sigmoid({})",
        "tanh": "ef_tanh({})",
        "relu": "fmaxf({}, 0.0f)",
        "reciprocal": "(1.0f / {})",
        "sqrt": "sqrtf({})",
        "abs": "fabsf({})",
        "elu1": "ef_elu1({})",
        "square": "ef_square({})",
        "sin": "sinf({})",
        "cos": "cosf({})",
        "tan": "tanf({})",
    }
    _FN = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "exp2": "exp2f", "log2": "log2f", "floor": "floorf"}

    def flit(self, v: float) -> str:
        return cpp_float(v)

    def as_float(self, out: Printed) -> str:
        if out.kind == "float":
            return out.code
        if out.code.lstrip("-").isdigit():
            return f"{out.code}.0f"
        return f"((float)({out.code}))"

    def fn(self, name: str, arg: str) -> str:
        return f"{self._FN[name]}({arg})"

    def abs_(self, a: Printed) -> str:
        return f"abs({a.code})" if a.kind == "int" else f"fabsf({a.code})"

    def minmax(self, is_max: bool, a: str, b: str, kind: str) -> str:
        if kind == "int":
            return f"{'max' if is_max else 'min'}({a}, {b})"
        return f"{'fmaxf' if is_max else 'fminf'}({a}, {b})"

    def where(self, cond: str, a: str, b: str) -> str:
        return f"({cond} ? {a} : {b})"

    def and_(self, parts: list[str]) -> str:
        return "(" + " && ".join(parts) + ")"

    def or_(self, parts: list[str]) -> str:
        return "(" + " || ".join(parts) + ")"

    def not_(self, a: str) -> str:
        return f"(!{a})"

    def range_test(self, diff: str, width: int) -> str:
        return f"((unsigned)({diff}) < {width}u)"

    def udiv(self, n: str, d: str) -> str:
        return f"((int)((unsigned)({n}) / {d}u))"

    def umod(self, n: str, d: str) -> str:
        return f"((int)((unsigned)({n}) % {d}u))"

    def div_nonneg(self, n: str, d: str) -> str:
        return f"({n} / {d})"

    def floordiv(self, n: str, d: str) -> str:
        return f"ef_floordiv({n}, {d})"

    def floormod(self, n: str, d: str) -> str:
        return f"ef_floormod({n}, {d})"

    def floor_to_int(self, a: str) -> str:
        return f"((int)floorf({a}))"


def cpp_float(v: float) -> str:
    """A float32 literal in C++ (``0.5f``, ``INFINITY``, ``NAN``)."""
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    if math.isnan(v):
        return "NAN"
    return f"{v!r}f"


# Helpers the printed code may call; emitted once into every generated source. EF_FN is
# `__host__ __device__ __forceinline__` under nvcc and `inline` for a host compiler (tests).
HELPERS = r'''
#ifndef EF_FN
#ifdef __CUDACC__
#define EF_FN __host__ __device__ __forceinline__
#else
#define EF_FN inline
#endif
#endif

// floor(a / d) for a positive divisor d: C's / truncates, so a negative remainder steps down once
EF_FN int ef_floordiv(int a, int d) { int q = a / d; return (a - q * d < 0) ? q - 1 : q; }
// a - d * floor(a / d): the non-negative remainder for a positive divisor d
EF_FN int ef_floormod(int a, int d) { int r = a % d; return r < 0 ? r + d : r; }
EF_FN float ef_tanh(float x) { return tanhf(x); }
// sigmoid(x) = (1 + tanh(x/2)) / 2: one transcendental instead of exp plus a division
EF_FN float ef_sigmoid(float x) { return 0.5f * tanhf(0.5f * x) + 0.5f; }
EF_FN float ef_elu1(float x) { return x > 0.0f ? x + 1.0f : expf(fminf(x, 0.0f)); }
EF_FN float ef_square(float x) { return x * x; }
'''
