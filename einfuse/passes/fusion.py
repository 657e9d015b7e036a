"""Online-normalisation fusion: the 1-pass (FlashAttention-2 / FuseMax Cascade 5) form.

Derived from the IR, not from a template per variant. For every softmax stage that
:mod:`einfuse.passes.softmax_match` finds (after deferring the division):

1. tile the key rank ``M -> M1, M0`` (:func:`~einfuse.passes.tiling.tile_rank`, ragged last tile);
2. replace the global max by a per-tile max ``LM`` and a running max ``RM`` over the iterative rank
   ``M1``; the numerator becomes ``SLN = exp(BQK - RM[m1+1])`` on the tile;
3. replace the denominator and every weighted sum by running values rescaled with the correction
   factor ``PRM = exp(RM[m1] - RM[m1+1])`` (``RD``, ``RNV``);
4. make everything that read ``GM``, ``SD`` or a weighted sum read the final running value
   (``RM[M1]``, ``RD[M1]``, ``RNV[M1]``): they are equal because ``RM[M1] = GM``.

Running tensors start ``empty`` rather than at ``-inf``/0: with the executor's presence rules a key
tile with no visible key contributes nothing and a fully masked query row stays empty (0, not NaN).
The score (after any score_mod, with its constraint) becomes ``BQK[M1,M0,P]``. A cascade with several
softmax stages (agent attention) has each fused; a later stage's tensors get the stage's suffix
(``GM2 -> RM2``, ``BQK2``...).
"""

from __future__ import annotations

import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Empty, Expr, binary, map_accesses, unary
from einfuse.ir.ranks import size_symbol
from einfuse.ir.tensor import Tensor
from einfuse.passes.defer_division import defer_division_all
from einfuse.passes.rewrite import (
    PassOptionError,
    common_suffix,
    factors,
    finish,
    fresh_name,
    product,
    rename_tensors,
    taken_names,
)
from einfuse.passes.softmax_match import SoftmaxStage, find_gmax, match_stage, softmax_stages
from einfuse.passes.tiling import tile_rank

_BASES = ("BQK", "LM", "RM", "SLN", "SLD", "PRM", "SPD", "RD", "SLNV", "SPNV", "RNV")


def _outer_of(c: Cascade, keys: frozenset[sympy.Symbol]) -> tuple[str, sympy.Symbol, sympy.Symbol]:
    for part in c.partitions:
        outer, inner = c.ranks[part.outer].index, c.ranks[part.inner].index
        if keys == {outer, inner}:
            return part.outer, outer, inner
    raise PassError("key ranks are not the two halves of one partition")  # pragma: no cover


def _name_score(c: Cascade, stage: SoftmaxStage, bqk: str) -> tuple[Cascade, Einsum | None]:
    """Give the tiled score the name ``BQK`` (and its tiled inputs ``B<name>``); when the score is
    not a plain intermediate read only by the max and the numerator, a new Einsum computes it."""
    x = stage.score
    g_i, n_i = c.einsums.index(stage.gmax), c.einsums.index(stage.num)
    if isinstance(x, Access) and x.tensor in c.tensors and x.tensor not in c.inputs + c.outputs:
        prods = c.producers(x.tensor)
        if (len(prods) == 1 and c.einsums[prods[0]].output == x
                and set(c.consumers(x.tensor)) <= {g_i, n_i}):
            mapping = {x.tensor: bqk}
            taken = taken_names(c) | {bqk}
            frontier = [c.einsums[prods[0]]]
            k_ranks = {c.rank_of_index(v).name for v in stage.key_vars}
            while frontier:
                e = frontier.pop()
                for u in e.operand_tensors():
                    t = c.tensors[u]
                    if (u in c.inputs or u in mapping or not k_ranks <= set(t.ranks)
                            or len(c.producers(u)) != 1 or len(c.consumers(u)) != 1):
                        continue
                    mapping[u] = fresh_name([f"B{u}", f"B{u}R"], taken)
                    taken.add(mapping[u])
                    frontier.append(c.einsums[c.producers(u)[0]])
            return rename_tensors(c, mapping), None
    n = stage.num
    new = Einsum(Access(bqk, n.output.indices), x, None, stage.gmax.where, comment="score tile")
    c = c.replace(tensors={**c.tensors, bqk: Tensor(bqk, c.tensors[n.name].ranks)})
    return c, new


def _fuse_stage(c: Cascade, gname: str, tile: int) -> Cascade:
    stage = match_stage(c, find_gmax(c, gname))
    if len(stage.key_vars) == 1:
        (k,) = stage.key_vars
        c = tile_rank(c, c.rank_of_index(k).name, tile)
        stage = match_stage(c, find_gmax(c, gname))
    outer, k1, _ = _outer_of(c, stage.key_vars)
    derived = gname[2:] if gname.startswith("GM") else ""
    removed = {e.name for e in stage.einsums()}
    s = common_suffix(_BASES, taken_names(c) - removed, first=derived)
    nm = {b: b + s for b in _BASES}
    c, bqk_einsum = _name_score(c, stage, nm["BQK"])
    stage = match_stage(c, find_gmax(c, gname))
    g, n, d = stage.gmax, stage.num, stage.den

    last = size_symbol(outer)
    R, Rd = g.output.indices, d.output.indices
    nidx = n.output.indices
    bqk = Access(nm["BQK"], nidx) if bqk_einsum is not None else stage.score

    def at(name: str, step: sympy.Expr, idx) -> Access:
        return Access(name, (step,) + tuple(idx))

    def decl(name: str, ranks, iterative: bool = False) -> Tensor:
        its = frozenset({outer}) if iterative else frozenset()
        return Tensor(name, (outer,) + tuple(ranks), iterative=its)

    g_ranks, d_ranks = c.tensors[g.name].ranks, c.tensors[d.name].ranks
    tensors = {
        nm["LM"]: decl(nm["LM"], g_ranks), nm["RM"]: decl(nm["RM"], g_ranks, True),
        nm["SLN"]: Tensor(nm["SLN"], c.tensors[n.name].ranks), nm["SLD"]: decl(nm["SLD"], d_ranks),
        nm["PRM"]: decl(nm["PRM"], g_ranks), nm["SPD"]: decl(nm["SPD"], d_ranks),
        nm["RD"]: decl(nm["RD"], d_ranks, True),
    }
    init = [Einsum(at(nm["RM"], 0, R), Empty(), None, comment="running max starts empty"),
            Einsum(at(nm["RD"], 0, Rd), Empty(), None, comment="running sum starts empty")]
    body = [
        Einsum(at(nm["LM"], k1, R), bqk, "max", g.where, comment="tile max"),
        Einsum(at(nm["RM"], k1 + 1, R), binary("max", at(nm["RM"], k1, R), at(nm["LM"], k1, R)), None,
               comment="running max"),
        Einsum(Access(nm["SLN"], nidx), unary("exp", binary("sub", bqk, at(nm["RM"], k1 + 1, R))), None,
               n.where, comment="tile numerator"),
        Einsum(at(nm["SLD"], k1, Rd), Access(nm["SLN"], nidx), "sum", d.where, comment="tile sum"),
    ]
    sln = Access(nm["SLN"], nidx)
    prm = at(nm["PRM"], k1, R)
    tail = [
        Einsum(prm, unary("exp", binary("sub", at(nm["RM"], k1, R), at(nm["RM"], k1 + 1, R))), None,
               comment="correction factor"),
        Einsum(at(nm["SPD"], k1, Rd), binary("mul", at(nm["RD"], k1, Rd), prm), None,
               comment="rescaled previous sum"),
        Einsum(at(nm["RD"], k1 + 1, Rd), binary("add", at(nm["SLD"], k1, Rd), at(nm["SPD"], k1, Rd)), None,
               comment="running sum"),
    ]
    finals: dict[str, Access] = {g.name: at(nm["RM"], last, R), d.name: at(nm["RD"], last, Rd)}
    for j, w in enumerate(stage.wsums):
        tag = "" if j == 0 else f"_{j + 1}"
        slnv, spnv, rnv = nm["SLNV"] + tag, nm["SPNV"] + tag, nm["RNV"] + tag
        wr, widx = c.tensors[w.name].ranks, w.output.indices
        tensors.update({slnv: decl(slnv, wr), spnv: decl(spnv, wr), rnv: decl(rnv, wr, True)})
        init.append(Einsum(at(rnv, 0, widx), Empty(), None, comment="running output starts empty"))
        fs = [sln if f == n.output else f for f in factors(w.expr)]
        body.append(Einsum(at(slnv, k1, widx), product(fs), "sum", w.where, comment="tile output"))
        tail.append(Einsum(at(spnv, k1, widx), binary("mul", at(rnv, k1, widx), prm), None,
                           comment="rescaled previous output"))
        tail.append(Einsum(at(rnv, k1 + 1, widx), binary("add", at(slnv, k1, widx), at(spnv, k1, widx)),
                           None, comment="running output"))
        finals[w.name] = at(rnv, last, widx)

    def final_read(a: Access) -> Expr:
        f = finals.get(a.tensor)
        return a if f is None else Access(f.tensor, (f.indices[0],) + a.indices)

    copies = [Einsum(e.output, final_read(e.output), None, comment="final running value")
              for e in stage.einsums() if e.name in finals and e.name in c.outputs]
    block = ([bqk_einsum] if bqk_einsum is not None else []) + init + body + tail + copies
    gone = set(map(id, stage.einsums()))
    einsums: list[Einsum] = []
    for e in c.einsums:
        if e is g:
            einsums.extend(block)
        elif id(e) not in gone:
            einsums.append(Einsum(e.output, map_accesses(e.expr, final_read), e.reduce, e.where, e.comment))
    keep = {n: t for n, t in c.tensors.items() if n not in removed or n in c.outputs}
    return c.replace(einsums=tuple(einsums), tensors={**keep, **tensors})


def fuse_online_softmax(c: Cascade, tile: int = 64) -> Cascade:
    """Rewrite every softmax normalisation of ``c`` into the 1-pass online form (key tiles of ``tile``).

    Raises :class:`PassError` when ``c`` has no softmax normalisation, or when a stage cannot be
    rewritten (the message names the Einsum at fault).
    """
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
        raise PassOptionError(f"fuse: tile must be a positive integer, got {tile!r}")
    c, _ = defer_division_all(c)
    stages, rejected = softmax_stages(c)
    if not stages:
        why = "; ".join(rejected) if rejected else "no Einsum max-reduces over a rank"
        raise PassError(f"fuse: {c.name} has no softmax normalisation to fuse ({why})")
    for gname in [s.gmax.name for s in stages]:
        c = _fuse_stage(c, gname, tile)
    c = finish(c)
    return c.replace(attrs={**c.attrs, "lowered": "online_softmax"})


__all__ = ["fuse_online_softmax"]
