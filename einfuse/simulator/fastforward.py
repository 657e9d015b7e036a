"""Fast-forward for the engine: canonical states, exact periodic skips, memoised sequences.

Keys carry a phase: a window slot (suffix ``("s", j)``), a key-tile buffer (``("r", j)``) or a
row-block parity (``("b", j)``). States are compared *canonically*, every phase index taken relative
to the engine's current phase, and every time relative to a reference, after clamping what lies
below the lower bound of future ready times (the smallest gate key: every task waits on one, and
gates only grow). Equal canonical states have identical futures, so a repetition that returns to a
state seen ``k`` iterations earlier is advanced over the remaining periods at once: times shifted,
phases rotated, counters and stalls scaled. When a greedy schedule settles to a constant period
without repeating exactly, the rest is extrapolated at that rate and flagged ``approximate``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from einfuse.simulator.engine import Rep, Seq

MAX_UNSKIPPED = 48   # repetitions simulated without finding a period before extrapolating anyway
MIN_STEADY = 6       # repetitions simulated before a settled (not exactly periodic) rate is accepted
STEADY_TOL = 2e-3    # relative jitter of the time per period accepted as settled
HISTORY = 17         # states kept to find periods of up to 16 iterations
LOOSE_MIN_TASKS = 20_000   # a memoised sequence this long is reused from a different entry state


PHASE_TAGS = ("s", "r", "b")


class PhaseKeys:
    """The phase structure of interned keys, shared by every engine of one compiler.

    A key whose name ends in a phase tag and index (``("QK", "s", 3)``) belongs to a *family* (the
    name without its index); its canonical id at phase ``ph`` is ``family * stride + (index -
    offset) mod modulus`` (the offset is the engine's phase for that tag), other keys' canonical id
    is ``family * stride``. So equal canonical ids mean equal names up to the phase, as comparing
    rewritten names would, at the cost of integer arithmetic once per key and phase."""

    def __init__(self, keys, mods: tuple[int, int, int]) -> None:
        self.keys = keys
        self.mods = mods
        self.stride = max(mods)
        self.families: dict[tuple, int] = {}
        self.family_names: list[tuple[tuple, int]] = []     # family -> (name prefix, tag index or -1)
        self.split: list[tuple[int, int, int]] = []         # key id -> (family * stride, tag index, index)
        self.tables: dict[tuple[int, int, int], dict[int, int]] = {}
        self.rotations: dict[tuple[int, int, int], dict[int, int]] = {}

    def _split(self, kid: int) -> tuple[int, int, int]:
        names, split = self.keys.names, self.split
        while len(split) <= kid:
            name = names[len(split)]
            if isinstance(name, tuple) and len(name) >= 2 and name[-2] in PHASE_TAGS:
                prefix, ti, idx = name[:-2], PHASE_TAGS.index(name[-2]), name[-1]
            else:
                prefix, ti, idx = name, -1, 0
            fam = self.families.get((prefix, ti))
            if fam is None:
                fam = self.families[(prefix, ti)] = len(self.family_names)
                self.family_names.append((prefix, ti))
            split.append((fam * self.stride, ti, idx))
        return split[kid]

    def canon_table(self, ph: tuple[int, int, int]) -> dict[int, int]:
        table = self.tables.get(ph)
        if table is None:
            table = self.tables[ph] = {}
        return table

    def canon(self, kid: int, ph: tuple[int, int, int]) -> int:
        table = self.canon_table(ph)
        c = table.get(kid)
        if c is None:
            base, ti, idx = self.split[kid] if kid < len(self.split) else self._split(kid)
            c = table[kid] = base if ti < 0 else base + (idx - ph[ti]) % self.mods[ti]
        return c

    def actual(self, cid: int, ph: tuple[int, int, int]) -> int:
        fam, cidx = divmod(cid, self.stride)
        prefix, ti = self.family_names[fam]
        if ti < 0:
            return self.keys(prefix)
        return self.keys(prefix + (PHASE_TAGS[ti], (cidx + ph[ti]) % self.mods[ti]))

    def rotation(self, ph: tuple[int, int, int]):
        """``(cache, m)``: ``m(k)`` is key ``k`` rotated from phase 0 to ``ph``, remembered in ``cache``."""
        cache = self.rotations.get(ph)
        if cache is None:
            cache = self.rotations[ph] = {}
        split, keys, mods = self.split, self.keys, self.mods

        def m(k: int) -> int:
            v = cache.get(k)
            if v is None:
                if k < 0:
                    v = k
                else:
                    _, ti, idx = split[k] if k < len(split) else self._split(k)
                    if ti < 0:
                        v = k
                    else:
                        prefix = self.family_names[split[k][0] // self.stride][0]
                        v = keys(prefix + (PHASE_TAGS[ti], (idx + ph[ti]) % mods[ti]))
                cache[k] = v
            return v
        return cache, m


class FastForward:
    """Mixin of :class:`einfuse.simulator.engine.Engine` (its state lives there)."""

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
        return self.phase_keys.canon(kid, ph)

    def _actual_id(self, cid: int, ph: tuple[int, int, int]) -> int:
        return self.phase_keys.actual(cid, ph)

    def _seg_canon(self, uid: int, ph: tuple[int, int, int]) -> tuple:
        sig, off, par, bpar = self.leaf_of[uid]
        m = self._mods()
        return (sig, (off - ph[0]) % m["s"], (par - ph[1]) % m["r"], (bpar - ph[2]) % 2)

    def _seg_actual(self, canon: tuple, ph: tuple[int, int, int]) -> int:
        sig, off, par, bpar = canon
        m = self._mods()
        key = (sig, (off + ph[0]) % m["s"], (par + ph[1]) % m["r"], (bpar + ph[2]) % 2)
        return self._leaf(key).uid

    def normal_state(self) -> tuple:
        """The state relative to the reference time and the current phase (see above)."""
        self.compact()
        r = self.ref()
        f = self._floor()
        ph = self.phase()
        cid = self.phase_keys.canon
        tab = self.phase_keys.canon_table(ph)

        def canon(d: dict[int, int], shift: int) -> frozenset:
            # a set of (canonical key, value) pairs: keys are unique, so equal sets are equal
            # states, as sorted tuples would be, without the sort
            return frozenset([(tab[k] if k in tab else cid(k, ph), v - shift) for k, v in d.items()])

        cal = tuple((max(self.tail[u], f) - r, tuple((g[0] - r, g[1] - r, g[2]) for g in self.gaps[u]))
                    for u in range(3))
        rd = canon(self.ready, r)
        sd = canon(self.sready, r)
        wh = canon(self.who, 0)
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

    def _run_seq(self, node: Seq) -> None:
        if not node.memo or not self.fast_forward:
            for ch in node.children:
                self.run(ch)
            return
        st = self.normal_state()
        key = (node.sig, st)
        hit = self.memo.get(key)
        if hit is None:
            # a long stretch already simulated from another state: its cost depends on the entry
            # state only through its first tiles, so reuse it (flagged approximate)
            loose = self.memo_loose.get(node.sig)
            if loose is not None and loose[1] >= LOOSE_MIN_TASKS:
                hit = loose[0]
                self.stats.approximate = True
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
        t0 = self.stats.tasks_placed
        for ch in node.children:
            self.run(ch)
        end = self.normal_state()
        p1 = self._counters_phase()
        self.memo[key] = (self.ref() - r0, self.counters - c0, _dict_diff(self.stalls, s0),
                          tuple(b - a for a, b in zip(p0, p1)), end)
        self.memo_loose[node.sig] = (self.memo[key], self.stats.tasks_placed - t0)

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
        # forced: the mean rate over the whole history, not the last step (a single step of a schedule
        # that has not settled extrapolated 2x too fast at pe=512; the history's mean is within 0.5%)
        return len(refs) - 1 if force and len(refs) >= 2 else 0

    def _skip(self, remaining: int, k: int, hist: list[tuple]) -> int:
        """Advance ``remaining // k`` periods of ``k`` iterations measured at the end of ``hist``:
        shift times, scale counters, advance and rotate the phases."""
        reps = remaining // k
        if reps:
            _, r_then, (c_then, s_then), p_then = hist[-1 - k]
            now_st, _, _, p_now = hist[-1]
            dt = self.ref() - r_then
            self.counters += reps * (self.counters - c_then)
            dst = _dict_diff(self.stalls, s_then)
            for key, v in dst.items():
                self.stalls[key] = self.stalls.get(key, 0) + reps * v
            self.stats.period, self.stats.period_reps, self.stats.period_stalls = dt / k, k, dst
            dphase = tuple(reps * (b - a) for a, b in zip(p_then, p_now))
            self._jump(now_st, reps * dt, dphase)
            self.stats.skipped_iterations += reps * k
            hist.clear()
        return reps * k


def _dict_diff(now: dict, then: dict) -> dict:
    out = {}
    for k, v in now.items():
        d = v - then.get(k, 0)
        if d:
            out[k] = d
    return out

