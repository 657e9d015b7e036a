"""Print IR value expressions as Triton source, and assemble kernel modules.

Shared by the linear-attention and decode generators (they own this module). The generated kernels
evaluate whatever the cascade says, one node at a time, so the variant-specific parts of a kernel
(decay, feature map, score_mod, mask) come from the IR and not from a hand-written formula.

Index expressions and predicates inside a value (``IndexValue``, ``Select`` conditions) go through
:class:`~einfuse.codegen.triton.index_printer.IndexPrinter`, the one sympy printer every generator
uses, so integer index arithmetic is exact (``floor(p/49)`` is an integer division) and masks read
the same as in the attention kernels. Names of index and size symbols are chosen by the caller: a
kernel decides which Triton variable holds ``p``, ``h`` or ``H``.
"""

from __future__ import annotations

from collections.abc import Callable

from einfuse.codegen.triton.index_printer import HELPERS as INDEX_HELPERS
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

# Elementwise helpers every generated module carries: the index printer's exact floor division and
# modulo, then the value functions emit_value may call.
HELPERS = INDEX_HELPERS + '''

@triton.jit
def _ef_tanh(x):
    # tanh through sigmoid: saturates cleanly to +-1 for large |x|
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _ef_elu1(x):
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
'''

_UNARY_FMT: dict[str, str] = {
    "exp": "tl.exp({})", "log": "tl.log({})", "neg": "(-{})", "sigmoid": "tl.sigmoid({})",
    "relu": "tl.maximum({}, 0.0)", "reciprocal": "(1.0 / {})", "tanh": "_ef_tanh({})",
    "sqrt": "tl.sqrt({})", "abs": "tl.abs({})", "elu1": "_ef_elu1({})", "square": "({0} * {0})",
    "sin": "tl.sin({})", "cos": "tl.cos({})", "tan": "(tl.sin({0}) / tl.cos({0}))",
}
_BINARY_FMT: dict[str, str] = {
    "add": "({} + {})", "sub": "({} - {})", "mul": "({} * {})", "div": "({} / {})",
    "max": "tl.maximum({}, {})", "min": "tl.minimum({}, {})",
}


def emit_value(e: Expr, leaf: Callable[[Access], str], index: IndexPrinter) -> str:
    """A value expression as Triton text; ``leaf`` names the variable holding each access."""
    if isinstance(e, Access):
        return leaf(e)
    if isinstance(e, Const):
        return float_literal(float(e.value))
    if isinstance(e, IndexValue):
        return index.float_value(e.expr)
    if isinstance(e, Unary):
        return _UNARY_FMT[e.op].format(emit_value(e.arg, leaf, index))
    if isinstance(e, Binary):
        return _BINARY_FMT[e.op].format(emit_value(e.left, leaf, index), emit_value(e.right, leaf, index))
    if isinstance(e, Compare):
        return f"({emit_value(e.left, leaf, index)} {COMPARE_OPS[e.op]} {emit_value(e.right, leaf, index)})"
    if isinstance(e, Select):
        cond = emit_value(e.cond, leaf, index) if isinstance(e.cond, Compare) else index.predicate(e.cond)
        return f"tl.where({cond}, {emit_value(e.then, leaf, index)}, {emit_value(e.otherwise, leaf, index)})"
    if isinstance(e, Empty):
        raise CodegenError("an `empty` value cannot appear inside a generated score expression")
    raise CodegenError(f"cannot emit expression node {e!r} as Triton code")


# ---- loading generated source: one loader and cache for every generator -------------------------
from einfuse.codegen.triton.loader import load_module  # noqa: E402,F401  (re-exported for the generators)


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in text.splitlines())
