"""Print a score expression (an IR value expression over the Q.K product) as Triton code.

The leaf :data:`~einfuse.lowering.onepass.DOT` becomes ``qk`` (the fp32 tile of dot
products); index values become index arithmetic on the tile's positions (``qi`` for queries, ``ki``
for keys) through :class:`~einfuse.codegen.triton.index_printer.IndexPrinter`. One IR node becomes
one Triton operation, so the printed line reads like the Einsum it came from.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy

from einfuse.codegen import index_base
from einfuse.codegen.index_base import may_be_minus_inf
from einfuse.codegen.triton.index_printer import IndexPrinter, float_literal
from einfuse.ir.expr import Expr

__all__ = ["HELPERS", "const_code", "may_be_minus_inf", "print_score"]


def const_code(v: float) -> str:
    """A constant of the score as Triton source (the index printer's literal format)."""
    return float_literal(float(v))


def constexpr_code(e: sympy.Basic, names: Mapping[sympy.Symbol, str]) -> str | None:
    """``e`` as plain Python arithmetic over ``tl.constexpr`` names (``1/sqrt(E)`` ->
    ``(HEAD_D ** -0.5)``), which Triton folds at compile time; None if ``e`` has other symbols or
    operations."""
    e = sympy.sympify(e)
    if isinstance(e, sympy.Symbol):
        return names.get(e)
    if isinstance(e, sympy.Integer):
        return str(int(e))
    if e.is_Number:
        return const_code(float(e))
    if isinstance(e, (sympy.Add, sympy.Mul)):
        parts = [constexpr_code(a, names) for a in e.args]
        if None in parts:
            return None
        return "(" + (" + " if isinstance(e, sympy.Add) else " * ").join(parts) + ")"  # type: ignore[arg-type]
    if isinstance(e, sympy.Pow):
        base, ex = constexpr_code(e.args[0], names), constexpr_code(e.args[1], names)
        return None if base is None or ex is None else f"({base} ** {ex})"
    return None


def print_score(e: Expr, idx: IndexPrinter, dot: str = "qk",
                constexprs: Mapping[sympy.Symbol, str] | None = None) -> str:
    """Triton expression for ``e``; ``dot`` names the tile of Q.K products (the rules are
    :func:`einfuse.codegen.index_base.print_score`'s, the spellings ``idx``'s). Index values over the
    symbols of ``constexprs`` only (the head dims of the default scale) print as constant arithmetic."""
    return index_base.print_score(e, idx, dot, constexprs)


# Elementwise helpers the printed code may call (emitted into every generated module).
HELPERS = '''
@triton.jit
def _tanh(x, FAST_MATH: tl.constexpr):
    """tanh; FAST_MATH uses the GPU's single-instruction approximation (rel. error ~5e-4)."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, t, -t)


@triton.jit
def _sigmoid(x, FAST_MATH: tl.constexpr):
    """sigmoid(x) = (1 + tanh(x/2)) / 2: one transcendental instead of exp plus a division."""
    return 0.5 * _tanh(0.5 * x, FAST_MATH) + 0.5


@triton.jit
def _elu1(x):
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def _square(x):
    return x * x


@triton.jit
def _tan(x):
    return tl.sin(x) / tl.cos(x)
'''
