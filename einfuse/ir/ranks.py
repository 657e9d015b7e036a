"""Named ranks (iteration dimensions) with symbolic extents, and rank partitions.

A rank is named in upper case (``M``); its index variable is the lower-case name (``m``). Extents are
sympy expressions over size symbols, so ``M1 = ceiling(M/M0)`` stays exact for ragged tiles. A
:class:`Partition` records ``M -> M1, M0`` with ``m = m1*M0 + m0``; positions past the end of ``M``
are simply absent, which is how ragged last tiles are expressed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy

BATCH_INDEX = sympy.Symbol("b", integer=True, nonnegative=True)
HEAD_INDEX = sympy.Symbol("h", integer=True, nonnegative=True)
BATCH_EXTENT = sympy.Symbol("B", integer=True, positive=True)
HEAD_EXTENT = sympy.Symbol("H", integer=True, positive=True)
QUERY_INDEX = sympy.Symbol("p", integer=True, nonnegative=True)
"""The query position ``p`` of the attention conventions (``Q[P,E]``, ``O[P,F]``)."""
KEY_INDEX = sympy.Symbol("m", integer=True, nonnegative=True)
"""The key position ``m`` (``K[M,E]``, ``V[M,F]``)."""


@functools.lru_cache(maxsize=4096)
def index_symbol(rank_name: str) -> sympy.Symbol:
    """The index variable of a rank: ``M1`` -> ``m1``. (Cached: sympy sanitises the assumptions
    before its own symbol cache, ~100 us a call, and the simulator's compiler asks thousands of times.)"""
    return sympy.Symbol(rank_name.lower(), integer=True, nonnegative=True)


@functools.lru_cache(maxsize=4096)
def size_symbol(name: str) -> sympy.Symbol:
    """A size symbol (a rank extent or a parameter such as a window or tile size)."""
    return sympy.Symbol(name, integer=True, positive=True)


@dataclass(frozen=True)
class Rank:
    """A named rank; ``extent`` defaults to the size symbol of the same name."""

    name: str
    extent: sympy.Expr

    @staticmethod
    def of(name: str, extent: sympy.Expr | int | str | None = None) -> Rank:
        if not name or not name[0].isalpha() or not name.isalnum() or name != name.upper():
            raise ValueError(f"rank name {name!r} must be upper-case letters and digits, e.g. M or M1")
        if extent is None:
            ext = size_symbol(name)
        elif isinstance(extent, str):
            ext = parse_size_expr(extent)
        else:
            ext = sympy.sympify(extent)
        return Rank(name, ext)

    @property
    def index(self) -> sympy.Symbol:
        return index_symbol(self.name)

    @property
    def is_default_extent(self) -> bool:
        return self.extent == size_symbol(self.name)


@dataclass(frozen=True)
class Partition:
    """``parent -> outer, inner``: ``parent_index = outer_index * tile + inner_index``."""

    parent: str
    outer: str
    inner: str

    def index_map(self, tile: sympy.Expr) -> sympy.Expr:
        return index_symbol(self.outer) * tile + index_symbol(self.inner)


SIZE_FUNCTIONS = {"ceiling": sympy.ceiling, "floor": sympy.floor, "Max": sympy.Max, "Min": sympy.Min}


def check_expression_text(text: str) -> None:
    """Refuse what is not arithmetic before sympy's parser (which evaluates Python) sees it: attribute
    access, dunder names, strings, lambdas, very long texts. Raises ValueError saying what was found."""
    import re

    if len(text) > 10_000:
        raise ValueError("expression longer than 10000 characters")
    found = re.search(r"__|\.\s*[A-Za-z_]|['\"`;\\]|\blambda\b|\bimport\b|\bfor\b|\bif\b|:=", text)
    if found:
        raise ValueError(f"{found.group(0)!r} is not part of an index or size expression")


def parse_size_expr(text: str) -> sympy.Expr:
    """Parse an extent such as ``ceiling(M/M0)``; upper-case names are positive integer sizes."""
    from sympy.parsing.sympy_parser import parse_expr

    check_expression_text(text)
    local: dict[str, object] = dict(SIZE_FUNCTIONS)
    for n in _identifiers(text):
        if n in local:
            continue
        if not n[0].isupper():
            raise ValueError(f"extent {text!r}: {n!r} is not a size (sizes are upper case, e.g. M or M0; "
                             f"functions: {', '.join(SIZE_FUNCTIONS)})")
        local[n] = size_symbol(n)
    try:
        if "**" in text:
            from einfuse.ir.parser import check_powers

            check_powers(parse_expr(text, local_dict=local, evaluate=False), text)
        out = sympy.sympify(parse_expr(text, local_dict=local))
    except Exception as exc:  # sympy raises many kinds (SyntaxError, TokenError, TypeError...)
        raise ValueError(f"cannot parse extent {text!r}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(out, sympy.Expr):
        raise ValueError(f"extent {text!r} is not a number or a size expression")
    return out


def _identifiers(text: str) -> list[str]:
    import re

    return re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
