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
* **Time per column comes from the engine's steady state.** A column of ``j`` non-empty tiles
  repeats at a period ``T(j)``: the engine's exact steady-state period of a Rep of identical columns
  whose last ``j`` sub-blocks are full (the shape of a causal staircase column), calibrated at P1 and
  at the powers of two up to 16 that bracket the ``j`` a layer has, interpolated linearly between
  them (small
  ``j`` is bound by the recurrences: running state, K/V buffer release, DRAM latency; large ``j`` by
  the busiest array). Short columns are further corrected by the engine's time for a window of the
  layer's own columns (sub-blocks that move from column to column). A row block adds an overhead
  ``O`` (prologue, pass epilogues, drains, the transition to the next row block) measured by the
  engine on two row blocks made of a representative row block's first and last key tiles. Time =
  ``sum over row blocks (O + sum over passes and columns T(j))``, times the batch x head repetition,
  plus once the layer's pipeline fill and final drain (from the same calibration).
* **Stalls** are the idle time per unit (cycles minus exact busy), split over causes in the
  proportions the engine reported in those calibration runs, weighted by the time each regime
  contributes.

Accuracy against the exact engine is pinned by tests (tests/simulator/test_sim_classmode.py): equal
MAC/DRAM/energy/busy counts, and cycles within ``TOLERANCE`` (3 %) on sizes where both run; measured
0-1.1 % on causal, sliding windows and 2-D neighbourhoods (na2d 16K: -0.3 %, 64K: +0.8 %; before the
window and edge calibrations the neighbourhoods were 7 % optimistic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from einfuse.simulator.engine import UNITS, Engine, Leaf, Rep, Seq
from einfuse.simulator.program import Compiler
from einfuse.simulator.tiles import EMPTY, FULL, PARTIAL, count_true

TOLERANCE = 0.03        # relative cycle difference to the exact engine that the tests accept
CAL_REPS = 1 << 20      # a long Rep: the engine finds its period and skips the rest
EXACT_TILE_BUDGET = 2048   # tiles in distinct columns above which simulate() uses this model
SMALL_J = 16        # columns up to this many tiles are calibrated at powers of two
WINDOW_J = 32       # columns up to this many tiles are corrected by a window of the layer's own
WINDOW_WARM, WINDOW_COLS = 4, 24   # columns run to fill the pipeline, then measured (at most ...
WINDOW_TILES = 256                 # ... this many tiles)
EDGE_FIRST, EDGE_LAST = 2, 4       # a row block's first and last key tiles, run for its overhead


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
        k = tiles.kinds
        if blocks * g.p1 != n_sub:
            k = np.zeros((h, blocks * g.p1, n_stream), np.int8)
            k[:, :n_sub] = tiles.kinds
        k = k.reshape(h, blocks, g.p1, n_stream)
        change = np.ones((h, blocks, n_stream), bool)
        change[..., 1:] = (k[..., 1:] != k[..., :-1]).any(axis=2)
        total += int((count_true(k != EMPTY, axis=2) * change).sum())
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
        self._ratio: dict[tuple, float] = {}    # short-column correction per (group, pass, widths)
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

    def overhead(self, gi: int, qcols: tuple, rows_n: int, columns: list[tuple] | None = None) -> float:
        """Cycles a row block adds beyond its columns: the steady second of two row blocks minus the
        modelled time of their columns (the first, cold one gives the layer's pipeline fill, what
        follows the second its final drain). ``columns``: the class vectors of a row block's first
        and last key tiles (the transition from one row block to the next depends on them); default
        one full column."""
        key = (gi, qcols, rows_n)
        hit = self._overhead.get(key)
        if hit is None:
            g = self.comp.use_group(gi)
            columns = columns or [tuple([FULL] * len(qcols))]
            eng = self._engine()
            refs = []
            for _ in range(2):
                rb: list = [Leaf(("pro", gi, qcols))]
                for k in range(1, g.n_passes + 1):
                    rb += [Leaf(("row", gi, k, rows_n, qcols, col)) for col in columns]
                    rb.append(Leaf(("post", gi, k, qcols, k != g.n_passes)))
                eng.run(Seq(("cal-rb", gi, qcols), rb, block=True))
                refs.append(eng.ref())
            js = np.array([sum(1 for x in col if x != EMPTY) for col in columns])
            cols = sum(float(self.col_time(gi, k, rows_n, qcols, js).sum()) for k in range(1, g.n_passes + 1))
            steady = refs[1] - refs[0]
            end = eng.finish()
            self._finish(eng)
            # once per layer: the cold first row block's extra time and the final drain
            self.edges.setdefault(gi, max(0.0, refs[0] - steady) + max(0.0, end - refs[1]))
            hit = self._overhead[key] = max(0.0, steady - cols)
        return hit

    def col_time(self, gi: int, k: int, rn: int, qcols: tuple, js: np.ndarray) -> np.ndarray:
        """Modelled period of columns of ``js`` tiles: interpolated calibrations, short columns
        corrected by the layer's own window (see :meth:`_window_ratio`)."""
        n_q = len(qcols)
        pts = _points(int(js.min()), int(js.max()), n_q)
        per = np.array([self.period(gi, k, rn, qcols, _last(n_q, x))[0] for x in pts])
        t = np.interp(js, pts, per)
        return np.where(js <= WINDOW_J, t * self._ratio.get((gi, k, qcols), 1.0), t)

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
        regime: dict[tuple, float] = {}      # modelled time per calibration it came from
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
                J = count_true(nonempty.reshape(n_rb, g.p1, n_stream), axis=1)   # tiles per column
                # tiles per (sub-block, tile height, kind): heights differ only in a ragged last column
                per_q: dict[tuple[int, int], np.ndarray] = {}
                spans = [(int(rows[0]), slice(0, n_stream))] if (rows == rows[0]).all() else \
                    [(int(rows[0]), slice(0, n_stream - 1)), (int(rows[-1]), slice(n_stream - 1, n_stream))]
                for rn, sl in spans:
                    for kind in (FULL, PARTIAL):
                        is_kind = kinds[:, sl] == kind
                        # none of a kind (a neighbourhood has no FULL tile): skip the 16.7 M-tile row count
                        per_q[(rn, kind)] = np.count_nonzero(is_kind, axis=1) if is_kind.any() else \
                            np.zeros(len(kinds), np.intp)
                mid = n_rb // 2
                q0, q1 = mid * g.p1, min((mid + 1) * g.p1, roles.n_sub)
                mq = tuple(comp.cols_n(q) for q in range(q0, q1))
                self._window_ratio(gi, g, mq, kinds[q0:q1], rows)
                live = np.flatnonzero((kinds[q0:q1] != EMPTY).any(axis=0) & (rows == rows[0]))
                if len(live):
                    ends = sorted(set(live[:EDGE_FIRST].tolist() + live[-EDGE_LAST:].tolist()))
                    self.overhead(gi, mq, int(rows[0]), [tuple(int(x) for x in kinds[q0:q1, s]) for s in ends])
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
                    c, v = self._row_block(gi, g, qcols, J[r], rows, counts, regime)
                    cycles += c
                    vec += v
        cycles = cycles * reps + max(self.edges.values(), default=0.0)
        vec *= reps
        busy = {u: vec[comp.counters.index[("unit", u)]] for u in UNITS}
        stalls = self._split_stalls(cycles, busy, regime)
        return ClassRun(vec, stalls, [0, 0, 0], [int(round(cycles))] * 3,
                        _Stats(tasks_placed=self.tasks, segments_run=len(self._period) + len(self._overhead)))

    def _row_block(self, gi, g, qcols: tuple, j: np.ndarray, rows: np.ndarray, counts: dict,
                   regime: dict) -> tuple[float, np.ndarray]:
        """Cycles and counters of one row block (``j``: tiles per key-tile column; ``counts``: tiles
        per (tile height, sub-block width, kind)); adds the time taken from each calibration to
        ``regime``."""
        comp = self.comp
        live = j > 0
        n_q = len(qcols)
        vec = comp.counters.vec()
        vec += self.vec(("pro", gi, qcols))
        cyc = 0.0
        for k in range(1, g.n_passes + 1):
            for rn in np.unique(rows[live]).tolist():
                sel = live & (rows == rn)
                js = j[sel]
                pts = _points(int(js.min()), int(js.max()), n_q)
                t = self.col_time(gi, k, rn, qcols, js)
                cyc += float(t.sum())
                # time per calibration point: each column's share split between its two neighbours
                hi = np.clip(np.searchsorted(pts, js), 1, len(pts) - 1) if len(pts) > 1 else np.zeros_like(js)
                for i, x in enumerate(pts):
                    near = (hi == i) | (hi - 1 == i) if len(pts) > 1 else np.ones_like(js, bool)
                    key = (gi, k, rn, qcols, x)
                    regime[key] = regime.get(key, 0.0) + float(t[near].sum()) / (2 if len(pts) > 1 else 1)
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
        cyc += self.overhead(gi, qcols, int(rows[live].max()) if live.any() else comp.rows_n(0))
        return cyc, vec

    def _window_ratio(self, gi: int, g, qcols: tuple, kinds: np.ndarray, rows: np.ndarray) -> None:
        """Short columns in the layer's own order: the engine runs a window of the representative
        row block's columns of at most ``WINDOW_J`` tiles (after ``WINDOW_WARM`` to fill the pipeline)
        and the ratio of its time to the calibrated periods corrects every short column of the group.
        It captures what identical columns cannot: sub-blocks that move from one column to the next
        (a band) leave their running state less slack."""
        j = (kinds != EMPTY).sum(axis=0)
        cols = np.flatnonzero((j > 0) & (j <= WINDOW_J) & (rows == rows[0]))
        if len(cols) < WINDOW_WARM + 4:
            return
        # the row block's last short columns (a staircase's narrowest), at most WINDOW_TILES measured
        tiles = np.cumsum(j[cols][::-1])
        n = max(4, min(WINDOW_COLS, int(np.searchsorted(tiles, WINDOW_TILES, side="right"))))
        cols = cols[-(WINDOW_WARM + n):]
        n_q = len(qcols)
        rn = int(rows[0])
        for k in range(1, g.n_passes + 1):
            eng = self._engine()
            eng.run(Leaf(("pro", gi, qcols)))
            r0 = 0
            for i, s in enumerate(cols.tolist()):
                if i == WINDOW_WARM:
                    r0 = eng.ref()
                eng.run(Leaf(("row", gi, k, rn, qcols, tuple(int(x) for x in kinds[:, s]))))
            measured = eng.ref() - r0
            self._finish(eng)
            js = j[cols[WINDOW_WARM:]]
            pts = _points(int(js.min()), int(js.max()), n_q)
            per = np.array([self.period(gi, k, rn, qcols, _last(n_q, x))[0] for x in pts])
            model = float(np.interp(js, pts, per).sum())
            if model > 0:
                self._ratio[(gi, k, qcols)] = max(1.0, measured / model)

    def _split_stalls(self, cycles: float, busy: dict, regime: dict) -> dict[tuple[int, int], int]:
        """Idle time per unit (exact), split over causes in the proportions of the calibrations,
        each weighted by the modelled time it contributed."""
        out: dict[tuple[int, int], int] = {}
        for u_i, u in enumerate(UNITS):
            idle = max(0.0, cycles - busy[u])
            if idle <= 0:
                continue
            weights: dict[int, float] = {}
            for (gi, k, rn, qcols, x), time_ in regime.items():
                per, st = self.period(gi, k, rn, qcols, _last(len(qcols), x))
                mine = {cause: v for (uu, cause), v in st.items() if uu == u_i}
                tot = sum(mine.values())
                for cause, v in mine.items():
                    weights[cause] = weights.get(cause, 0.0) + time_ * v / tot
            s = sum(weights.values())
            for cause, w in weights.items():
                out[(u_i, cause)] = int(idle * w / s)
        return out


def _last(n_q: int, j: int) -> tuple[int, ...]:
    """A column whose last ``j`` sub-blocks are FULL (a causal staircase column's shape)."""
    return tuple([EMPTY] * (n_q - j) + [FULL] * j)


def _points(lo: int, hi: int, n_q: int) -> list[int]:
    """Tiles per column the engine is calibrated at: P1, and the powers of two up to ``SMALL_J``
    that bracket ``[lo, hi]`` (short columns are where recurrences bind; above, the period is linear
    in ``j`` and P1's period gives the slope). T(j) is interpolated linearly between them."""
    pts = {n_q}
    x = 1
    while x <= min(SMALL_J, n_q):
        if lo < 2 * x and x < 2 * hi:
            pts.add(x)
        x *= 2
    if lo < min(pts):
        pts.add(min(SMALL_J, 1 << max(0, lo.bit_length() - 1)))
    return sorted(pts)


__all__ = ["EXACT_TILE_BUDGET", "TOLERANCE", "ClassModel", "ClassRun", "distinct_column_tiles"]
