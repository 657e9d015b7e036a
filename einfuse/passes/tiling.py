"""Tiling: partition a rank ``R -> R1, R0`` (``r = r1*R0 + r0``) with a ragged last tile.

Intermediate tensors over ``R`` get the two ranks in its place (``QK[M,P] -> QK[M1,M0,P]``); inputs and
outputs keep their layout and are read or written at the flat index ``r1*R0 + r0``, so the tiled
cascade takes and returns exactly the same arrays. ``R1 = ceiling(R/R0)``: the last tile runs past the
end of ``R``. Reads past the end are absent (fibertree semantics), so most Einsums need nothing more;
an Einsum whose value could be present there anyway (``QK + idx(m - p)``: the union rule of ``+``
makes the index term present where ``QK`` is not) gets the explicit bound ``r1*R0 + r0 < R`` in its
constraint. A back end sees that bound exactly where it must mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Empty, Expr, Select, Unary, map_accesses, substitute
from einfuse.ir.ranks import Partition, Rank, index_symbol, size_symbol
from einfuse.ir.tensor import Tensor
from einfuse.passes.rewrite import PassOptionError, finish, fresh_name, taken_names

_INTERSECT = ("mul", "div", "sub")


def _guarded(c: Cascade, e: Expr, rank: str, r: sympy.Symbol) -> bool:
    """Whether ``e`` is certainly absent wherever ``r`` is past the end of ``rank`` (some factor that
    intersects presence reads a tensor along ``rank`` at ``r``)."""
    if isinstance(e, Access):
        t = c.tensors.get(e.tensor)
        return t is not None and any(rk == rank and i == r for rk, i in zip(t.ranks, e.indices))
    if isinstance(e, Unary):
        return _guarded(c, e.arg, rank, r)
    if isinstance(e, Binary):
        left, right = _guarded(c, e.left, rank, r), _guarded(c, e.right, rank, r)
        return (left or right) if e.op in _INTERSECT else (left and right)
    if isinstance(e, Select):
        return _guarded(c, e.then, rank, r) and _guarded(c, e.otherwise, rank, r)
    return isinstance(e, Empty)


@dataclass(frozen=True)
class Split:
    """How a rank is cut: ``r = flat(outer, inner)``, ranks ``outer``/``inner`` with their extents,
    ``valid`` a constraint every Einsum over the rank needs (None when the cut covers each ``r`` once
    and only past-the-end points need the bound), and whether the cut is a uniform partition."""

    outer: Rank
    inner: Rank
    flat: sympy.Expr
    valid: sympy.Basic | None = None
    uniform: bool = True


def tile_rank(c: Cascade, rank: str, tile: int, outer: str | None = None,
              inner: str | None = None) -> Cascade:
    """Partition ``rank`` into tiles of ``tile`` (param ``<rank>0 = tile``); ragged last tile."""
    if rank not in c.ranks:
        raise PassOptionError(f"tile: rank {rank} is not a rank of {c.name} (ranks: {', '.join(c.ranks)})")
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
        raise PassOptionError(f"tile: tile size for rank {rank} must be a positive integer, got {tile!r}")
    taken = taken_names(c)
    outer = outer or fresh_name([f"{rank}1"], taken)
    inner = inner or fresh_name([f"{rank}0"], taken | {outer})
    size = size_symbol(inner)
    cut = Split(Rank(outer, sympy.ceiling(c.ranks[rank].extent / size)), Rank(inner, size),
                index_symbol(outer) * size + index_symbol(inner))
    return split_rank(c, rank, cut, {inner: float(tile)})


def split_rank(c: Cascade, rank: str, cut: Split, params: dict[str, float]) -> Cascade:
    """Replace ``rank`` by ``cut.outer, cut.inner`` in intermediates and every Einsum over it."""
    for t in c.tensors.values():
        if rank in t.iterative:
            raise PassError(f"tile: rank {rank} is an iterative rank of {t.name}; tile its parent instead")
    outer, inner = cut.outer.name, cut.inner.name
    r, r1, r0 = index_symbol(rank), index_symbol(outer), index_symbol(inner)
    size = cut.inner.extent
    flat = cut.flat
    extent = c.ranks[rank].extent
    tiled = {n for n, t in c.tensors.items()
             if rank in t.ranks and n not in c.inputs and n not in c.outputs}

    def split_ranks(t: Tensor) -> Tensor:
        if t.name not in tiled:
            return t
        ranks: list[str] = []
        for rk in t.ranks:
            ranks.extend([outer, inner] if rk == rank else [rk])
        return Tensor(t.name, tuple(ranks), t.dtype, t.iterative)

    def rewrite(e: Einsum) -> Einsum:
        iterates = r in c.iteration_vars(e)
        sigma = {r: flat} if iterates else {}

        def access(a: Access) -> Access:
            ranks = c.tensors[a.tensor].ranks
            idx: list[sympy.Expr] = []
            for i, rk in zip(a.indices, ranks):
                if a.tensor in tiled and rk == rank:
                    if iterates and i == r:
                        idx.extend([r1, r0])
                    elif cut.uniform:
                        f = sympy.sympify(i).subs(sigma)
                        idx.extend([sympy.floor(f / size), sympy.Mod(f, size)])
                    else:
                        raise PassError(f"Einsum {e.name}: reads {a.tensor} at {i}, which an uneven split "
                                        f"of {rank} cannot index")
                else:
                    idx.append(sympy.sympify(i).subs(sigma))
            return Access(a.tensor, tuple(idx))

        expr = substitute(map_accesses(e.expr, access), sigma)
        conds = [] if e.where is None else [e.where.subs(sigma)]
        if iterates and cut.valid is not None:
            conds.append(cut.valid)
        if iterates and not _guarded(c, e.expr, rank, r):
            conds.append(flat < extent)
        where = sympy.And(*conds) if conds else None
        return Einsum(access(e.output), expr, e.reduce, where, e.comment)

    ranks: dict[str, Rank] = {}
    for name, rk in c.ranks.items():
        ranks[name] = rk
        if name == rank:
            ranks[outer] = cut.outer
            ranks[inner] = cut.inner
    out = c.replace(
        ranks=ranks,
        tensors={n: split_ranks(t) for n, t in c.tensors.items()},
        einsums=tuple(rewrite(e) for e in c.einsums),
        partitions=c.partitions + ((Partition(rank, outer, inner),) if cut.uniform else ()),
        params={**c.params, **params},
    )
    return finish(out)


__all__ = ["Split", "split_rank", "tile_rank"]
