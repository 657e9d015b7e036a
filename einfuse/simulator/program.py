"""From a mapping to a program for the engine: the loop nest as a tree, and tasks per tile class.

The loop nest of every design is the same (Mapping 1 of the FuseMax paper, generalised)::

    for batch, head:                         # repetition
      for row block (P1 sub-blocks of queries):
        for group (fusion phase):
          prologue: load row-resident inputs (Q), prologue Einsums, per sub-block
          for pass k:
            for key tile s:                  # a "row" leaf: one class vector over the sub-blocks
              load key-tile inputs (K, V) once; then per sub-block q (skipping EMPTY tiles):
                load per-tile inputs / spilled tensors, run the pass's Einsums, store spills
            after pass k: Einsums that need the whole key loop, stores of finished outputs

Leaves are identified by a signature (group, pass, rows in the key tile, columns and class of each
sub-block) and compiled to tasks once per window slot offset. Counters (busy cycles, operations,
bytes) are per Einsum and add up linearly, so the engine can scale them when it fast-forwards.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from einfuse.simulator.engine import UNITS, Entry, Keys, Leaf, MaxInto, Rep, Reset, Segment, Seq, Task
from einfuse.simulator.mapping import Group, Placed, Plan
from einfuse.simulator.tiles import EMPTY, FULL, PARTIAL, Tiles
from einfuse.simulator.work import extent

FIELDS = ("busy", "points", "partial_points", "macs", "pe_cycles", "dram_rd", "dram_wr", "gb_rd", "gb_wr",
          "rf_bytes")
U2D, U1D, UDRAM = 0, 1, 2


class Counters:
    """Layout of the counter vector: per Einsum fields and actions, per unit busy cycles."""

    def __init__(self, plan: Plan) -> None:
        self.einsums = [p.name for g in plan.groups for p in g.einsums]
        self.actions = sorted(set(plan.arch.energy_pj) - {"rf_2d", "rf_1d", "global", "dram"})
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


class Compiler:
    """Compiles leaf signatures into segments for one plan."""

    @property
    def roles(self):
        """Spatial roles of the group being compiled."""
        return self._g.roles

    def use_group(self, gi: int) -> Group:
        self._g = self.plan.groups[gi]
        return self._g

    def __init__(self, plan: Plan, tiles: list[Tiles]) -> None:
        self.plan = plan
        self.arch = plan.arch
        self.tiles = list(tiles)       # per group
        self._g = plan.groups[0]
        self.keys = Keys()
        self.causes = Keys()
        self.counters = Counters(plan)
        self.window_keys = [self.keys(("win", "s", j)) for j in range(plan.window)]
        self.release_keys = [self.keys(("rel", "r", j)) for j in range(plan.kv_buffers)]
        self.w = plan.arch.word_bytes
        self.bpc = plan.arch.dram_bytes_per_cycle
        self._cost_cache: dict[tuple, TaskCost] = {}
        self._stage_cache: dict[tuple, dict[str, int]] = {}
        self._n_stages: int | None = None
        self._bp = 0
        self._persist: dict[tuple, bool] = {}

    # ---- shapes ---------------------------------------------------------------------------------
    def ext(self, var: str, rows_n: int, cols_n: int) -> int:
        r = self.roles
        if var == r.rows:
            return rows_n
        if var == r.stream:
            return 1
        if var == r.cols:
            return cols_n
        return extent(self.plan.cascade, var, self.plan.sizes)

    def elems(self, vars_, rows_n: int, cols_n: int) -> int:
        return math.prod(self.ext(v, rows_n, cols_n) for v in vars_)

    def rows_n(self, s: int) -> int:
        r = self.roles
        return max(1, min(r.rows_tile, r.stream_elems - s * r.rows_tile))

    def cols_n(self, q: int) -> int:
        r = self.roles
        return max(1, min(r.cols_tile, r.cols_extent - q * r.cols_tile))

    # ---- task costs -----------------------------------------------------------------------------
    def cost(self, g: Group, p: Placed, rows_n: int, cols_n: int) -> TaskCost:
        key = (id(g), p.name, rows_n, cols_n)
        hit = self._cost_cache.get(key)
        if hit is None:
            hit = self._cost_cache[key] = self._cost(g, p, rows_n, cols_n)
        return hit

    def _cost(self, g: Group, p: Placed, rows_n: int, cols_n: int) -> TaskCost:
        w, roles, arch = p.work, g.roles, self.arch
        unit = arch.unit(p.unit)
        points = self.elems(w.ivars, rows_n, cols_n)
        outs = self.elems(w.out_vars, rows_n, cols_n)

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
            gb_rd += self.elems(o.vars, rows_n, cols_n) * self.w
        if p.name not in resident and p.name not in g.linked:
            gb_wr = outs * self.w
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
        rf_bytes = 3 * self.w * (points * sum(w.per_point.values()) + outs * sum(w.per_output.values()))
        return TaskCost(occ, lat, points, pe_cycles, points * w.macs_per_point, gb_rd, gb_wr, rf_bytes, actions)

    # ---- counters -------------------------------------------------------------------------------
    def _add_compute(self, vec: np.ndarray, p: Placed, tc: TaskCost, partial: bool) -> None:
        ix = self.counters.index
        n = p.name
        vec[ix[(n, "busy")]] += tc.occ
        vec[ix[(n, "points")]] += tc.points
        if partial and self.roles.rows in p.work.ivars and self.roles.cols in p.work.ivars:
            vec[ix[(n, "partial_points")]] += tc.points
        vec[ix[(n, "macs")]] += tc.macs
        vec[ix[(n, "pe_cycles")]] += tc.pe_cycles
        vec[ix[(n, "gb_rd")]] += tc.gb_rd
        vec[ix[(n, "gb_wr")]] += tc.gb_wr
        vec[ix[(n, "rf_bytes")]] += tc.rf_bytes
        for a, x in tc.actions.items():
            vec[ix[(n, "act", a)]] += x
        vec[ix[("unit", p.unit)]] += tc.occ

    def _dram(self, ops: list, vec: np.ndarray, owner: str, tensor: str, nbytes: int, deps: tuple,
              out: int, store: bool) -> None:
        occ = max(1, math.ceil(nbytes / self.bpc))
        what = "store of" if store else "load of"
        ops.append(Task(UDRAM, occ, self.arch.dram_latency_cycles, deps, (), out,
                        self.causes(f"DRAM {what} {tensor}")))
        ix = self.counters.index
        vec[ix[(owner, "dram_wr" if store else "dram_rd")]] += nbytes
        vec[ix[(owner, "gb_rd" if store else "gb_wr")]] += nbytes
        vec[ix[("unit", "dram")]] += occ

    # ---- keys -----------------------------------------------------------------------------------
    # Three lifetimes: data of one tile iteration is keyed by its window slot (at most ``window``
    # iterations are in flight, and a slot is reused only after its previous iteration finished);
    # data that outlives its iteration (running state, results read after the key loop or by a
    # later pass) is keyed per sub-block and row block (two row blocks may be in flight); key-tile
    # loads shared by a row of iterations are keyed by the row's double-buffer half.
    def k(self, key: tuple) -> int:
        return self.keys(key + ("b", self._bp))

    def sk(self, key: tuple, slot: int) -> int:
        return self.keys(key + ("s", slot))

    def persisted(self, g: Group, t: str) -> bool:
        """Is tensor ``t`` (produced in a pass body) read after the iteration that produced it?"""
        hit = self._persist.get((id(g), t))
        if hit is None:
            ps = g.producer_stage.get(t)
            hit = any(o.tensor == t and (o.carried or o.final or p.stage != ps)
                      for p in g.einsums for o in p.work.operands)
            hit = hit or (t in g.stored and not any(self.roles.keyed(v) for v in self.plan.tensor_vars[t]))
            self._persist[(id(g), t)] = hit
        return hit

    # ---- leaves ---------------------------------------------------------------------------------
    def compile(self, sig: tuple, offset: int, parity: int, bparity: int) -> Segment:
        self._bp = bparity
        kind = sig[0]
        if kind == "drain":
            return Segment([], self.counters.vec(), drain=True)
        self.use_group(sig[1])
        if kind == "pro":
            return self._pro(sig, offset)
        if kind == "row":
            return self._row(sig, offset, parity)
        return self._post(sig, offset)

    def _operand_key(self, g: Group, p: Placed, o, q: int, slot: int | None, parity: int) -> tuple[int, bool]:
        """Key a task waits on for operand ``o`` (``slot``: the iteration's window slot, None
        outside pass bodies); True when it is a chain edge (data resident in the 2-D array)."""
        roles = self.roles
        t = o.tensor
        tv = self.plan.tensor_vars[t]
        keyed = any(roles.keyed(v) for v in tv)
        qk = q if roles.cols in tv else None
        if t in g.external:
            if not keyed:
                return self.k(("ld", t, qk)), False
            if roles.cols not in tv:
                return self.keys(("ld", t, p.stage, "r", parity)), False
            if g.fiber.get(t) and p.stage != self._first_stage(g, t):
                return self.k(("ld", t, q)), False
            return self.sk(("ld", t), slot), False
        if t in g.fiber and not g.fiber[t] and g.producer_stage.get(t, p.stage) < p.stage:
            return self.sk(("ld", t), slot), False
        prod = next((x for x in g.einsums if x.name == t), None)
        if prod is not None and roles.cols not in prod.work.ivars and prod.stage % 2 == 1:
            return self.keys((t, "row", "r", parity)), False
        same_iteration = slot is not None and not o.carried and not o.final and \
            g.producer_stage.get(t) == p.stage
        if same_iteration:
            chain = p.unit == "2d" and t in g.resident_2d
            return self.sk((t,), slot), chain
        return self.k((t, qk)), False

    def _compute(self, ops: list, vec: np.ndarray, g: Group, p: Placed, q: int, rows_n: int,
                 cols_n: int, gate: int, partial: bool, slot: int | None = None, parity: int = 0) -> int:
        tc = self.cost(g, p, rows_n, cols_n)
        deps, chain = [gate], []
        for o in p.work.operands:
            key, is_chain = self._operand_key(g, p, o, q, slot, parity)
            (chain if is_chain else deps).append(key)
        qk = q if self.roles.cols in p.work.out_vars or self.roles.cols in p.work.ivars else None
        if slot is None:
            out = self.k((p.name, qk))
        elif self.roles.cols not in p.work.ivars:
            out = self.keys((p.name, "row", "r", parity))
        else:
            out = self.sk((p.name,), slot)
        ops.append(Task(U2D if p.unit == "2d" else U1D, tc.occ, tc.fill, tuple(dict.fromkeys(deps)),
                        tuple(dict.fromkeys(chain)), out, self.causes(f"{p.name} on the {p.unit} array")))
        if slot is not None and self.roles.cols in p.work.ivars and self.persisted(g, p.name):
            ops.append(Reset(self.k((p.name, qk)), out))
        self._add_compute(vec, p, tc, partial)
        return out

    @staticmethod
    def _first_stage(g: Group, t: str) -> int:
        return min(p.stage for p in g.einsums if p.stage % 2 == 1 and any(o.tensor == t for o in p.work.operands))

    def _first_reader(self, g: Group, t: str, stage: int | None = None) -> str:
        for p in g.einsums:
            if (stage is None or p.stage == stage) and any(o.tensor == t for o in p.work.operands):
                return p.name
        return g.einsums[0].name

    def _pro(self, sig: tuple, offset: int) -> Segment:
        """Start of a row block: fresh running state, row-resident loads (Q), prologue Einsums."""
        _, gi, qcols = sig
        g = self.plan.groups[gi]
        roles = self.roles
        ops: list = []
        vec = self.counters.vec()
        gate = self.window_keys[offset % len(self.window_keys)]
        resident_inputs = sorted(t for t in g.external
                                 if not any(roles.keyed(v) for v in self.plan.tensor_vars[t]))
        running = sorted({o.tensor for p in g.einsums for o in p.work.operands if o.carried})
        for q, cols_n in enumerate(qcols):
            for t in running:      # a new row block starts its recurrences from their initial value
                ops.append(Reset(self.k((t, q if roles.cols in self.plan.tensor_vars[t] else None)), gate))
            for t in resident_inputs:
                tv = self.plan.tensor_vars[t]
                if roles.cols not in tv and q > 0:
                    continue
                nbytes = self.elems(tv, roles.rows_tile, cols_n) * self.w
                self._dram(ops, vec, self._first_reader(g, t), t, nbytes, (gate,),
                           self.k(("ld", t, q if roles.cols in tv else None)), store=False)
            for p in g.einsums:
                if p.stage == 0:
                    self._compute(ops, vec, g, p, q, roles.rows_tile, cols_n, gate, False)
            self._stores(ops, vec, g, 0, q, cols_n, gate)
        return Segment([Entry([ops], step=False)], vec)

    def _stores(self, ops, vec, g: Group, stage: int, q: int, cols_n: int, gate: int) -> None:
        """Stores of finished, non-keyed group outputs produced at ``stage`` (or the pass before)."""
        roles = self.roles
        for t in sorted(g.stored):
            ps = g.producer_stage.get(t)
            tv = self.plan.tensor_vars[t]
            if any(roles.keyed(v) for v in tv):
                continue
            if ps == stage or (stage % 2 == 0 and ps == stage - 1):
                if roles.cols not in tv and q > 0:
                    continue
                nbytes = self.elems(tv, roles.rows_tile, cols_n) * self.w
                key = self.k((t, q if roles.cols in tv else None))
                self._dram(ops, vec, t, t, nbytes, (gate, key), self.k(("st", t, q)), store=True)

    def _post(self, sig: tuple, offset: int) -> Segment:
        """After pass k: Einsums needing the whole key loop (O = RNV/RD) and stores of outputs.
        At the end of a row block it waits in the pipeline until the last tiles' final stages have
        been issued (the next row block's tiles keep flowing); between passes or groups, which
        read what this pass produced, the pipeline is drained first."""
        _, gi, k, qcols, drain = sig
        g = self.plan.groups[gi]
        ops: list = []
        vec = self.counters.vec()
        gate = self.window_keys[offset % len(self.window_keys)]
        for q, cols_n in enumerate(qcols):
            for p in g.einsums:
                if p.stage == 2 * k:
                    self._compute(ops, vec, g, p, q, self.roles.rows_tile, cols_n, gate, False)
            self._stores(ops, vec, g, 2 * k, q, cols_n, gate)
        if drain:
            return Segment([Entry([ops], step=False)], vec, drain=True)
        return Segment([Entry([[] for _ in range(self.n_stages - 1)] + [ops])], vec)

    def _row(self, sig: tuple, offset: int, parity: int) -> Segment:
        """One key tile of pass k across the row block's sub-blocks (EMPTY ones skipped)."""
        _, gi, k, rows_n, qcols, kinds = sig
        g = self.plan.groups[gi]
        roles = self.roles
        stage = 2 * k - 1
        body = [p for p in g.einsums if p.stage == stage]
        per_q = [p for p in body if roles.cols in p.work.ivars]
        once = [p for p in body if roles.cols not in p.work.ivars]
        W = len(self.window_keys)
        head: list = []
        vec = self.counters.vec()
        gate0 = self.window_keys[offset % W]
        release = self.release_keys[parity]
        readers = {o.tensor for p in body for o in p.work.operands}
        # key-tile inputs shared by every sub-block (K, V tiles): one load per key tile, into the
        # buffer half released when the key tile two rows back finished (double buffering)
        for t in sorted(g.external & readers):
            tv = self.plan.tensor_vars[t]
            if any(roles.keyed(v) for v in tv) and roles.cols not in tv:
                nbytes = self.elems(tv, rows_n, 1) * self.w
                self._dram(head, vec, self._first_reader(g, t, stage), t, nbytes, (release,),
                           self.keys(("ld", t, stage, "r", parity)), store=False)
        for p in once:
            self._compute(head, vec, g, p, 0, rows_n, 1, gate0, False, slot=offset % W, parity=parity)
        tile_loads = sorted(t for t in readers if self._tile_load(g, t, stage))
        spill_stores = sorted(t for t in (g.stored | {x for x, kept in g.fiber.items() if not kept})
                              if g.producer_stage.get(t) == stage and
                              any(roles.keyed(v) for v in self.plan.tensor_vars[t]))
        stages = self.stages(gi, k) if self.arch.mapping.interleave else {}
        entries = [Entry([head], step=False)]
        it = 0
        for q, (cols_n, kind) in enumerate(zip(qcols, kinds)):
            if kind == EMPTY:
                continue
            si = (offset + it) % W
            slot = self.window_keys[si]
            it += 1
            by_stage: list[list] = [[] for _ in range(self.n_stages)]
            for t in tile_loads:
                nbytes = self.elems(self.plan.tensor_vars[t], rows_n, cols_n) * self.w
                deps = [slot]
                if t in g.fiber and t not in g.external:
                    deps.append(self.k(("st", t, q)))
                ld = self.sk(("ld", t), si)
                self._dram(by_stage[0], vec, self._first_reader(g, t, stage), t, nbytes, tuple(deps), ld,
                           store=False)
                if t in g.external and g.fiber.get(t):   # kept on chip for the later passes
                    by_stage[0].append(Reset(self.k(("ld", t, q)), ld))
            outs = [self._compute(by_stage[stages.get(p.name, 0)], vec, g, p, q, rows_n, cols_n, slot,
                                  kind == PARTIAL, slot=si, parity=parity) for p in per_q]
            for t in spill_stores:   # a stage later, so the next tile's loads go first (prefetch)
                nbytes = self.elems(self.plan.tensor_vars[t], rows_n, cols_n) * self.w
                st = min(stages.get(t, 0) + 1, self.n_stages - 1)
                self._dram(by_stage[st], vec, t, t, nbytes, (slot, self.sk((t,), si)),
                           self.k(("st", t, q)), store=True)
            last = max([i for i, ops in enumerate(by_stage) if ops] + [0])
            by_stage[last].append(MaxInto(slot, tuple(outs)))
            by_stage[last].append(MaxInto(release, tuple(outs)))
            entries.append(Entry(by_stage[:last + 1]))
        vec[self.counters.index[("iterations",)]] += it
        return Segment(entries, vec, it, 1)

    @property
    def n_stages(self) -> int:
        """Pipeline depth: the deepest software-pipeline stage of any pass plus one for stores,
        at most the window (a tile's last stage must issue before its window slot is reused)."""
        if self._n_stages is None:
            deepest = 0
            if self.arch.mapping.interleave:
                for gi, g in enumerate(self.plan.groups):
                    for k in range(1, g.n_passes + 1):
                        deepest = max([deepest] + list(self.stages(gi, k).values()))
            self._n_stages = max(1, min(deepest + 2, len(self.window_keys)))
        return self._n_stages

    def stages(self, gi: int, k: int) -> dict[str, int]:
        """Software-pipeline stage of each Einsum of pass ``k``: its start in an unconstrained
        schedule of one full tile, in units of the initiation interval (the busiest array's work
        per tile), capped so a tile never outlives its window slot. This is the epoch structure of
        FuseMax's binding, derived from the cascade rather than drawn."""
        key = ("stages", gi, k)
        hit = self._stage_cache.get(key)
        if hit is not None:
            return hit
        saved = self._g
        g = self.use_group(gi)
        roles = self.roles
        per_q = [p for p in g.einsums if p.stage == 2 * k - 1 and roles.cols in p.work.ivars]
        names = {p.name for p in per_q}
        start: dict[str, int] = {}
        result: dict[str, int] = {}
        stream: dict[str, int] = {}
        busy = {"2d": 0, "1d": 0}
        for p in per_q:
            tc = self.cost(g, p, roles.rows_tile, roles.cols_tile)
            busy[p.unit] += tc.occ
            r = cr = cres = 0
            for o in p.work.operands:
                if o.tensor not in names or o.carried or o.tensor not in result:
                    continue
                if p.unit == "2d" and o.tensor in g.resident_2d:
                    cr, cres = max(cr, stream[o.tensor]), max(cres, result[o.tensor])
                else:
                    r = max(r, result[o.tensor])
            s0 = max(r, cr)
            start[p.name] = s0
            stream[p.name] = s0 + tc.occ
            result[p.name] = max(s0 + tc.occ + tc.fill, cres + tc.occ)
        ii = max(max(busy.values()), 1)
        cap = len(self.window_keys) - 1
        out = {n: min(v // ii, cap) for n, v in start.items()}
        # a running value must be issued before the next tile (one step later) reads it
        for p in per_q:
            for o in p.work.operands:
                if o.carried and o.tensor in out and out[p.name] < out[o.tensor] - 1:
                    out[p.name] = out[o.tensor] - 1
        self._stage_cache[key] = out
        self._g = saved
        return out

    def _tile_load(self, g: Group, t: str, stage: int) -> bool:
        roles = self.roles
        tv = self.plan.tensor_vars[t]
        keyed = any(roles.keyed(v) for v in tv)
        if t in g.external:
            return keyed and roles.cols in tv and (not g.fiber.get(t) or stage == self._first_stage(g, t))
        return t in g.fiber and not g.fiber[t] and g.producer_stage.get(t, stage) < stage


# ---- the program tree ------------------------------------------------------------------------------

def build_program(comp: Compiler, batch: int, heads: int) -> object:
    """Per (batch, head): every group (fusion phase) over all its row blocks, groups in order."""
    plan = comp.plan
    distinct = max(t.heads for t in comp.tiles)
    head_progs = []
    for hm in range(distinct):
        parts: list = []
        for gi, g in enumerate(plan.groups):
            comp.use_group(gi)
            roles, tiles = g.roles, comp.tiles[gi]
            if parts:
                parts.append(Leaf(("drain",)))   # the next group reads what this one stored
            blocks = []
            for r in range(math.ceil(roles.n_sub / g.p1)):
                q0, q1 = r * g.p1, min((r + 1) * g.p1, roles.n_sub)
                qcols = tuple(comp.cols_n(q) for q in range(q0, q1))
                kinds = None if tiles.kinds is None else tiles.kinds[min(hm, tiles.heads - 1), q0:q1, :]
                blocks.append(_row_block(comp, gi, qcols, kinds))
            parts.append(_rle(blocks))
        head_progs.append(parts[0] if len(parts) == 1 else Seq(("groups", hm), parts))
    if len(head_progs) == 1:
        hp = head_progs[0]
        if isinstance(hp, Rep):
            return Rep(batch * heads * hp.n, hp.child)
        return Rep(batch * heads, hp)
    reps = max(1, heads // len(head_progs))
    return Rep(batch * reps, Seq(("heads", len(head_progs)), head_progs))


def _row_block(comp: Compiler, gi: int, qcols: tuple, kinds: np.ndarray | None) -> Seq:
    plan, g = comp.plan, comp.plan.groups[gi]
    roles = g.roles
    if kinds is None:
        ksig: object = "full"
    else:
        ksig = hashlib.blake2b(np.ascontiguousarray(kinds).tobytes() + repr(kinds.shape).encode(),
                               digest_size=16).hexdigest()
    children: list = [Leaf(("pro", gi, qcols))]
    iters = roles.n_stream * len(qcols) if kinds is None else int((kinds != EMPTY).sum())
    for k in range(1, g.n_passes + 1):
        children.extend(_stream(comp, gi, k, qcols, kinds))
        # the next pass reads what this pass produced: drain the pipeline first; the end of a row
        # block does not (the next block's tiles keep flowing) unless it is too short to fill it
        drain = k != g.n_passes or iters < plan.window
        children.append(Leaf(("post", gi, k, qcols, drain)))
    return Seq(("rb", gi, qcols, ksig), children, memo=True, block=True)


def _stream(comp: Compiler, gi: int, k: int, qcols: tuple, kinds: np.ndarray | None) -> list:
    roles = comp.roles
    n = roles.n_stream
    vecs: list[tuple] = []
    if kinds is None:
        full = tuple([FULL] * len(qcols))
        last_rows = comp.rows_n(n - 1)
        runs = [(("row", gi, k, roles.rows_tile, qcols, full), n - 1 if last_rows != roles.rows_tile else n)]
        if last_rows != roles.rows_tile:
            runs.append((("row", gi, k, last_rows, qcols, full), 1))
        return _runs_to_nodes([r for r in runs if r[1] > 0])
    cols_kinds = np.ascontiguousarray(kinds.T)            # (key tiles, sub-blocks)
    for s in range(n):
        col = cols_kinds[s]
        if not col.any():
            continue
        vecs.append(("row", gi, k, comp.rows_n(s), qcols, tuple(int(x) for x in col)))
    runs: list[list] = []
    for v in vecs:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return _runs_to_nodes([tuple(r) for r in runs])


def _runs_to_nodes(runs: list[tuple]) -> list:
    nodes: list = []
    pending: list = []

    def flush() -> None:
        if len(pending) >= 4:
            nodes.append(Seq(("stretch", tuple(x.sig for x in pending)), list(pending), memo=True))
        else:
            nodes.extend(pending)
        pending.clear()

    for sig, count in runs:
        if count >= 3:
            flush()
            nodes.append(Rep(count, Leaf(sig)))
        else:
            pending.extend([Leaf(sig)] * count)
    flush()
    return nodes


def _rle(blocks: list[Seq]) -> object:
    runs: list[list] = []
    for b in blocks:
        if runs and runs[-1][0].sig == b.sig:
            runs[-1][1] += 1
        else:
            runs.append([b, 1])
    if len(runs) == 1:
        return Rep(runs[0][1], runs[0][0]) if runs[0][1] > 1 else runs[0][0]
    nodes = [Rep(n, b) if n > 1 else b for b, n in runs]
    return Seq(("head", tuple(b.sig for b, _ in runs), tuple(n for _, n in runs)), nodes)


__all__ = ["EMPTY", "FIELDS", "FULL", "PARTIAL", "UNITS", "Compiler", "Counters", "build_program"]
