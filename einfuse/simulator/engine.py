"""Tile-granularity event engine: list scheduling on unit calendars, with fast-forward.

Tasks (a tile of an Einsum on a PE array, a DRAM transfer) are placed one by one in issue order.
Each unit keeps a calendar: its busy tail plus a few idle *gaps*; a task starts at the earliest gap
(or the tail) at or after the time its inputs are ready, so later tiles fill the holes that
dependency stalls leave behind. That is how interleaving of consecutive key tiles, double-buffered
transfers and DRAM bandwidth limits show up without any per-design rule. A task has an *occupancy*
(cycles its unit is busy) and a *fill* (extra cycles until its result exists: systolic skew, op
latency, DRAM latency). A dependency marked *chain* (data that stays in the PE array) may start as
soon as the producer has streamed its tile in, and finishes no earlier than the producer's result.

Issue order is a software pipeline: a segment is a list of *entries*, each a list of per-stage op
lists. An entry that *steps* enters the pipeline and issues its stage ``s`` when ``s`` more entries
have entered after it (stage 0 at once), so the late stages of a tile are issued after the early
stages of the next ones; the pipeline carries over from one segment to the next. Designs that do not
interleave put everything at stage 0, which is plain program order.

Every idle gap carries the reason it was opened (the dependency that was late): the stall
accounting behind the "why" in reports.

Fast-forward. Programs are trees of leaves (segments), sequences and repetitions. Every task
depends on a monotone *gate* key (a window slot or a buffer release), so the smallest gate value is
a lower bound on every future ready time; state older than that bound cannot influence the future
and is clamped away. Two states equal after subtracting a reference time have identical futures: when
a repetition reaches a state it has seen ``k`` iterations before, the remaining iterations are skipped
by shifting every time by the period and scaling the counters (exact). Greedy schedules are not
always exactly periodic; when the time per period has settled to within ``STEADY_TOL`` the rest is
extrapolated at that rate and the result is flagged ``approximate``. Sequences that recur from the
same state are memoised. Cost grows with the number of distinct tile classes, not with sequence length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

UNITS = ("2d", "1d", "dram")
MAX_GAPS = 16
MAX_UNSKIPPED = 24   # repetitions simulated without finding a period before extrapolating anyway
MIN_STEADY = 6       # repetitions simulated before a settled (not exactly periodic) rate is accepted
STEADY_TOL = 2e-3    # relative jitter of the time per period accepted as settled
HISTORY = 17         # states kept to find periods of up to 16 iterations


@dataclass(frozen=True)
class Task:
    """One unit of work; keys are small ints interned by :class:`Keys`."""

    unit: int
    occ: int
    fill: int
    deps: tuple[int, ...]          # result-time dependencies (a gate key is always one of them)
    chain: tuple[int, ...]         # stream dependencies (producer in the same array, data resident)
    out: int                       # key written with the result time (-1: none)
    cause: int                     # cause id reported by tasks that wait on ``out``


@dataclass(frozen=True)
class MaxInto:
    """Pseudo-op: ``ready[dst] = max(ready[dst], ready[srcs])`` (window and release bookkeeping)."""

    dst: int
    srcs: tuple[int, ...]


@dataclass(frozen=True)
class Reset:
    """Pseudo-op: ``ready[dst] = ready[src]`` (a fresh running state needs no previous iteration)."""

    dst: int
    src: int


@dataclass
class Entry:
    stages: list            # list of op lists, one per stage
    step: bool = True       # enters the pipeline (False: stage 0 issued at once, no step)


@dataclass
class Segment:
    """Entries to issue, with the counters the segment adds when it runs."""

    entries: list
    counters: np.ndarray
    iterations: int = 0     # window slots it advances
    rows: int = 0           # key-tile rows it advances (double-buffer parity)
    uid: int = -1           # set by the engine (identifies pending pipeline entries in states)
    drain: bool = False     # issue everything pending before this segment


@dataclass(frozen=True)
class Leaf:
    """A segment by signature, compiled on first use for the (slot, row parity, block parity)."""

    sig: object


@dataclass
class Seq:
    sig: object
    children: list
    memo: bool = False
    block: bool = False     # a row block: advances the block parity when it starts


@dataclass
class Rep:
    n: int
    child: object


class Keys:
    """Interns hashable keys (``("QK", q, parity)``) to ints; names causes for stall reports."""

    def __init__(self) -> None:
        self.ids: dict[object, int] = {}
        self.names: list[object] = []

    def __call__(self, key: object) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.names)
            self.names.append(key)
        return i


@dataclass
class Stats:
    segments_run: int = 0
    tasks_placed: int = 0
    skipped_iterations: int = 0
    memo_hits: int = 0
    approximate: bool = False


class Engine:
    """Runs a program tree. ``gate_keys``: monotone keys that every task depends on (one at least)."""

    def __init__(self, n_counters: int, window_keys: Sequence[int], causes: Keys,
                 compile_leaf: Callable[[object, int, int, int], Segment], gate_keys: Sequence[int] = (),
                 keys: Keys | None = None, fast_forward: bool = True, row_buffers: int = 2) -> None:
        self.row_buffers = row_buffers
        self.fast_forward = fast_forward
        self.compile_leaf = compile_leaf
        self.leaf_cache: dict[tuple, Segment] = {}
        self.leaf_of: dict[int, tuple] = {}     # segment uid -> its leaf cache key
        self.keys = keys or Keys()
        self.canon_keys = Keys()
        self._canon: dict[tuple, dict[int, int]] = {}
        self.segments: list[Segment] = []
        self.window_keys = tuple(window_keys)
        self.gate_keys = tuple(window_keys) + tuple(gate_keys)
        self.causes = causes
        self.window_cause = causes("pipeline window (tiles in flight / buffer slots)")
        self.ready: dict[int, int] = {}
        self.sready: dict[int, int] = {}
        self.who: dict[int, int] = {}
        self.tail = [0, 0, 0]
        self.first = [-1, -1, -1]        # when each unit first started work
        self.gaps: list[list[list[int]]] = [[], [], []]
        self.pipe: deque = deque()       # pending [segment uid, entry index, next stage]
        self.counters = np.zeros(n_counters)
        self.stalls: dict[tuple[int, int], int] = {}
        self.slot = self.rows = self.blocks = 0
        self.memo: dict[tuple, tuple] = {}
        self.stats = Stats()

    # ---- placement ----------------------------------------------------------------------------
    def _place(self, unit: int, ready: int, occ: int, cause: int) -> int:
        if self.first[unit] < 0:
            self.first[unit] = max(ready, self.tail[unit])
        gaps = self.gaps[unit]
        for gi, g in enumerate(gaps):
            gs, ge = g[0], g[1]
            s = max(ready, gs)
            if s + occ <= ge:
                parts = []
                if s > gs:
                    parts.append([gs, s, g[2]])
                if s + occ < ge:
                    parts.append([s + occ, ge, g[2]])
                gaps[gi:gi + 1] = parts
                if len(gaps) > MAX_GAPS:
                    old = gaps.pop(0)
                    self._stall(unit, old[2], old[1] - old[0])
                return s
        tail = self.tail[unit]
        if ready > tail:
            gaps.append([tail, ready, cause])
            if len(gaps) > MAX_GAPS:
                old = gaps.pop(0)
                self._stall(unit, old[2], old[1] - old[0])
            s = ready
        else:
            s = tail
        self.tail[unit] = s + occ
        return s

    def _stall(self, unit: int, cause: int, cycles: int) -> None:
        if cycles > 0:
            k = (unit, cause)
            self.stalls[k] = self.stalls.get(k, 0) + cycles

    def _issue(self, ops: list) -> None:
        ready, sready, who = self.ready, self.sready, self.who
        for op in ops:
            tp = type(op)
            if tp is MaxInto:
                v = ready.get(op.dst, 0)
                for k in op.srcs:
                    x = ready.get(k, 0)
                    v = max(v, x)
                ready[op.dst] = v
                continue
            if tp is Reset:
                ready[op.dst] = sready[op.dst] = ready.get(op.src, 0)
                continue
            t: Task = op
            r, crit = 0, -1
            for k in t.deps:
                x = ready.get(k, 0)
                if x > r:
                    r, crit = x, k
            cr = cres = 0
            for k in t.chain:
                x = sready.get(k, 0)
                cr = max(cr, x)
                y = ready.get(k, 0)
                cres = max(cres, y)
            if cr > r:
                r, crit = cr, t.chain[0]
            cause = who.get(crit, self.window_cause) if crit >= 0 else self.window_cause
            s = self._place(t.unit, r, t.occ, cause)
            res = s + t.occ + t.fill
            res = max(res, cres + t.occ)
            if t.out >= 0:
                ready[t.out] = res
                sready[t.out] = s + t.occ
                who[t.out] = t.cause
        self.stats.tasks_placed += len(ops)

    def _advance_pipe(self) -> None:
        """Issue the next stage of every pending entry (newest first), dropping finished ones."""
        segs = self.segments
        done = 0
        for item in reversed(self.pipe):
            stages = segs[item[0]].entries[item[1]].stages
            self._issue(stages[item[2]])
            item[2] += 1
        while self.pipe and self.pipe[0][2] >= len(segs[self.pipe[0][0]].entries[self.pipe[0][1]].stages):
            self.pipe.popleft()
            done += 1
        if done and any(it[2] >= len(segs[it[0]].entries[it[1]].stages) for it in self.pipe):
            self.pipe = deque(it for it in self.pipe if it[2] < len(segs[it[0]].entries[it[1]].stages))

    def flush(self) -> None:
        while self.pipe:
            self._advance_pipe()

    def run_segment(self, seg: Segment) -> None:
        if seg.uid < 0:
            seg.uid = len(self.segments)
            self.segments.append(seg)
        if seg.drain:
            self.flush()
        for ei, e in enumerate(seg.entries):
            if not e.step:
                self._issue(e.stages[0])
                continue
            self.pipe.append([seg.uid, ei, 0])
            self._advance_pipe()
        self.counters += seg.counters
        self.slot += seg.iterations
        self.rows += seg.rows
        self.stats.segments_run += 1

    # ---- state ----------------------------------------------------------------------------------
    def _floor(self) -> int:
        vals = [self.ready.get(k, 0) for k in self.gate_keys]
        return min(vals) if vals else 0

    def compact(self) -> None:
        """Clamp everything older than the lower bound of future ready times (exact, see module)."""
        f = self._floor()
        for u in range(3):
            keep = []
            for g in self.gaps[u]:
                if g[1] <= f:
                    self._stall(u, g[2], g[1] - g[0])
                elif g[0] < f:
                    self._stall(u, g[2], f - g[0])
                    keep.append([f, g[1], g[2]])
                else:
                    keep.append(g)
            self.gaps[u] = keep
        for d in (self.ready, self.sready):
            for k, v in d.items():
                if v < f:
                    d[k] = f

    def ref(self) -> int:
        return max(self.tail)

    # Keys carry a phase: a window slot (suffix ("s", j)), a double-buffer half ("r", j) or a
    # row-block parity ("b", j). States are compared *canonically*, with every phase index taken
    # relative to the engine's current phase, so a repetition whose period is not a multiple of
    # the window (128 sub-blocks, 10 slots) is still recognised after one period; skipping then
    # rotates the phases as well as shifting the times.
    def phase(self) -> tuple[int, int, int]:
        return (self.slot % (len(self.window_keys) or 1), self.rows % self.row_buffers, self.blocks % 2)

    def _mods(self) -> dict[str, int]:
        return {"s": len(self.window_keys) or 1, "r": self.row_buffers, "b": 2}

    def _canon_id(self, kid: int, ph: tuple[int, int, int]) -> int:
        table = self._canon.setdefault(ph, {})
        c = table.get(kid)
        if c is None:
            name = self.keys.names[kid]
            if isinstance(name, tuple) and len(name) >= 2 and name[-2] in ("s", "r", "b"):
                tag, idx = name[-2], name[-1]
                off = ph["srb".index(tag)]
                name = name[:-2] + (tag, (idx - off) % self._mods()[tag])
            c = table[kid] = self.canon_keys(name)
        return c

    def _actual_id(self, cid: int, ph: tuple[int, int, int]) -> int:
        name = self.canon_keys.names[cid]
        if isinstance(name, tuple) and len(name) >= 2 and name[-2] in ("s", "r", "b"):
            tag, idx = name[-2], name[-1]
            off = ph["srb".index(tag)]
            name = name[:-2] + (tag, (idx + off) % self._mods()[tag])
        return self.keys(name)

    def _seg_canon(self, uid: int, ph: tuple[int, int, int]) -> tuple:
        sig, off, par, bpar = self.leaf_of[uid]
        m = self._mods()
        return (sig, (off - ph[0]) % m["s"], (par - ph[1]) % m["r"], (bpar - ph[2]) % 2)

    def _seg_actual(self, canon: tuple, ph: tuple[int, int, int]) -> int:
        sig, off, par, bpar = canon
        m = self._mods()
        key = (sig, (off + ph[0]) % m["s"], (par + ph[1]) % m["r"], (bpar + ph[2]) % 2)
        return self._leaf(key).uid

    def _leaf(self, key: tuple) -> Segment:
        """The segment of a leaf at a phase: compiled once at phase 0, then phase-rotated copies
        (compilation is phase-equivariant: only the phase suffixes of its keys differ)."""
        seg = self.leaf_cache.get(key)
        if seg is None:
            base_key = (key[0], 0, 0, 0)
            base = self.leaf_cache.get(base_key)
            if base is None:
                base = self._register(base_key, self.compile_leaf(*base_key))
            seg = base if key == base_key else self._register(key, self._rotated(base, tuple(key[1:])))
        return seg

    def _register(self, key: tuple, seg: Segment) -> Segment:
        self.leaf_cache[key] = seg
        seg.uid = len(self.segments)
        self.segments.append(seg)
        self.leaf_of[seg.uid] = key
        return seg

    def _rotated(self, seg: Segment, ph: tuple[int, int, int]) -> Segment:
        zero = (0, 0, 0)
        cache: dict[int, int] = {}

        def m(k: int) -> int:
            v = cache.get(k)
            if v is None:
                v = cache[k] = self._actual_id(self._canon_id(k, zero), ph) if k >= 0 else k
            return v

        def op(o: object) -> object:
            if type(o) is Task:
                return Task(o.unit, o.occ, o.fill, tuple(m(k) for k in o.deps), tuple(m(k) for k in o.chain),
                            m(o.out), o.cause)
            if type(o) is MaxInto:
                return MaxInto(m(o.dst), tuple(m(k) for k in o.srcs))
            return Reset(m(o.dst), m(o.src))

        entries = [Entry([[op(o) for o in ops] for ops in e.stages], e.step) for e in seg.entries]
        return Segment(entries, seg.counters, seg.iterations, seg.rows, drain=seg.drain)

    def normal_state(self) -> tuple:
        """The state relative to the reference time and the current phase (see above)."""
        self.compact()
        r = self.ref()
        f = self._floor()
        ph = self.phase()
        cid = self._canon_id
        cal = tuple((max(self.tail[u], f) - r, tuple((g[0] - r, g[1] - r, g[2]) for g in self.gaps[u]))
                    for u in range(3))
        rd = tuple(sorted((cid(k, ph), v - r) for k, v in self.ready.items()))
        sd = tuple(sorted((cid(k, ph), v - r) for k, v in self.sready.items()))
        wh = tuple(sorted((cid(k, ph), v) for k, v in self.who.items()))
        pipe = tuple((self._seg_canon(x[0], ph), x[1], x[2]) for x in self.pipe)
        return (cal, rd, sd, wh, pipe)

    def _set_state(self, st: tuple, ref: int, ph: tuple[int, int, int]) -> None:
        cal, rd, sd, wh, pipe = st
        act = self._actual_id
        self.tail = [ref + c[0] for c in cal]
        self.gaps = [[[ref + g[0], ref + g[1], g[2]] for g in c[1]] for c in cal]
        self.ready = {act(k, ph): ref + v for k, v in rd}
        self.sready = {act(k, ph): ref + v for k, v in sd}
        self.who = {act(k, ph): v for k, v in wh}
        self.pipe = deque([self._seg_actual(x[0], ph), x[1], x[2]] for x in pipe)

    def _counters_phase(self) -> tuple[int, int, int]:
        return (self.slot, self.rows, self.blocks)

    def _jump(self, st: tuple, dt: int, dphase: tuple[int, int, int]) -> None:
        """Re-materialise canonical state ``st`` ``dt`` cycles later with the phases advanced."""
        ref = self.ref() + dt
        self.slot += dphase[0]
        self.rows += dphase[1]
        self.blocks += dphase[2]
        self._set_state(st, ref, self.phase())

    def _snapshot(self) -> tuple[np.ndarray, dict]:
        return self.counters.copy(), dict(self.stalls)

    # ---- program trees --------------------------------------------------------------------------
    def run(self, node: object) -> None:
        if isinstance(node, Leaf):
            self.run_segment(self._leaf((node.sig,) + self.phase()))
        elif isinstance(node, Segment):
            self.run_segment(node)
        elif isinstance(node, Seq):
            if node.block:
                self.blocks += 1
            self._run_seq(node)
        elif isinstance(node, Rep):
            self._run_rep(node)
        else:
            raise TypeError(node)

    def _run_seq(self, node: Seq) -> None:
        if not node.memo or not self.fast_forward:
            for ch in node.children:
                self.run(ch)
            return
        st = self.normal_state()
        key = (node.sig, st)
        hit = self.memo.get(key)
        if hit is not None:
            dt, dc, dst, dphase, end = hit
            self.counters += dc
            for k, v in dst.items():
                self.stalls[k] = self.stalls.get(k, 0) + v
            self._jump(end, dt, dphase)
            self.stats.memo_hits += 1
            return
        r0 = self.ref()
        c0, s0 = self._snapshot()
        p0 = self._counters_phase()
        for ch in node.children:
            self.run(ch)
        end = self.normal_state()
        p1 = self._counters_phase()
        self.memo[key] = (self.ref() - r0, self.counters - c0, _dict_diff(self.stalls, s0),
                          tuple(b - a for a, b in zip(p0, p1)), end)

    def _run_rep(self, node: Rep) -> None:
        if not self.fast_forward:
            for _ in range(node.n):
                self.run(node.child)
            return
        hist: list[tuple] = []
        i = 0
        unskipped = 0
        while i < node.n:
            st = self.normal_state()
            hist.append((st, self.ref(), self._snapshot(), self._counters_phase()))
            if len(hist) > HISTORY:
                hist.pop(0)
            k = self._exact_period(hist)
            if k:
                i += self._skip(node.n - i, k, hist)
            elif unskipped >= MIN_STEADY:
                k = self._steady_period(hist, force=unskipped >= MAX_UNSKIPPED)
                if k:
                    self.stats.approximate = True
                    i += self._skip(node.n - i, k, hist)
            if i >= node.n:
                break
            self.run(node.child)
            i += 1
            unskipped += 1

    @staticmethod
    def _exact_period(hist: list[tuple]) -> int:
        st = hist[-1][0]
        for k in range(1, len(hist)):
            if hist[-1 - k][0] == st:
                return k
        return 0

    @staticmethod
    def _steady_period(hist: list[tuple], force: bool) -> int:
        """A period whose time has settled (jitter below ``STEADY_TOL`` over three periods)."""
        refs = [h[1] for h in hist]
        for k in (1, 2, 4, 8):
            if len(refs) < 3 * k + 1:
                break
            d = [refs[-1 - j * k] - refs[-1 - (j + 1) * k] for j in range(3)]
            if min(d) > 0 and (max(d) - min(d)) <= STEADY_TOL * max(d):
                return k
        return 1 if force and len(refs) >= 2 else 0

    def _skip(self, remaining: int, k: int, hist: list[tuple]) -> int:
        """Advance ``remaining // k`` periods of ``k`` iterations measured at the end of ``hist``:
        shift times, scale counters, advance and rotate the phases."""
        reps = remaining // k
        if reps:
            _, r_then, (c_then, s_then), p_then = hist[-1 - k]
            now_st, _, _, p_now = hist[-1]
            dt = self.ref() - r_then
            self.counters += reps * (self.counters - c_then)
            for key, v in _dict_diff(self.stalls, s_then).items():
                self.stalls[key] = self.stalls.get(key, 0) + reps * v
            dphase = tuple(reps * (b - a) for a, b in zip(p_then, p_now))
            self._jump(now_st, reps * dt, dphase)
            self.stats.skipped_iterations += reps * k
            hist.clear()
        return reps * k

    # ---- end ------------------------------------------------------------------------------------
    def finish(self) -> int:
        """Issue what is still pending, close the books (finalise every gap), return the makespan."""
        self.flush()
        end = max([self.tail[u] for u in range(3)] + list(self.ready.values()) + [0])
        for u in range(3):
            for g in self.gaps[u]:
                self._stall(u, g[2], g[1] - g[0])
            self.gaps[u] = []
        return end


def _dict_diff(now: dict, then: dict) -> dict:
    out = {}
    for k, v in now.items():
        d = v - then.get(k, 0)
        if d:
            out[k] = d
    return out
