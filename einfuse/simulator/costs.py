"""What one tile of an Einsum costs on its unit: occupancy, fill/drain, work, traffic, energy actions.

The 2-D array is a systolic array: operands that are not already in the PEs enter from an edge and
skew across it (``C - 1`` cycles for data indexed by the row rank only, ``R - 1`` for data indexed
by the column rank only, ``R`` more to preload a stationary tile indexed by both) and reductions over
a spatial rank flow down or across it. That reproduces SCALE-Sim's fold times exactly (output
stationary ``T + R + C - 2``, weight/input stationary ``T + 2R + C - 2``). With ``pipeline_folds`` the
array is busy only for the streaming part and the skew is latency; without it (SCALE-Sim), every fold
holds the array for its skew too. The 1-D array runs the query rank across its lanes; its operator
latencies add to the result time. Global-buffer bandwidth bounds every task's occupancy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from einfuse.simulator.engine import UNITS
from einfuse.simulator.mapping import Group, Placed, Plan, Roles
from einfuse.simulator.work import extent

STORAGE_KEYS = ("rf_2d", "rf_1d", "global", "global_write", "dram")   # pJ/B, not actions
FIELDS = ("busy", "points", "partial_points", "macs", "pe_cycles", "dram_rd", "dram_wr", "gb_rd", "gb_wr",
          "rf_bytes")


class Counters:
    """Layout of the counter vector: per Einsum fields and actions, per unit busy cycles."""

    def __init__(self, plan: Plan) -> None:
        self.einsums = [p.name for g in plan.groups for p in g.einsums]
        self.actions = sorted(set(plan.arch.energy_pj) - set(STORAGE_KEYS))
        self.index: dict[tuple, int] = {}
        for e in self.einsums:
            for f in FIELDS:
                self.index[(e, f)] = len(self.index)
            for a in self.actions:
                self.index[(e, "act", a)] = len(self.index)
        for u in UNITS:
            self.index[("unit", u)] = len(self.index)
        self.index[("iterations",)] = len(self.index)
        self.size = len(self.index)

    def vec(self) -> np.ndarray:
        return np.zeros(self.size)


@dataclass(frozen=True)
class TaskCost:
    occ: int
    fill: int
    points: int
    pe_cycles: int          # PE-cycles of operations performed (for utilisation)
    macs: int
    gb_rd: int
    gb_wr: int
    rf_bytes: int
    actions: dict



def ext(plan: Plan, roles: Roles, var: str, rows_n: int, cols_n: int) -> int:
    """Elements of ``var`` in one tile (``rows_n`` keys by ``cols_n`` queries)."""
    if var == roles.rows:
        return rows_n
    if var == roles.stream:
        return 1
    if var == roles.cols:
        return cols_n
    return extent(plan.cascade, var, plan.sizes)


def elems(plan: Plan, roles: Roles, vars_, rows_n: int, cols_n: int) -> int:
    return math.prod(ext(plan, roles, v, rows_n, cols_n) for v in vars_)


def task_cost(plan: Plan, g: Group, p: Placed, rows_n: int, cols_n: int) -> TaskCost:
    """Occupancy, fill, work and traffic of one tile of Einsum ``p`` (see module docstring)."""
    w, roles, arch = p.work, g.roles, plan.arch
    wb = arch.word_bytes
    unit = arch.unit(p.unit)
    points = elems(plan, roles, w.ivars, rows_n, cols_n)
    outs = elems(plan, roles, w.out_vars, rows_n, cols_n)

    def cyc(ops) -> int:
        vals = [unit.ops[o].cycles * n for o, n in ops.items()]
        if not vals:
            return 0
        return max(vals) if unit.chain_ops else sum(vals)

    cpp, cpo = cyc(w.per_point), cyc(w.per_output)
    actions: dict[str, float] = {}
    for ops, n in ((w.per_point, points), (w.per_output, outs)):
        for o, k in ops.items():
            for a, x in unit.ops[o].actions.items():
                actions[a] = actions.get(a, 0.0) + n * k * x
    resident = g.resident_2d if p.unit == "2d" else frozenset()
    gb_rd = gb_wr = 0
    for o in w.operands:
        if o.tensor in resident or o.tensor in g.linked:
            continue
        gb_rd += elems(plan, roles, o.vars, rows_n, cols_n) * wb
    if p.name not in resident and p.name not in g.linked:
        gb_wr = outs * wb
    if p.unit == "2d":
        R, C = unit.rows, unit.cols
        has_r, has_c = roles.rows in w.ivars, roles.cols in w.ivars
        r_used = rows_n if has_r else 1
        c_used = cols_n if has_c else 1
        folds = math.ceil(r_used / R) * math.ceil(c_used / C)
        temporal = points // (r_used * c_used)
        t_out = outs // ((r_used if roles.rows in w.out_vars else 1) *
                         (c_used if roles.cols in w.out_vars else 1))
        fold_t = temporal * cpp + t_out * cpo
        moving = [o for o in w.operands if o.tensor not in resident]
        horiz = any(roles.rows in o.vars and roles.cols not in o.vars for o in moving) or \
            roles.cols in w.reduced
        vert = any(roles.cols in o.vars and roles.rows not in o.vars for o in moving) or \
            roles.rows in w.reduced
        preload = any(roles.rows in o.vars and roles.cols in o.vars for o in moving)
        fill = (C - 1 if horiz else 0) + (R - 1 if vert else 0) + (R if preload else 0)
        if unit.pipeline_folds:
            occ, lat = folds * fold_t, fill
        else:
            occ, lat = folds * (fold_t + fill), 0
        pe_cycles = points * cpp + outs * cpo
    else:
        L = unit.cols
        if roles.cols in w.ivars:
            lanes_groups = math.ceil(cols_n / L)
            occ = lanes_groups * (points // cols_n) * cpp
            occ += math.ceil(outs / L) * cpo if roles.cols not in w.out_vars else \
                lanes_groups * (outs // cols_n) * cpo
        else:
            occ = math.ceil(points / L) * cpp + math.ceil(outs / L) * cpo
        lat = sum(unit.ops[o].latency for o in list(w.per_point) + list(w.per_output))
        pe_cycles = points * cpp + outs * cpo
    gb = arch.global_buffer
    occ = max(occ, math.ceil(gb_rd / gb.read_bytes_per_cycle), math.ceil(gb_wr / gb.write_bytes_per_cycle), 1)
    # every operator reads two operands and writes one result in the PE's register file
    rf_bytes = 3 * wb * (points * sum(w.per_point.values()) + outs * sum(w.per_output.values()))
    return TaskCost(occ, lat, points, pe_cycles, points * w.macs_per_point, gb_rd, gb_wr, rf_bytes, actions)
