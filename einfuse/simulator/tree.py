"""The program tree of a simulation: the loop nest of every design, with repetition made explicit.

Per (batch, head): every fusion group over all its row blocks (groups in order, the pipeline drained
between them since a group reads what the previous one stored); per row block: a prologue, then
for each pass the key tiles as runs of identical tile classes (a ``Rep`` the engine fast-forwards)
or memoised stretches of distinct ones (the diagonal of a causal mask), then the pass epilogue.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from einfuse.simulator.engine import Leaf, Rep, Seq
from einfuse.simulator.program import Compiler
from einfuse.simulator.tiles import EMPTY, FULL


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
    if kinds is None:
        full = tuple([FULL] * len(qcols))
        last_rows = comp.rows_n(n - 1)
        runs = [(("row", gi, k, roles.rows_tile, qcols, full), n - 1 if last_rows != roles.rows_tile else n)]
        if last_rows != roles.rows_tile:
            runs.append((("row", gi, k, last_rows, qcols, full), 1))
        return _runs_to_nodes([r for r in runs if r[1] > 0])
    cols_kinds = np.ascontiguousarray(kinds.T)            # (key tiles, sub-blocks)
    rows = np.array([comp.rows_n(s) for s in range(n)]) if comp.rows_n(n - 1) != roles.rows_tile else None
    # run boundaries: key tiles whose class vector (or tile height) differs from the previous one
    change = np.ones(n, bool)
    change[1:] = (cols_kinds[1:] != cols_kinds[:-1]).any(axis=1)
    if rows is not None:
        change[1:] |= rows[1:] != rows[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    nonempty = cols_kinds.any(axis=1)
    runs: list[tuple] = []
    for s0, s1 in zip(starts.tolist(), ends.tolist()):
        if not nonempty[s0]:
            continue
        vec = ("row", gi, k, comp.rows_n(s0), qcols, tuple(cols_kinds[s0].tolist()))
        if runs and runs[-1][0] == vec:
            runs[-1] = (vec, runs[-1][1] + s1 - s0)
        else:
            runs.append((vec, s1 - s0))
    return _runs_to_nodes(runs)


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


__all__ = ["build_program"]
