"""Captured tensors: extra inputs a score or mask reads by gathering (``bias[h, p - m + 52]``).

FlexAttention mods close over tensors (relative-position bias tables, ALiBi slopes, document ids,
sequence lengths) and index them with index expressions. In a cascade such a tensor is one more
input, declared as ``capture NAME[_,_] float`` (its number of dimensions and value kind; its extents
are its own, known at call time), and a read of it is a sympy function application
``NAME(i0, i1)`` inside an index expression: ``idx(rel_bias(-m + p + 52))`` in a score,
``Eq(doc_ids(p), doc_ids(m))`` in a mask. Keeping reads inside sympy means every consumer of index
expressions (the reference evaluator, the Triton printer, block tables, free-symbol analysis) sees
them where they already look, and a mask that reads an index tensor stays a mask.

Semantics, written once: a read at an index outside ``0 .. n-1`` on some dimension reads the
element at the nearest bound (indices are clamped per dimension), in the reference executor and in
the kernels alike. FlexAttention leaves out-of-range reads undefined; clamping makes them harmless.
``float`` captures are read as float32 in kernels (float64 in the reference), ``int`` captures as
int32 (exact for ids and lengths below 2**31).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import keyword
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy
from sympy.core.function import AppliedUndef, UndefinedFunction

KINDS = ("float", "int")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED = frozenset({
    "idx", "where", "max", "min", "exp", "log", "sqrt", "floor", "ceiling", "bitand", "bitor", "bitxor",
    "true", "false", "oo", "empty", "inf", "nan", "abs", "tanh", "sigmoid", "relu", "sin", "cos", "tan",
    "neg", "reciprocal", "elu1", "square", "step",
})


@dataclass(frozen=True)
class Capture:
    """A captured tensor of the cascade: ``ndim`` dimensions of its own extents, ``float`` or ``int``
    values. ``value`` is the tensor bound when the variant was declared (a closure variable of the
    mod); it is not part of the cascade's text form and is overridden by a tensor passed at call
    time (``fn(q, k, v, NAME=t)``)."""

    name: str
    ndim: int
    kind: str = "float"
    value: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.kind not in KINDS:
            raise ValueError(f"captured tensor {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if isinstance(self.ndim, bool) or not isinstance(self.ndim, int) or not 1 <= self.ndim <= 4:
            raise ValueError(f"captured tensor {self.name}: ndim must be 1..4, got {self.ndim!r}")

    @property
    def fn(self) -> UndefinedFunction:
        return read_function(self.name, self.kind)

    def read(self, *indices: sympy.Expr) -> sympy.Expr:
        if len(indices) != self.ndim:
            raise ValueError(f"captured tensor {self.name} has {self.ndim} dimension(s); "
                             f"indexed with {len(indices)}")
        return self.fn(*indices)

    def declaration(self) -> str:
        return f"capture {self.name}[{','.join('_' * self.ndim)}] {self.kind}"


def check_name(name: object) -> None:
    """Capture names are lower-case identifiers (upper case means a size in index expressions),
    at least two characters (one letter is a rank index), not an operator of the text form."""
    if (not isinstance(name, str) or not _NAME.match(name) or len(name) < 2 or name in RESERVED
            or keyword.iskeyword(name)):
        raise ValueError(f"captured tensor name {name!r}: use a lower-case identifier of two or more "
                         "characters that is not an operator name (e.g. rel_bias, doc_ids)")


@functools.cache
def read_function(name: str, kind: str) -> UndefinedFunction:
    """The sympy function whose applications are reads of capture ``name`` (one class per name and
    kind, so equal reads compare equal). ``int`` reads are integers to sympy (they may be compared,
    divided with ``//`` and used as indices); ``float`` reads are reals."""
    return sympy.Function(name, integer=True) if kind == "int" else sympy.Function(name, real=True)


def is_read(e: object) -> bool:
    return isinstance(e, AppliedUndef)


def kind_of(e: AppliedUndef) -> str:
    return "int" if e.is_integer else "float"


def reads(e: object) -> set[AppliedUndef]:
    """Every capture read inside a sympy expression or predicate (nested reads included)."""
    if not isinstance(e, sympy.Basic):
        return set()
    return set(e.atoms(AppliedUndef))


def read_names(e: object) -> set[str]:
    return {r.func.__name__ for r in reads(e)}


def expr_read_names(e: object) -> set[str]:
    """Capture names read anywhere in an IR value expression (index values, selects, accesses)."""
    from einfuse.ir.expr import Access, IndexValue, Select, walk

    out: set[str] = set()
    for n in walk(e):
        if isinstance(n, IndexValue):
            out |= read_names(n.expr)
        elif isinstance(n, Select) and isinstance(n.cond, sympy.Basic):
            out |= read_names(n.cond)
        elif isinstance(n, Access):
            for i in n.indices:
                out |= read_names(i)
    return out


# ---- the parser's view: which names are captures while a cascade's Einsums are read ----------------
_DECLARED: contextvars.ContextVar[Mapping[str, Capture]] = contextvars.ContextVar("captures", default={})


@contextlib.contextmanager
def declared(captures: Mapping[str, Capture]) -> Iterator[None]:
    """Within the block, index expressions parse ``NAME(...)`` as reads of these captures."""
    token = _DECLARED.set(dict(captures))
    try:
        yield
    finally:
        _DECLARED.reset(token)


def current() -> Mapping[str, Capture]:
    return _DECLARED.get()


DECL = re.compile(r"^capture\s+([A-Za-z_][A-Za-z0-9_]*)\s*\[([_,\s]*)\]\s*(float|int)?\s*$")


def parse_declaration(line: str) -> Capture:
    """``capture NAME[_,_] float`` -> :class:`Capture` (ValueError when malformed)."""
    m = DECL.match(line.strip())
    if not m:
        raise ValueError("expected 'capture NAME[_,_] float' (one _ per dimension; float or int)")
    name, dims, kind = m.groups()
    ndim = len([d for d in dims.split(",") if d.strip()])
    if ndim != len(dims.split(",")) or any(d.strip() != "_" for d in dims.split(",")):
        raise ValueError("dimensions of a captured tensor are written _ (e.g. capture bias[_,_] float)")
    return Capture(name, ndim, kind or "float")


def validate_reads(captures: Mapping[str, Capture], exprs: list[object], where: str) -> None:
    """Every read names a declared capture with its number of dimensions and kind."""
    for e in exprs:
        for r in reads(e):
            name = r.func.__name__
            cap = captures.get(name)
            if cap is None:
                known = ", ".join(sorted(captures)) or "none"
                raise ValueError(f"{where}: {name}(...) reads a captured tensor that is not declared "
                                 f"(declared: {known}); add 'capture {name}[_] float'")
            if len(r.args) != cap.ndim:
                raise ValueError(f"{where}: {name} has {cap.ndim} dimension(s) but is read with {len(r.args)}")
            if kind_of(r) != cap.kind:
                raise ValueError(f"{where}: {name} is declared {cap.kind} but read as {kind_of(r)}")


__all__ = ["Capture", "DECL", "KINDS", "check_name", "current", "declared", "expr_read_names", "is_read",
           "kind_of", "parse_declaration", "read_function", "read_names", "reads", "validate_reads"]
