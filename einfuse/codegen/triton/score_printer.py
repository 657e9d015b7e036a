"""Print a score expression (an IR value expression over the Q.K product) as Triton code.

The leaf :data:`~einfuse.lowering.onepass.DOT` becomes ``qk`` (the fp32 tile of dot
products); index values become index arithmetic on the tile's positions (``qi`` for queries, ``ki``
for keys) through :class:`~einfuse.codegen.triton.index_printer.IndexPrinter`. One IR node becomes
one Triton operation, so the printed line reads like the Einsum it came from.
"""

from __future__ import annotations

import math

from einfuse.codegen.triton.index_printer import IndexPrinter, float_literal
from einfuse.errors import CodegenError
from einfuse.ir.expr import (
    COMPARE_OPS,
    Access,
    Binary,
    Compare,
    Const,
    Empty,
    Expr,
    IndexValue,
    Select,
    Unary,
)
from einfuse.lowering.onepass import DOT

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
    "sin": "tl.sin({})",
    "cos": "tl.cos({})",
    "tan": "_tan({})",
}


def const_code(v: float) -> str:
    """A constant of the score as Triton source (the index printer's literal format)."""
    return float_literal(float(v))


def print_score(e: Expr, idx: IndexPrinter, dot: str = "qk") -> str:
    """Triton expression for ``e``; ``dot`` names the tile of Q.K products."""
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
        return _UNARY[e.op].format(print_score(e.arg, idx, dot))
    if isinstance(e, Binary):
        a, b = print_score(e.left, idx, dot), print_score(e.right, idx, dot)
        if e.op in _INFIX:
            return f"({a} {_INFIX[e.op]} {b})"
        return f"tl.{'maximum' if e.op == 'max' else 'minimum'}({a}, {b})"
    if isinstance(e, Select):
        cond = print_score(e.cond, idx, dot) if isinstance(e.cond, Compare) else idx.predicate(e.cond)
        return f"tl.where({cond}, {print_score(e.then, idx, dot)}, {print_score(e.otherwise, idx, dot)})"
    if isinstance(e, Compare):
        return f"({print_score(e.left, idx, dot)} {COMPARE_OPS[e.op]} {print_score(e.right, idx, dot)})"
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


@triton.jit
def _tan(x):
    return tl.sin(x) / tl.cos(x)
'''
