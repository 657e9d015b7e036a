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
from dataclasses import dataclass, field

import numpy as np

from einfuse.simulator.fastforward import FastForward, PhaseKeys

UNITS = ("2d", "1d", "dram")
MAX_GAPS = 16


# Task, MaxInto and Reset are built by the thousand per compiled leaf (and again per phase rotation):
# slotted, non-frozen dataclasses construct ~3x faster than frozen ones. They are never mutated.
@dataclass(slots=True)
class Task:
    """One unit of work; keys are small ints interned by :class:`Keys`."""

    unit: int
    occ: int
    fill: int
    deps: tuple[int, ...]          # result-time dependencies (a gate key is always one of them)
    chain: tuple[int, ...]         # stream dependencies (producer in the same array, data resident)
    out: int                       # key written with the result time (-1: none)
    cause: int                     # cause id reported by tasks that wait on ``out``


@dataclass(slots=True)
class MaxInto:
    """Pseudo-op: ``ready[dst] = max(ready[dst], ready[srcs])`` (window and release bookkeeping)."""

    dst: int
    srcs: tuple[int, ...]


@dataclass(slots=True)
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
        # caches that depend only on the interned names, shared by every engine using these keys
        # (the class model runs a dozen calibration engines on one compiler): see Engine.__init__
        self.shared: dict[object, dict] = {}

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
    period: float = 0.0          # cycles per iteration of the last skipped period (calibrations)
    period_reps: int = 0         # iterations in that period
    period_stalls: dict = field(default_factory=dict)   # stall cycles over that period


class Engine(FastForward):
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
        # Canonical ids, phase rotations and compiled leaves are functions of the key names, the
        # phase moduli and the compiler: engines that share all three share them (exact).
        shared = self.keys.shared.setdefault((len(window_keys), row_buffers, compile_leaf), {})
        mods = (len(window_keys) or 1, row_buffers, 2)
        self.phase_keys: PhaseKeys = shared.setdefault("phase_keys", PhaseKeys(self.keys, mods))
        self._templates: dict[tuple, Segment] = shared.setdefault("leaves", {})
        self._template_keys: dict[int, tuple] = shared.setdefault("leaf_keys", {})   # id(template) -> keys
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
        self.memo_loose: dict[object, tuple] = {}
        self.stats = Stats()

    # ---- placement ----------------------------------------------------------------------------
    def _place(self, unit: int, ready: int, occ: int, cause: int) -> int:
        if self.first[unit] < 0:
            self.first[unit] = max(ready, self.tail[unit])
        gaps = self.gaps[unit]
        if gaps:
            for gi, g in enumerate(gaps):
                gs, ge = g[0], g[1]
                s = ready if ready > gs else gs
                if s + occ <= ge:
                    if s > gs:
                        if s + occ < ge:
                            gaps[gi:gi + 1] = [[gs, s, g[2]], [s + occ, ge, g[2]]]
                        else:
                            gaps[gi] = [gs, s, g[2]]
                    elif s + occ < ge:
                        gaps[gi] = [s + occ, ge, g[2]]
                    else:
                        del gaps[gi]
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
        get, sget = ready.get, sready.get
        place, window_cause = self._place, self.window_cause
        for op in ops:
            tp = type(op)
            if tp is Task:
                r, crit = 0, -1
                for k in op.deps:
                    x = get(k, 0)
                    if x > r:
                        r, crit = x, k
                cres = 0
                chain = op.chain
                if chain:
                    cr = 0
                    for k in chain:
                        x = sget(k, 0)
                        if x > cr:
                            cr = x
                        y = get(k, 0)
                        if y > cres:
                            cres = y
                    if cr > r:
                        r, crit = cr, chain[0]
                cause = who.get(crit, window_cause) if crit >= 0 else window_cause
                occ = op.occ
                s = place(op.unit, r, occ, cause)
                res = s + occ + op.fill
                if cres + occ > res:
                    res = cres + occ
                out = op.out
                if out >= 0:
                    ready[out] = res
                    sready[out] = s + occ
                    who[out] = op.cause
            elif tp is MaxInto:
                v = get(op.dst, 0)
                for k in op.srcs:
                    x = get(k, 0)
                    if x > v:
                        v = x
                ready[op.dst] = v
            else:
                ready[op.dst] = sready[op.dst] = get(op.src, 0)
        self.stats.tasks_placed += len(ops)

    def _advance_pipe(self) -> None:
        """Issue the next stage of every pending entry (newest first), dropping finished ones."""
        segs = self.segments
        issue = self._issue
        done = False
        for item in reversed(self.pipe):
            stages = segs[item[0]].entries[item[1]].stages
            issue(stages[item[2]])
            item[2] += 1
            done = done or item[2] >= len(stages)
        if done:
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

    def _leaf(self, key: tuple) -> Segment:
        """The segment of a leaf at a phase: compiled once at phase 0, then phase-rotated copies
        (compilation is phase-equivariant: only the phase suffixes of its keys differ). Templates
        are shared with other engines of the same compiler; each engine registers its own copy."""
        seg = self.leaf_cache.get(key)
        if seg is None:
            tmpl = self._templates.get(key)
            if tmpl is None:
                base_key = (key[0], 0, 0, 0)
                base = self._templates.get(base_key)
                if base is None:
                    base = self._templates[base_key] = self.compile_leaf(*base_key)
                tmpl = base if key == base_key else self._templates.setdefault(key, self._rotated(base, key[1:]))
            seg = self._register(key, Segment(tmpl.entries, tmpl.counters, tmpl.iterations, tmpl.rows,
                                              drain=tmpl.drain))
        return seg

    def _register(self, key: tuple, seg: Segment) -> Segment:
        self.leaf_cache[key] = seg
        seg.uid = len(self.segments)
        self.segments.append(seg)
        self.leaf_of[seg.uid] = key
        return seg

    def _rotated(self, seg: Segment, ph: tuple[int, int, int]) -> Segment:
        cache, m = self.phase_keys.rotation(ph)
        used = self._template_keys.get(id(seg))
        if used is None:
            used = {-1}
            for e in seg.entries:
                for ops in e.stages:
                    for o in ops:
                        if type(o) is Task:
                            used.update(o.deps, o.chain, (o.out,))
                        elif type(o) is MaxInto:
                            used.update(o.srcs, (o.dst,))
                        else:
                            used.update((o.dst, o.src))
            self._template_keys[id(seg)] = used = tuple(used)
        for k in used:
            if k not in cache:
                m(k)

        get = cache.__getitem__

        def op(o: object) -> object:
            if type(o) is Task:
                return Task(o.unit, o.occ, o.fill, tuple(map(get, o.deps)),
                            tuple(map(get, o.chain)) if o.chain else (), get(o.out), o.cause)
            if type(o) is MaxInto:
                return MaxInto(get(o.dst), tuple(map(get, o.srcs)))
            return Reset(get(o.dst), get(o.src))

        entries = [Entry([[op(o) for o in ops] for ops in e.stages], e.step) for e in seg.entries]
        return Segment(entries, seg.counters, seg.iterations, seg.rows, drain=seg.drain)

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


