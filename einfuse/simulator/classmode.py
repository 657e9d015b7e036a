"""Masked sweeps by tile class: cost that grows with distinct tile classes, not sequence length.

The exact engine (:mod:`einfuse.simulator.engine`) places every distinct key-tile column of a masked
row block: a causal row block of P1 = 128 sub-blocks has a staircase of 128 distinct columns (8256
tiles, ~10^5 tasks), and an N-D neighbourhood mask has dozens of distinct columns per row block. That
is exact but costs seconds per row-block shape. The class model keeps the engine for what it is good
at (the steady state of a tile schedule) and composes the rest in closed form:

* **Counters are exact.** Busy cycles, operations, bytes and MACs add up linearly over tasks
  (:mod:`.program`), so a key-tile column costs its head (K/V loads, once-per-tile Einsums) plus one
  tile vector per non-empty sub-block, by (sub-block width, FULL or PARTIAL). Each vector is compiled
  once from a one-tile column; totals are those vectors times class counts from the tile table.
* **Time follows modulo-scheduling bounds.** A column of ``j`` non-empty tiles repeats at
  ``T(j) = max(RecII, j * ResII)``: ResII, the per-tile period of the resource-bound schedule, is the
  engine's exact steady-state period of a Rep of full columns over ``j``; RecII, the recurrence bound
  of the running state (RM -> RM of one sub-block across key tiles), is the engine's period of a Rep
  of one-tile columns. A row block adds an overhead ``O`` (prologue, pass epilogues, drains) measured
  by the engine on two row blocks of one full column per pass. Time =
  ``sum over row blocks (O + sum over passes and columns T(j))``, times the batch x head repetition,
  plus once the layer's pipeline fill and final drain (from the same calibration).
* **Stalls** are the idle time per unit (cycles minus exact busy), split over causes in the
  proportions the engine reported in those calibration runs, weighted by the time each regime
  contributes.

Accuracy against the exact engine is pinned by tests (tests/simulator/test_sim_classmode.py): equal
MAC/DRAM/energy counts and cycles within ``TOLERANCE`` on sizes where both run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from einfuse.simulator.engine import UNITS, Engine, Leaf, Rep, Seq
from einfuse.simulator.program import Compiler
from einfuse.simulator.tiles import EMPTY, FULL, PARTIAL

TOLERANCE = 0.03        # relative cycle difference to the exact engine that the tests accept
CAL_REPS = 1 << 20      # a long Rep: the engine finds its period and skips the rest
EXACT_TILE_BUDGET = 2048   # tiles in distinct columns above which simulate() uses this model


@dataclass
class _Stats:
    segments_run: int = 0
    tasks_placed: int = 0
    skipped_iterations: int = 0
    memo_hits: int = 0
    approximate: bool = True


@dataclass
class ClassRun:
    """What :func:`einfuse.simulator.simulate._account` reads from an engine."""

    counters: np.ndarray
    stalls: dict[tuple[int, int], int]
    first: list[int]
    tail: list[int]
    stats: _Stats = field(default_factory=_Stats)


def distinct_column_tiles(comp: Compiler) -> int:
    """Tiles in the key-tile columns that differ from their left neighbour, over every row block:
    what the exact engine compiles and places at least once (its cost driver; runs of equal
    columns are fast-forwarded)."""
    total = 0
    for g, tiles in zip(comp.plan.groups, comp.tiles):
        if tiles.kinds is None:
            continue
        h, n_sub, n_stream = tiles.kinds.shape
        blocks = -(-n_sub // g.p1)
        k = np.zeros((h, blocks * g.p1, n_stream), np.int8)
        k[:, :n_sub] = tiles.kinds
        k = k.reshape(h, blocks, g.p1, n_stream)
        change = np.ones((h, blocks, n_stream), bool)
        change[..., 1:] = (k[..., 1:] != k[..., :-1]).any(axis=2)
        total += int(((k != EMPTY).sum(axis=2) * change).sum())
    return total


class ClassModel:
    """Calibrates per group and composes a whole layer (see module docstring)."""

    def __init__(self, comp: Compiler, row_buffers: int) -> None:
        self.comp = comp
        self.row_buffers = row_buffers
        self.stalls: dict[tuple[int, int], float] = {}
        self._period: dict[tuple, tuple[float, dict]] = {}
        self._vec: dict[tuple, np.ndarray] = {}
        self._overhead: dict[tuple, float] = {}
        self.tasks = 0
        self.edges: dict[int, float] = {}     # per group: pipeline fill of the layer and final drain

    # ---- engine calibrations --------------------------------------------------------------------
    def _engine(self) -> Engine:
        c = self.comp
        return Engine(c.counters.size, c.window_keys, c.causes, c.compile, c.release_keys, c.keys,
                      fast_forward=True, row_buffers=self.row_buffers)

    def _finish(self, eng: Engine) -> None:
        self.tasks += eng.stats.tasks_placed

    def period(self, gi: int, k: int, rows_n: int, qcols: tuple, kinds: tuple) -> tuple[float, dict]:
        """Steady-state cycles per column of a Rep of identical columns, and stalls per column."""
        key = (gi, k, rows_n, qcols, kinds)
        hit = self._period.get(key)
        if hit is None:
            self.comp.use_group(gi)
            eng = self._engine()
            eng.run(Leaf(("pro", gi, qcols)))
            r0 = eng.ref()
            eng.run(Rep(CAL_REPS, Leaf(("row", gi, k, rows_n, qcols, kinds))))
            per = eng.stats.period or (eng.ref() - r0) / CAL_REPS
            st = {kk: v / max(eng.stats.period_reps, 1) for kk, v in eng.stats.period_stalls.items()}
            self._finish(eng)
            hit = self._period[key] = (float(per), st)
        return hit

    def overhead(self, gi: int, qcols: tuple, rows_n: int) -> float:
        """Cycles a row block adds beyond its columns: the steady second of two row blocks of one full
        column per pass, minus that column's steady period (the first, cold one gives the layer's
        pipeline fill)."""
        key = (gi, qcols, rows_n)
        hit = self._overhead.get(key)
        if hit is None:
            g = self.comp.use_group(gi)
            full = tuple([FULL] * len(qcols))
            eng = self._engine()
            refs = []
            for _ in range(2):
                rb: list = [Leaf(("pro", gi, qcols))]
                for k in range(1, g.n_passes + 1):
                    rb.append(Leaf(("row", gi, k, rows_n, qcols, full)))
                    rb.append(Leaf(("post", gi, k, qcols, k != g.n_passes)))
                eng.run(Seq(("cal-rb", gi, qcols), rb, block=True))
                refs.append(eng.ref())
            cols = sum(self.period(gi, k, rows_n, qcols, full)[0] for k in range(1, g.n_passes + 1))
            steady = refs[1] - refs[0]
            end = eng.finish()
            self._finish(eng)
            # once per layer: the cold first row block's extra time and the final drain
            self.edges.setdefault(gi, max(0.0, refs[0] - steady) + max(0.0, end - refs[1]))
            hit = self._overhead[key] = max(0.0, steady - cols)
        return hit

    def vec(self, sig: tuple) -> np.ndarray:
        hit = self._vec.get(sig)
        if hit is None:
            self.comp.use_group(sig[1])
            hit = self._vec[sig] = self.comp.compile(sig, 0, 0, 0).counters.copy()
        return hit

    # ---- composition ----------------------------------------------------------------------------
    def run(self, batch: int, heads: int) -> ClassRun:
        comp = self.comp
        distinct = max(t.heads for t in comp.tiles)
        reps = batch * max(1, heads // distinct) if distinct > 1 else batch * heads
        vec = comp.counters.vec()
        cycles = 0.0
        regime: dict[str, float] = {"res": 0.0, "rec": 0.0, "over": 0.0}
        cal: dict[str, dict] = {"res": {}, "rec": {}}
        for hm in range(distinct):
            for gi, g in enumerate(comp.plan.groups):
                comp.use_group(gi)
                tiles = comp.tiles[gi]
                roles = g.roles
                n_stream = roles.n_stream
                rows = np.array([comp.rows_n(s) for s in range(n_stream)])
                n_rb = math.ceil(roles.n_sub / g.p1)
                if tiles.kinds is None:
                    kinds = np.full((roles.n_sub, n_stream), FULL, np.int8)
                else:
                    kinds = tiles.kinds[min(hm, tiles.heads - 1)]
                nonempty = kinds != EMPTY
                if roles.n_sub != n_rb * g.p1:
                    nonempty = np.concatenate([nonempty, np.zeros((n_rb * g.p1 - roles.n_sub, n_stream), bool)])
                J = nonempty.reshape(n_rb, g.p1, n_stream).sum(axis=1, dtype=np.int64)   # tiles per column
                # tiles per (sub-block, tile height, kind): heights differ only in a ragged last column
                per_q: dict[tuple[int, int], np.ndarray] = {}
                spans = [(int(rows[0]), slice(0, n_stream))] if (rows == rows[0]).all() else \
                    [(int(rows[0]), slice(0, n_stream - 1)), (int(rows[-1]), slice(n_stream - 1, n_stream))]
                for rn, sl in spans:
                    for kind in (FULL, PARTIAL):
                        per_q[(rn, kind)] = np.count_nonzero(kinds[:, sl] == kind, axis=1)
                for r in range(n_rb):
                    q0, q1 = r * g.p1, min((r + 1) * g.p1, roles.n_sub)
                    qcols = tuple(comp.cols_n(q) for q in range(q0, q1))
                    widths = np.array(qcols)
                    counts = {}
                    for (rn, kind), pq in per_q.items():
                        for w in np.unique(widths).tolist():
                            n = int(pq[q0:q1][widths == w].sum())
                            if n:
                                counts[(rn, w, kind)] = n
                    c, v, reg = self._row_block(gi, g, qcols, J[r], rows, counts, cal)
                    cycles += c
                    vec += v
                    for kk in reg:
                        regime[kk] += reg[kk]
        cycles = cycles * reps + max(self.edges.values(), default=0.0)
        vec *= reps
        busy = {u: vec[comp.counters.index[("unit", u)]] for u in UNITS}
        stalls = self._split_stalls(cycles, busy, regime, cal)
        return ClassRun(vec, stalls, [0, 0, 0], [int(round(cycles))] * 3,
                        _Stats(tasks_placed=self.tasks, segments_run=len(self._period) + len(self._overhead)))

    def _row_block(self, gi, g, qcols: tuple, j: np.ndarray, rows: np.ndarray, counts: dict,
                   cal: dict) -> tuple[float, np.ndarray, dict]:
        """Cycles, counters and time per regime of one row block (``j``: tiles per key-tile column;
        ``counts``: tiles per (tile height, sub-block width, kind))."""
        comp = self.comp
        live = j > 0
        n_q = len(qcols)
        full = tuple([FULL] * n_q)
        one = tuple([EMPTY] * (n_q - 1) + [FULL])
        vec = comp.counters.vec()
        vec += self.vec(("pro", gi, qcols))
        cyc = 0.0
        reg = {"res": 0.0, "rec": 0.0, "over": 0.0}
        for k in range(1, g.n_passes + 1):
            for rn in np.unique(rows[live]).tolist():
                sel = live & (rows == rn)
                res, st_res = self.period(gi, k, rn, qcols, full)
                rec, st_rec = self.period(gi, k, rn, qcols, one)
                per_tile = res / n_q
                js = j[sel]
                t = np.maximum(rec, js * per_tile)
                cyc += float(t.sum())
                bound = js * per_tile >= rec
                reg["res"] += float(t[bound].sum())
                reg["rec"] += float(t[~bound].sum())
                _merge(cal["res"], st_res, res)
                _merge(cal["rec"], st_rec, rec)
                empty_col = tuple([EMPTY] * n_q)
                head = self.vec(("row", gi, k, rn, qcols, empty_col))
                vec += head * int(sel.sum())
                for (crn, w, kind), n in counts.items():
                    if crn != rn:
                        continue
                    q = qcols.index(w)
                    one_tile = tuple(kind if i == q else EMPTY for i in range(n_q))
                    vec += (self.vec(("row", gi, k, rn, qcols, one_tile)) - head) * n
            vec += self.vec(("post", gi, k, qcols, k != g.n_passes))
        o = self.overhead(gi, qcols, int(rows[live].max()) if live.any() else comp.rows_n(0))
        cyc += o
        reg["over"] += o
        return cyc, vec, reg

    def _split_stalls(self, cycles: float, busy: dict, regime: dict, cal: dict) -> dict[tuple[int, int], int]:
        out: dict[tuple[int, int], int] = {}
        for u_i, u in enumerate(UNITS):
            idle = max(0.0, cycles - busy[u])
            if idle <= 0:
                continue
            weights: dict[int, float] = {}
            for name in ("res", "rec"):
                rate = cal[name]
                tot = sum(v for (uu, _), v in rate.items() if uu == u_i)
                if tot <= 0:
                    continue
                for (uu, cause), v in rate.items():
                    if uu == u_i:
                        weights[cause] = weights.get(cause, 0.0) + regime[name] * v / tot
            s = sum(weights.values())
            if s <= 0:
                continue
            for cause, w in weights.items():
                out[(u_i, cause)] = int(idle * w / s)
        return out


def _merge(acc: dict, st: dict, per: float) -> None:
    """Accumulate stall cycles per calibrated period (as rates)."""
    if per <= 0:
        return
    for k, v in st.items():
        acc[k] = max(acc.get(k, 0.0), v / per)


__all__ = ["EXACT_TILE_BUDGET", "TOLERANCE", "ClassModel", "ClassRun", "distinct_column_tiles"]
