"""Spatial roles: which rank goes down the 2-D array's rows (streamed in key tiles), which across
its columns (cut into sub-blocks of queries), and which unit each Einsum is bound to.

The key rank goes down the rows and the query rank across the columns (``mapping.spatial``) when
an Einsum has them; an Einsum with only one of them takes its remaining output rank for the other;
otherwise the dataflow of the contraction decides as in SCALE-Sim (output stationary: output ranks
spatial; weight/input stationary: the summed rank on the rows). A cascade is split into *stages*
that share roles (agent attention has two softmaxes over different ranks).

Binding: contractions go to the 2-D array; elementwise maps and reductions go to the 1-D array,
except that with ``softmax_on_2d`` those whose iteration space covers both spatial ranks (a full
M0 x P0 tile) stay on the 2-D array when it supports their operators and, where the 1-D array
supports them too, when the 2-D array finishes a point sooner (operator cycles over PEs): the
binding follows from each operator's cost, not from the variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einfuse.errors import SimulatorError
from einfuse.ir.cascade import Cascade
from einfuse.ir.ranks import index_symbol
from einfuse.ir.schedule import schedule
from einfuse.simulator.arch import Arch
from einfuse.simulator.work import EinsumWork, extent


@dataclass(frozen=True)
class Roles:
    """Which iteration variables play which part in the loop nest."""

    stream: str | None       # variable of the key-tile loop (m1, or m tiled by the array height)
    rows: str | None         # variable on the 2-D rows (m0 or m)
    cols: str | None         # variable on the 2-D columns / 1-D lanes (p)
    rows_tile: int           # elements of ``rows`` per key tile
    n_stream: int            # key tiles
    stream_elems: int        # elements of the whole key rank
    cols_tile: int           # elements of ``cols`` per sub-block
    cols_extent: int

    @property
    def n_sub(self) -> int:
        return max(1, math.ceil(self.cols_extent / self.cols_tile))

    def keyed(self, var: str) -> bool:
        return var in (self.stream, self.rows)


# ---- spatial roles -------------------------------------------------------------------------------

def _rank_var(c: Cascade, rank: str) -> str | None:
    return str(index_symbol(rank)) if rank in c.ranks else None


def choose_roles(c: Cascade, works: list[EinsumWork], arch: Arch, sizes: dict[str, int]) -> Roles:
    """Roles for a set of Einsums: those of its dominant (largest) contraction."""
    live = [w for w in works if w.kind != "init"]
    if not live:
        raise SimulatorError(f"cascade {c.name}: nothing to simulate (only initialisations)")

    def dense(w: EinsumWork) -> int:
        return math.prod(extent(c, v, sizes) for v in w.ivars)

    contr = [w for w in live if w.kind == "contraction"]
    rows, cols = _einsum_roles(c, max(contr or live, key=dense), arch, sizes)
    return make_roles(c, arch, sizes, rows, cols)


def _einsum_roles(c: Cascade, w: EinsumWork, arch: Arch, sizes: dict[str, int]) -> tuple:
    """(rows, cols) variables for one Einsum: the design's preferred ranks when present (the other
    one then being the Einsum's remaining output rank), else the dataflow's choice."""
    pol = arch.mapping
    pref_r = [v for v in (_rank_var(c, r) for r in pol.spatial_rows) if v and v in w.ivars]
    pref_c = [v for v in (_rank_var(c, r) for r in pol.spatial_cols) if v and v in w.ivars]
    if pref_r and pref_c:
        return pref_r[0], pref_c[0]
    if pref_r or pref_c:
        taken = (pref_r or pref_c)[0]
        # the block index of the taken rank's partition (p1 of M -> P1, M0) is its key-tile loop,
        # not a spatial rank: leave it out even when it outgrows the block (P1 >= P0 at long lengths)
        outer = {_rank_var(c, p.outer) for p in c.partitions if _rank_var(c, p.inner) == taken}
        others = [v for v in w.out_vars if v != taken and v not in outer]
        other = max(others, key=lambda v: extent(c, v, sizes)) if others else None
        return (taken, other) if pref_r else (other, taken)
    return _dataflow_roles(c, w, arch.pe_array.dataflow, sizes)


def make_roles(c: Cascade, arch: Arch, sizes: dict[str, int], rows: str | None, cols: str | None) -> Roles:
    R, C = arch.pe_array.rows, arch.pe_array.cols
    stream, rows_tile, n_stream, stream_elems = rows, R, 1, 1
    if rows is not None:
        part = next((p for p in c.partitions if _rank_var(c, p.inner) == rows), None)
        if part is not None:
            stream = _rank_var(c, part.outer)
            rows_tile = sizes[part.inner]
            n_stream = sizes[part.outer]
            stream_elems = sizes[part.parent]
        else:
            stream_elems = extent(c, rows, sizes)
            n_stream = math.ceil(stream_elems / R)
    cols_extent = extent(c, cols, sizes) if cols else 1
    return Roles(stream, rows, cols, rows_tile, n_stream, stream_elems, C if cols else 1, cols_extent)


def segments(c: Cascade, works: list[EinsumWork], arch: Arch, sizes: dict[str, int]) -> tuple[dict, list]:
    """Split the cascade into stages that share spatial roles (agent attention's two softmaxes).

    A stage's roles come from its first contraction; a later contraction that lacks the stage's
    row or column rank starts a new stage. Einsums before the first contraction join it."""
    order = [i for g in schedule(c) for i in g.einsums if works[i].kind != "init"]
    seg_of: dict[int, int] = {}
    roles: list[Roles] = []
    pending: list[int] = []
    for i in order:
        w = works[i]
        if w.kind == "contraction":
            cur = roles[-1] if roles else None
            if cur is None or not (cur.rows in w.ivars and cur.cols in w.ivars):
                rows, cols = _einsum_roles(c, w, arch, sizes)
                roles.append(make_roles(c, arch, sizes, rows, cols))
            for j in pending:
                seg_of[j] = len(roles) - 1
            pending.clear()
            seg_of[i] = len(roles) - 1
        elif roles:
            seg_of[i] = len(roles) - 1
        else:
            pending.append(i)
    if pending:
        if not roles:
            roles.append(choose_roles(c, [works[i] for i in pending], arch, sizes))
        for j in pending:
            seg_of[j] = len(roles) - 1
    return seg_of, roles


def _dataflow_roles(c: Cascade, w: EinsumWork, dataflow: str, sizes: dict[str, int]) -> tuple:
    ext = {v: extent(c, v, sizes) for v in w.ivars}

    def biggest(vs: set[str]) -> str | None:
        return max(sorted(vs), key=lambda v: ext[v]) if vs else None

    out = set(w.out_vars)
    if w.kind == "contraction" and len(w.operands) >= 2:
        a, b = w.operands[0].vars, w.operands[1].vars
        m_like, n_like = (a & out) - b, (b & out) - a
        k = set(w.reduced) & a & b
        if dataflow == "output_stationary":
            return biggest(m_like), biggest(n_like - {biggest(m_like)})
        if dataflow == "weight_stationary":
            return biggest(k), biggest(n_like)
        return biggest(k), biggest(m_like)
    ordered = [v for v in w.out_vars] + [v for v in w.ivars if v not in out]
    return (ordered[0] if ordered else None), (ordered[1] if len(ordered) > 1 else None)


# ---- binding ---------------------------------------------------------------------------------------

def _point_time(w: EinsumWork, unit, pes: int) -> float:
    """Cycles per iteration point of ``w`` on ``unit``, spread over its ``pes`` PEs."""
    vals = [unit.ops[o].cycles * n for o, n in w.per_point.items()]
    cyc = (max(vals) if unit.chain_ops else sum(vals)) if vals else 0
    return cyc / pes


def bind(w: EinsumWork, roles: Roles, arch: Arch) -> str:
    """The unit an Einsum runs on (see module docstring); raises when no unit has its operators."""
    pe, vec = arch.pe_array, arch.vector_array
    ops = set(w.ops)
    on2d = all(pe.supports(o) for o in ops)
    on1d = all(vec.supports(o) for o in ops)
    tile_sized = roles.rows in w.ivars and roles.cols in w.ivars
    if w.kind == "contraction" and on2d:
        return "2d"
    if arch.mapping.softmax_on_2d and tile_sized and on2d:
        if not on1d:
            return "2d"
        # both units can: the one that finishes a point sooner (the 2-D array's many PEs running a
        # series on their MACs beat the 1-D array's native unit; e.g. sigmoid: 14 MAC cycles over
        # 65,536 PEs vs 8 cycles over 256 lanes)
        return "2d" if _point_time(w, pe, pe.pes) <= _point_time(w, vec, vec.pes) else "1d"
    if on1d:
        return "1d"
    if on2d:
        return "2d"
    missing = sorted(o for o in ops if not pe.supports(o) and not vec.supports(o)) or sorted(ops)
    raise SimulatorError(
        f"Einsum {w.name}: operator {missing[0]!r} is not supported by any unit of architecture "
        f"{arch.name} (add it to pe_array.ops or vector_array.ops)")
