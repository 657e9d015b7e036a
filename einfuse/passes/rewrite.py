"""Small helpers every rewrite pass shares: fresh names, product factors, dead-Einsum removal.

Passes are pure functions ``Cascade -> Cascade``; they build new Einsum tuples and tensor dicts and
finish through :func:`finish`, which drops what no output needs and validates the result, so a pass
can never hand a malformed cascade to the next one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import replace

import networkx as nx
import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Const, Expr, binary, walk
from einfuse.ir.expr import rename_tensors as rename_in_expr
from einfuse.ir.validate import validate


class PassOptionError(PassError):
    """A pass was given a bad option (tile size, rank, split count): the user's mistake even where
    the pass manager would otherwise skip a pass that does not apply."""


def taken_names(c: Cascade) -> set[str]:
    """Names a new tensor, rank or param must avoid."""
    return set(c.tensors) | set(c.ranks) | set(c.params)


def fresh_name(candidates: Sequence[str], taken: set[str]) -> str:
    """The first candidate not taken, else the last one with the smallest free numeric suffix."""
    for cand in candidates:
        if cand not in taken:
            return cand
    base = candidates[-1]
    k = 2
    while f"{base}{k}" in taken:
        k += 1
    return f"{base}{k}"


def common_suffix(bases: Iterable[str], taken: set[str], first: str = "") -> str:
    """The first suffix (``first``, then ``2``, ``3``, ...) free for every base name at once, so that
    all tensors of one rewritten stage carry the same suffix."""
    bases = list(bases)
    options = [first] + [str(k) for k in range(2, 1000)]
    for s in options:
        if all(b + s not in taken for b in bases):
            return s
    raise PassError("could not find free tensor names")  # pragma: no cover - 1000 stages


def factors(e: Expr) -> list[Expr]:
    """The factors of a product tree (``[e]`` when ``e`` is not a product)."""
    if isinstance(e, Binary) and e.op == "mul":
        return factors(e.left) + factors(e.right)
    return [e]


def product(fs: Sequence[Expr]) -> Expr:
    """Rebuild a product from factors (1 for none)."""
    if not fs:
        return Const(1.0)
    return functools.reduce(lambda a, b: binary("mul", a, b), fs)


def reads(e: Expr, tensors: set[str]) -> bool:
    """Whether an expression reads any of ``tensors``."""
    return any(isinstance(n, Access) and n.tensor in tensors for n in walk(e))


def plain_indices(a: Access) -> bool:
    """Every index is a distinct bare rank index (no arithmetic), e.g. ``SN[m,p]``."""
    return all(isinstance(i, sympy.Symbol) for i in a.indices) and len(set(a.indices)) == len(a.indices)


def descendants(c: Cascade, tensors: Iterable[str]) -> set[str]:
    """Every tensor computed (transitively) from any of ``tensors``, those included."""
    g = c.tensor_graph()
    out: set[str] = set()
    for t in tensors:
        if t in g:
            out.add(t)
            out |= nx.descendants(g, t)
    return out


def live_einsums(c: Cascade) -> Cascade:
    """Drop Einsums (and tensor declarations) that no cascade output depends on. Inputs stay: they are
    the cascade's interface even when a rewrite no longer reads one."""
    needed = set(c.outputs)
    frontier = list(c.outputs)
    while frontier:
        t = frontier.pop()
        for i in c.producers(t):
            for op in c.einsums[i].operand_tensors():
                if op not in needed:
                    needed.add(op)
                    frontier.append(op)
    einsums = tuple(e for e in c.einsums if e.output.tensor in needed)
    tensors = {n: t for n, t in c.tensors.items() if n in needed or n in c.inputs}
    return c.replace(einsums=einsums, tensors=tensors)


def finish(c: Cascade) -> Cascade:
    """Remove dead Einsums and validate; the last step of every pass."""
    return validate(live_einsums(c))


def rename_tensors(c: Cascade, mapping: dict[str, str]) -> Cascade:
    """Rename intermediate tensors everywhere (declarations, outputs of Einsums, every read)."""
    if not mapping:
        return c
    bad = [t for t in mapping if t in c.inputs or t in c.outputs]
    if bad:
        raise PassError(f"cannot rename interface tensor {bad[0]}")
    tensors = {mapping.get(n, n): (replace(t, name=mapping[n]) if n in mapping else t)
               for n, t in c.tensors.items()}
    einsums = tuple(
        Einsum(Access(mapping.get(e.output.tensor, e.output.tensor), e.output.indices),
               rename_in_expr(e.expr, mapping), e.reduce, e.where, e.comment)
        for e in c.einsums)
    return c.replace(tensors=tensors, einsums=einsums)


__all__ = [
    "PassOptionError", "common_suffix", "descendants", "factors", "finish", "fresh_name", "live_einsums",
    "plain_indices", "product", "reads", "rename_tensors", "taken_names",
]
