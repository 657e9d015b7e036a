"""The Einsum-cascade IR: ranks, tensors, expressions, Einsums, cascades, text form, validation."""

from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import REDUCE_IDENTITY, REDUCE_OPS, Einsum
from einfuse.ir.expr import (
    Access,
    Binary,
    Const,
    Empty,
    Expr,
    IndexValue,
    Select,
    Unary,
    as_expr,
    binary,
    select,
    unary,
)
from einfuse.ir.parser import parse_cascade, parse_einsum, parse_expr_text, parse_index_expr
from einfuse.ir.printer import format_cascade, format_einsum, format_expr, to_dot
from einfuse.ir.ranks import (
    BATCH_INDEX,
    HEAD_INDEX,
    Partition,
    Rank,
    index_symbol,
    size_symbol,
)
from einfuse.ir.tensor import Tensor
from einfuse.ir.validate import validate

__all__ = [
    "BATCH_INDEX",
    "HEAD_INDEX",
    "REDUCE_IDENTITY",
    "REDUCE_OPS",
    "Access",
    "Binary",
    "Cascade",
    "Const",
    "Einsum",
    "Empty",
    "Expr",
    "IndexValue",
    "Partition",
    "Rank",
    "Select",
    "Tensor",
    "Unary",
    "as_expr",
    "binary",
    "format_cascade",
    "format_einsum",
    "format_expr",
    "index_symbol",
    "parse_cascade",
    "parse_einsum",
    "parse_expr_text",
    "parse_index_expr",
    "select",
    "size_symbol",
    "to_dot",
    "unary",
    "validate",
]
