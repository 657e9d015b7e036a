"""Split-KV / attention offloading: partial softmax per KV split, then a combine cascade.

The key rank ``M`` is cut into splits ``S`` (devices, or thread blocks in flash-decoding). For every
softmax stage over ``M`` (found by :mod:`einfuse.passes.softmax_match`, so any score or mask works),
each split computes what a device would return:

    PM[s,p]   = max_ms score                      partial max
    PN[s,ms,p] = exp(score - PM[s,p])
    PL[s,p]   = sum_ms PN                         partial sum
    PO[s,p,f] = (sum_ms PN * V) / PL              partial (normalised) output

and the combine merges them into the tensors the rest of the cascade already reads:

    GM[p] = max_s PM;  CW[s,p] = PL * exp(PM - GM);  SD[p] = sum_s CW;  SNV[p,f] = sum_s CW * PO

(``SNV / SD`` is then the softmax output as before). An empty split (all keys masked, or no keys at
all) is absent everywhere and drops out of the combine.

``splits=n`` cuts ``M`` into ``n`` equal splits of ``ceiling(M/n)`` keys (the last shorter, possibly
empty); ``splits=[l0, l1, ...]`` gives each split's length, the last one also taking any keys past the
sum, so the cascade is valid for every ``M``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, binary, unary
from einfuse.ir.ranks import Rank, index_symbol, size_symbol
from einfuse.ir.tensor import Tensor
from einfuse.passes.defer_division import defer_division_all
from einfuse.passes.rewrite import (
    PassOptionError,
    common_suffix,
    factors,
    finish,
    fresh_name,
    product,
    taken_names,
)
from einfuse.passes.softmax_match import find_gmax, match_stage, softmax_stages
from einfuse.passes.tiling import Split, split_rank

_BASES = ("PM", "PN", "PL", "PNV", "PO", "CW")


def _cut(c: Cascade, rank: str, splits: int | Sequence[int]) -> tuple[Split, dict[str, float], object]:
    taken = taken_names(c)
    outer = fresh_name(["S", "SPLIT"], taken)
    inner = fresh_name([f"{rank}S"], taken | {outer})
    s, ms = index_symbol(outer), index_symbol(inner)
    n_sym, extent = size_symbol(outer), c.ranks[rank].extent
    if isinstance(splits, int) and not isinstance(splits, bool):
        if splits < 1:
            raise PassOptionError(f"split_kv: the number of splits must be >= 1, got {splits}")
        inner_ext = sympy.ceiling(extent / n_sym)
        cut = Split(Rank(outer, n_sym), Rank(inner, inner_ext), s * size_symbol(inner) + ms)
        return cut, {outer: float(splits)}, splits
    lengths = [int(x) for x in splits]
    if not lengths or min(lengths) < 0 or sum(lengths) < 1:
        raise PassOptionError(f"split_kv: split lengths must be >= 0 with a positive sum, got {list(splits)}")
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    start = sympy.Piecewise(*[(st, sympy.Eq(s, i)) for i, st in enumerate(starts[:-1])], (starts[-1], True))
    last = extent - starts[-1]  # the last split takes everything after its start
    length = sympy.Piecewise(*[(ln, sympy.Eq(s, i)) for i, ln in enumerate(lengths[:-1])], (last, True))
    inner_ext = sympy.Max(*(lengths[:-1] or [1]), last)
    cut = Split(Rank(outer, n_sym), Rank(inner, inner_ext), start + ms, valid=ms < length, uniform=False)
    return cut, {outer: float(len(lengths))}, lengths


def _split_stage(c: Cascade, gname: str, outer: str) -> Cascade:
    stage = match_stage(c, find_gmax(c, gname))
    g, n, d = stage.gmax, stage.num, stage.den
    s = index_symbol(outer)
    removed = {e.name for e in stage.einsums()}
    sfx = common_suffix(_BASES, taken_names(c) - removed, first=g.name[2:] if g.name.startswith("GM") else "")
    nm = {b: b + sfx for b in _BASES}
    R, Rd, nidx = g.output.indices, d.output.indices, n.output.indices
    g_ranks, d_ranks = c.tensors[g.name].ranks, c.tensors[d.name].ranks

    def at(name: str, idx) -> Access:
        return Access(name, (s,) + tuple(idx))

    x = stage.score
    pn = Access(nm["PN"], nidx)
    tensors = {nm["PM"]: Tensor(nm["PM"], (outer,) + g_ranks),
               nm["PN"]: Tensor(nm["PN"], c.tensors[n.name].ranks),
               nm["PL"]: Tensor(nm["PL"], (outer,) + d_ranks),
               nm["CW"]: Tensor(nm["CW"], (outer,) + d_ranks)}
    partial = [
        Einsum(at(nm["PM"], R), x, "max", g.where, comment="split: partial max"),
        Einsum(pn, unary("exp", binary("sub", x, at(nm["PM"], R))), None, n.where,
               comment="split: numerator"),
        Einsum(at(nm["PL"], Rd), pn, "sum", d.where, comment="split: partial sum"),
    ]
    combine = [
        Einsum(g.output, at(nm["PM"], R), "max", None, comment="combine: global max"),
        Einsum(at(nm["CW"], Rd), binary("mul", at(nm["PL"], Rd), unary("exp", binary(
            "sub", at(nm["PM"], R), g.output))), None, comment="combine: weight of each split"),
        Einsum(d.output, at(nm["CW"], Rd), "sum", None, comment="combine: denominator"),
    ]
    for j, w in enumerate(stage.wsums):
        tag = "" if j == 0 else f"_{j + 1}"
        pnv, po = nm["PNV"] + tag, nm["PO"] + tag
        wr, widx = c.tensors[w.name].ranks, w.output.indices
        tensors.update({pnv: Tensor(pnv, (outer,) + wr), po: Tensor(po, (outer,) + wr)})
        fs = [pn if f == n.output else f for f in factors(w.expr)]
        partial.append(Einsum(at(pnv, widx), product(fs), "sum", w.where, comment="split: partial output"))
        partial.append(Einsum(at(po, widx), binary("div", at(pnv, widx), at(nm["PL"], Rd)), None,
                              comment="split: normalised partial output"))
        combine.append(Einsum(w.output, binary("mul", at(nm["CW"], Rd), at(po, widx)), "sum", None,
                              comment="combine: weighted partial outputs"))
    einsums: list[Einsum] = []
    gone = set(map(id, stage.einsums()))
    for e in c.einsums:
        if e is g:
            einsums.extend(partial + combine)
        elif id(e) not in gone:
            einsums.append(e)
    keep = {k: t for k, t in c.tensors.items() if k != n.name}
    return c.replace(einsums=tuple(einsums), tensors={**keep, **tensors})


def split_kv(c: Cascade, splits: int | Sequence[int], rank: str = "M") -> Cascade:
    """Split the key rank across ``splits`` (a count or the split lengths); see the module docstring."""
    if rank not in c.ranks:
        raise PassOptionError(f"split_kv: {c.name} has no key rank {rank}")
    if c.partition_of(rank) is not None:
        raise PassError(f"split_kv: rank {rank} is already partitioned; split the KV sequence before "
                        "fusing or tiling it (then fuse: flash-decoding)")
    c, _ = defer_division_all(c)
    stages, rejected = softmax_stages(c)
    k = index_symbol(rank)
    mine = [st.gmax.name for st in stages if st.key_vars == {k}]
    if not mine:
        why = "; ".join(rejected) if rejected else f"no softmax normalises over {rank}"
        raise PassError(f"split_kv: nothing to split in {c.name} ({why})")
    cut, params, desc = _cut(c, rank, splits)
    c = split_rank(c, rank, cut, params)
    for gname in mine:
        c = _split_stage(c, gname, cut.outer.name)
    c = finish(c)
    return c.replace(attrs={**c.attrs, "lowered": "split_kv", "kv_splits": desc})


__all__ = ["split_kv"]
