"""Print a score expression (an IR value expression over the Q.K product) as Triton code.

The leaf :data:`~einfuse.codegen.triton.analysis.DOT` becomes ``qk`` (the fp32 tile of dot
products); index values become index arithmetic on the tile's positions (``qi`` for queries, ``ki``
for keys) through :class:`~einfuse.codegen.triton.index_printer.IndexPrinter`. One IR node becomes
one Triton operation, so the printed line reads like the Einsum it came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import sympy

from einfuse.codegen.triton.analysis import DOT
from einfuse.codegen.triton.index_printer import IndexPrinter, float_literal
from einfuse.errors import CodegenError
from einfuse.ir.expr import Access, Binary, Const, Empty, Expr, IndexValue, Select, Unary

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_UNARY = {
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
}


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
    """Triton expression for ``e``; ``dot`` names the tile of Q.K products. Index values over the
    symbols of ``constexprs`` only (the head dims of the default scale) print as constant arithmetic."""
    if constexprs and isinstance(e, IndexValue) and e.expr.free_symbols <= set(constexprs):
        code = constexpr_code(e.expr, constexprs)
        if code is not None:
            return code
    if isinstance(e, Access):
        if e.tensor != DOT:
            raise CodegenError(f"score reads tensor {e.tensor}; only the Q.K product can be read here")
        return dot
    if isinstance(e, Const):
        return const_code(e.value)
    if isinstance(e, IndexValue):
        return idx.float_value(e.expr)
    if isinstance(e, Unary):
        if e.op not in _UNARY:
            raise CodegenError(f"score operator {e.op} has no Triton form")
        return _UNARY[e.op].format(print_score(e.arg, idx, dot, constexprs))
    if isinstance(e, Binary):
        a, b = print_score(e.left, idx, dot, constexprs), print_score(e.right, idx, dot, constexprs)
        if e.op in _INFIX:
            return f"({a} {_INFIX[e.op]} {b})"
        return f"tl.{'maximum' if e.op == 'max' else 'minimum'}({a}, {b})"
    if isinstance(e, Select):
        return f"tl.where({idx.predicate(e.cond)}, {print_score(e.then, idx, dot, constexprs)}, " \
               f"{print_score(e.otherwise, idx, dot, constexprs)})"
    if isinstance(e, Empty):
        raise CodegenError("an empty value cannot appear inside a score expression")
    raise CodegenError(f"cannot print score node {e!r}")


def may_be_minus_inf(e: Expr) -> bool:
    """Whether a score can be -inf (or NaN) on finite inputs, so full tiles need the masked-row guard."""
    from einfuse.ir.expr import walk

    for n in walk(e):
        if isinstance(n, Const) and not math.isfinite(n.value):
            return True
        if isinstance(n, Unary) and n.op in ("log", "reciprocal", "sqrt"):
            return True
        if isinstance(n, Binary) and n.op == "div" and not isinstance(n.right, Const):
            return True
        if isinstance(n, Select):
            return True
    return False


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
'''
