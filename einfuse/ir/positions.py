"""Query positions when queries and keys differ in length: the alignment conventions, in the IR.

Key ``m`` sits at position ``m`` of the sequence. Where query ``p`` sits is a choice, and masks and
scores that compare positions (causal, windows, ALiBi, neighbourhoods) depend on it once the number
of queries ``P`` differs from the number of keys ``M``:

* ``bottom_right``: query ``p`` is at ``p + M - P``; the last query meets the last key. This is what
  generation over a KV cache and chunked prefill need (the queries are the newest tokens), and what
  FlashAttention >= 2.1, vLLM, Hugging Face transformers and
  ``torch.nn.attention.bias.causal_lower_right`` do. The default of the built-in variants.
* ``top_left``: query ``p`` is at ``p``; the first query meets the first key
  (``torch.nn.attention.bias.causal_upper_left``, ``is_causal=True`` of SDPA). It is also the raw
  index meaning of FlexAttention, so it is the default of user ``mask_mod``/``score_mod`` functions.
* ``offset``: query ``p`` is at ``p + QOFF``, with ``QOFF`` (:data:`Q_OFFSET`) a param of the cascade
  given per call: queries in the middle of a longer key tensor (a preallocated cache, chunked prefill
  over it). ``einfuse.compile(...)(q, k, v, q_offset=128)``, ``run_cascade(c, x, sizes={"QOFF": 128})``.

When ``P == M`` the first two agree. The offset is not a flag that back ends interpret: it is written
into the cascade (``m <= p + M - P``, ``m <= p + QOFF``) with the size symbols every consumer already
binds, so the reference executor, block sparsity, the Triton kernels and the simulator all follow
from that one expression.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy

from einfuse.errors import SpecError
from einfuse.ir.ranks import index_symbol, size_symbol

if TYPE_CHECKING:
    from einfuse.ir.cascade import Cascade

ALIGNMENTS = ("bottom_right", "top_left", "offset")
Q_OFFSET = "QOFF"
"""The param holding the position of query 0 under ``align="offset"`` (default 0, set per call)."""


def check_align(align: str) -> str:
    if align not in ALIGNMENTS:
        raise SpecError(f"option align={align!r}: use {', '.join(ALIGNMENTS)} (where query p sits among "
                        "the keys when there are fewer queries than keys)")
    return align


def query_position(align: str, p: sympy.Expr | None = None) -> sympy.Expr:
    """The position of query ``p`` on the key axis under ``align`` (see the module docstring)."""
    p = index_symbol("P") if p is None else p
    check_align(align)
    if align == "top_left":
        return p
    if align == "bottom_right":
        return p + size_symbol("M") - size_symbol("P")
    return p + size_symbol(Q_OFFSET)


def offset_params(align: str) -> dict[str, float]:
    """The params a cascade with this alignment declares (``QOFF = 0`` for ``offset``)."""
    return {Q_OFFSET: 0.0} if check_align(align) == "offset" else {}


def equal_lengths(e: sympy.Basic) -> sympy.Basic:
    """``e`` with the key length ``M`` replaced by the query length ``P``: how a schedule that walks
    queries and keys along one sequence (``P == M``, where every alignment agrees) reads a position."""
    return sympy.sympify(e).subs(size_symbol("M"), size_symbol("P"))


def equal_length_cascade(c: Cascade) -> Cascade:
    """``c`` with ``M`` replaced by ``P`` in every constraint and index value (not in rank extents):
    the cascade as a schedule over one sequence reads it (the chunked linear kernels and the
    Lightning split, which walk queries and keys with one block index). Exact for every call with
    as many queries as keys, the only calls those schedules take."""
    from einfuse.ir.einsum import Einsum
    from einfuse.ir.expr import index_symbols

    if not any(size_symbol("M") in index_symbols(e.expr) | (e.where.free_symbols if e.where is not None
                                                             else set()) for e in c.einsums):
        return c
    return c.with_einsums(Einsum(e.output, _equal_lengths_expr(e.expr), e.reduce,
                                 None if e.where is None else equal_lengths(e.where), e.comment)
                          for e in c.einsums)


def _equal_lengths_expr(e):
    """``equal_lengths`` inside index values and select conditions (tensor indices are left alone)."""
    from einfuse.ir.expr import Binary, IndexValue, Select, Unary, binary, select, substitute, unary

    if isinstance(e, IndexValue):
        return substitute(e, {size_symbol("M"): size_symbol("P")})
    if isinstance(e, Binary):
        return binary(e.op, _equal_lengths_expr(e.left), _equal_lengths_expr(e.right))
    if isinstance(e, Unary):
        return unary(e.op, _equal_lengths_expr(e.arg))
    if isinstance(e, Select):
        return select(equal_lengths(e.cond), _equal_lengths_expr(e.then), _equal_lengths_expr(e.otherwise))
    return e


__all__ = ["ALIGNMENTS", "Q_OFFSET", "check_align", "equal_length_cascade", "equal_lengths", "offset_params",
           "query_position"]
