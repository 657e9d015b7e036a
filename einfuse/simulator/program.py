"""Compiling leaves of the program tree into tasks: loads, tile Einsums, stores, bookkeeping.

The loop nest of every design is the same (Mapping 1 of the FuseMax paper, generalised)::

    for batch, head:                         # repetition
      for group (fusion phase):
        for row block (P1 sub-blocks of queries):
          prologue: fresh running state, load row-resident inputs (Q), prologue Einsums
          for pass k:
            for key tile s:                  # a "row" leaf: one class vector over the sub-blocks
              load key-tile inputs (K, V) once; then per sub-block q (skipping EMPTY tiles):
                load per-tile inputs / spilled tensors, run the pass's Einsums, store spills
            after pass k: Einsums that need the whole key loop, stores of finished outputs

A leaf is identified by its signature (group, pass, rows in the key tile, columns and class of each
sub-block) and compiled once; the engine rotates its keys for other pipeline phases. With
``interleave`` the Einsums of a tile are spread over software-pipeline stages derived from a
one-tile schedule. Counters (busy cycles, operations, bytes) are per Einsum and add up linearly,
so the engine can scale them when it fast-forwards.
"""

from __future__ import annotations

import math

import numpy as np

from einfuse.simulator.costs import Counters, TaskCost, elems, task_cost
from einfuse.simulator.engine import Entry, Keys, MaxInto, Reset, Segment, Task
from einfuse.simulator.mapping import Group, Placed, Plan
from einfuse.simulator.tiles import EMPTY, PARTIAL, Tiles

U2D, U1D, UDRAM = 0, 1, 2

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
        self._rules: dict[tuple, tuple] = {}       # key-forming rules per (group, Einsum, operand)
        self._deltas: dict[tuple, tuple] = {}      # counter updates per (Einsum, tile shape)

    # ---- shapes ---------------------------------------------------------------------------------
    def elems(self, vars_, rows_n: int, cols_n: int) -> int:
        return elems(self.plan, self.roles, vars_, rows_n, cols_n)

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
            hit = self._cost_cache[key] = task_cost(self.plan, g, p, rows_n, cols_n)
        return hit

    # ---- counters -------------------------------------------------------------------------------
    def _add_compute(self, vec: np.ndarray, p: Placed, tc: TaskCost, partial: bool) -> None:
        partial = partial and self.roles.rows in p.work.ivars and self.roles.cols in p.work.ivars
        ck = (id(tc), p.name, partial)
        hit = self._deltas.get(ck)
        if hit is None:
            ix = self.counters.index
            n = p.name
            pairs = [(ix[(n, "busy")], tc.occ), (ix[(n, "points")], tc.points)]
            if partial:
                pairs.append((ix[(n, "partial_points")], tc.points))
            pairs += [(ix[(n, "macs")], tc.macs), (ix[(n, "pe_cycles")], tc.pe_cycles),
                      (ix[(n, "gb_rd")], tc.gb_rd), (ix[(n, "gb_wr")], tc.gb_wr), (ix[(n, "rf_bytes")], tc.rf_bytes)]
            pairs += [(ix[(n, "act", a)], x) for a, x in tc.actions.items()]
            pairs.append((ix[("unit", p.unit)], tc.occ))
            idx = np.array([i for i, _ in pairs], np.intp)
            if len(set(idx.tolist())) != len(idx):
                raise AssertionError(f"{n}: counter fields overlap")
            # one addition per field, as the scalar updates were: the same float64 sums
            hit = self._deltas[ck] = (idx, np.array([float(x) for _, x in pairs]), tc)   # tc kept alive
        vec[hit[0]] += hit[1]

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
        return self._key(self._operand_rule(g, p, o, slot is None), q, slot, parity)

    def _key(self, rule: tuple, q: int, slot: int | None, parity: int) -> tuple[int, bool]:
        """The key of a rule of :meth:`_operand_rule` for sub-block ``q``, window slot, parity."""
        how, prefix, flag = rule
        if how == "k":                    # per sub-block (flag: the tensor varies with q) and row block
            return self.k(prefix + (q if flag else None,)), False
        if how == "r":                    # per key-tile buffer half
            return self.keys(prefix + ("r", parity)), False
        return self.sk(prefix, slot), flag   # per window slot (flag: a chain edge)

    def _operand_rule(self, g: Group, p: Placed, o, outside: bool) -> tuple:
        """How the key of operand ``o`` of ``p`` is formed (cached: the same for every tile): one
        of ``("k", prefix, per_q)``, ``("r", prefix, False)``, ``("s", prefix, chain)``."""
        ck = (id(g), p.name, id(o), outside)
        hit = self._rules.get(ck)
        if hit is not None:
            return hit[0]
        roles = self.roles
        t = o.tensor
        tv = self.plan.tensor_vars[t]
        keyed = any(roles.keyed(v) for v in tv)
        per_q = roles.cols in tv
        rule: tuple
        if t in g.external:
            if not keyed:
                rule = ("k", ("ld", t), per_q)
            elif roles.cols not in tv:
                rule = ("r", ("ld", t, p.stage), False)
            elif g.fiber.get(t) and p.stage != self._first_stage(g, t):
                rule = ("k", ("ld", t), True)
            else:
                rule = ("s", ("ld", t), False)
        elif g.spill.get(t, 0.0) > 0 and g.producer_stage.get(t, p.stage) < p.stage:
            rule = ("s", ("ld", t), False)
        else:
            prod = next((x for x in g.einsums if x.name == t), None)
            if prod is not None and roles.cols not in prod.work.ivars and prod.stage % 2 == 1:
                rule = ("r", (t, "row"), False)
            elif not outside and not o.carried and not o.final and g.producer_stage.get(t) == p.stage:
                rule = ("s", (t,), p.unit == "2d" and t in g.resident_2d)
            else:
                rule = ("k", (t,), per_q)
        self._rules[ck] = (rule, o)      # o kept alive: its id() stays unique
        return rule

    def _compute(self, ops: list, vec: np.ndarray, g: Group, p: Placed, q: int, rows_n: int,
                 cols_n: int, gate: int, partial: bool, slot: int | None = None, parity: int = 0) -> int:
        tc = self.cost(g, p, rows_n, cols_n)
        rules, per_q, reset, unit, cause = self._compute_rule(g, p, slot is None)
        deps, chain = [gate], []
        for rule in rules:
            key, is_chain = self._key(rule, q, slot, parity)
            (chain if is_chain else deps).append(key)
        qk = q if per_q else None
        if slot is None:
            out = self.k((p.name, qk))
        elif not reset[0]:
            out = self.keys((p.name, "row", "r", parity))
        else:
            out = self.sk((p.name,), slot)
        ops.append(Task(unit, tc.occ, tc.fill, tuple(dict.fromkeys(deps)), tuple(dict.fromkeys(chain)), out,
                        cause))
        if slot is not None and reset[1]:
            ops.append(Reset(self.k((p.name, qk)), out))
        self._add_compute(vec, p, tc, partial)
        return out

    def _compute_rule(self, g: Group, p: Placed, outside: bool) -> tuple:
        """What :meth:`_compute` needs of ``p`` beyond the tile's position (cached): its operands'
        key rules, whether its output varies with the sub-block, (whether it runs per sub-block,
        whether a later step reads its per-sub-block copy), unit and stall cause."""
        ck = (id(g), p.name, outside)
        hit = self._rules.get(ck)
        if hit is None:
            cols = self.roles.cols
            per_sub = cols in p.work.ivars
            hit = ((tuple(self._operand_rule(g, p, o, outside) for o in p.work.operands),
                    cols in p.work.out_vars or per_sub, (per_sub, per_sub and self.persisted(g, p.name)),
                    U2D if p.unit == "2d" else U1D, self.causes(f"{p.name} on the {p.unit} array")), g)
            self._rules[ck] = hit       # g kept alive: its id() stays unique
        return hit[0]

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
        spill_stores = sorted(t for t in (g.stored | {x for x, f in g.spill.items() if f > 0})
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
                nbytes = self._spill_bytes(g, t, self.elems(self.plan.tensor_vars[t], rows_n, cols_n) * self.w)
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
                nbytes = self._spill_bytes(g, t, self.elems(self.plan.tensor_vars[t], rows_n, cols_n) * self.w)
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

    @staticmethod
    def _spill_bytes(g: Group, t: str, nbytes: int) -> int:
        """Bytes of a tile of ``t`` that go to DRAM: all of an output or input, the spilled fraction
        of a partly spilled key fiber (spread evenly over its tiles)."""
        f = g.spill.get(t)
        return nbytes if f is None or t in g.stored else math.ceil(nbytes * f)

    def _tile_load(self, g: Group, t: str, stage: int) -> bool:
        roles = self.roles
        tv = self.plan.tensor_vars[t]
        keyed = any(roles.keyed(v) for v in tv)
        if t in g.external:
            return keyed and roles.cols in tv and (not g.fiber.get(t) or stage == self._first_stage(g, t))
        return g.spill.get(t, 0.0) > 0 and g.producer_stage.get(t, stage) < stage


# ---- the program tree ------------------------------------------------------------------------------

