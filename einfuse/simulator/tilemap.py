"""Tile classes (EMPTY / PARTIAL / FULL) and exact present points, in time proportional to the mask's
boundary rather than to the number of tile pairs.

The block-sparsity pass (:func:`einfuse.passes.block_sparsity.classify_tiles`) bounds the predicate
on every (query tile, key tile) pair at once: 16.7 M pairs at 1M tokens and 256-wide tiles, seconds
of NumPy. The simulator only needs the same table, so here it is built by subdivision: boxes of whole
tiles start as the full grid and are split in halves (along their longer side, in tiles) until the
interval evaluator proves them all-true (FULL) or all-false (EMPTY) or they are one tile. Those
undecided single tiles are counted exactly, once per tile class (:func:`.counting.count_tiles`):
none kept is EMPTY, all kept is FULL, anything else PARTIAL, and the partial tiles' present points
come out of the same count. The result equals ``classify_tiles`` and the brute-force dense mask
(tests/simulator/test_sim_counting.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.ir.ranks import HEAD_INDEX, size_symbol
from einfuse.passes.intervals import IntervalEvaluator
from einfuse.simulator.counting import count_tiles, xreplace_plain

EMPTY, PARTIAL, FULL = 0, 1, 2


def bind_sizes(pred: sympy.Basic, q_ext: sympy.Expr, k_ext: sympy.Expr,
               env: tuple[tuple[str, float], ...]) -> tuple[sympy.Basic, int, int, int]:
    """``(predicate, P, M, heads)`` with the sizes of ``env`` substituted: the block-sparsity pass's
    ``_bind`` (same checks and errors) by ``xreplace`` instead of ``subs``, each repeated clamp
    rebuilt once and clamps, relations and And/Or left unevaluated (:func:`.counting.xreplace_plain`:
    evaluating them queries sympy's assumptions, most of the time on an N-D neighbourhood). The form
    may differ from ``subs`` only in how an equal predicate is written, and :func:`tile_table` is
    exact for any form (undecided tiles are counted)."""
    from einfuse.passes.block_sparsity import _bind

    values = {size_symbol(k): sympy.Integer(int(v)) if float(v).is_integer() else sympy.Rational(str(v))
              for k, v in env}
    bound = xreplace_plain(pred, values)
    if bound.free_symbols & set(values):      # not every occurrence replaced: the pass's way
        return _bind(pred, q_ext, k_ext, env, "P", "M")
    _, P, M, heads = _bind(sympy.true, q_ext, k_ext, env, "P", "M")     # extents, with its checks
    if HEAD_INDEX in bound.free_symbols:
        if "H" not in dict(env):
            return _bind(pred, q_ext, k_ext, env, "P", "M")          # raises the pass's error
        heads = int(dict(env)["H"])
    if any(s.name[0].isupper() for s in bound.free_symbols):
        return _bind(pred, q_ext, k_ext, env, "P", "M")              # raises the pass's error
    return bound, P, M, heads


@dataclass(frozen=True)
class TileTable:
    kinds: np.ndarray        # (heads, query tiles, key tiles) int8
    present: int             # points the predicate keeps in the PARTIAL tiles
    area: int                # all points of the PARTIAL tiles


def tile_table(pred: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol, P: int, M: int, tq: int, tk: int,
               heads: int = 1) -> TileTable:
    """Exact tile classes of ``pred`` over ``P x M`` in tiles of ``tq`` queries x ``tk`` keys."""
    if HEAD_INDEX not in pred.free_symbols:
        heads = 1
    nq, nk = math.ceil(P / tq), math.ceil(M / tk)
    kinds = np.zeros((heads, nq, nk), np.int8)
    h = np.arange(heads, dtype=np.int64)
    boxes = [h, np.zeros(heads, np.int64), np.full(heads, nq), np.zeros(heads, np.int64), np.full(heads, nk)]
    single: list[tuple[np.ndarray, ...]] = []
    while len(boxes[0]):
        bh, i0, i1, j0, j1 = boxes
        plo, phi = i0 * tq, np.minimum(i1 * tq, P) - 1
        mlo, mhi = j0 * tk, np.minimum(j1 * tk, M) - 1
        f64 = [x.astype(np.float64) for x in (bh, plo, phi, mlo, mhi)]
        t, f = IntervalEvaluator({p: (f64[1], f64[2]), m: (f64[3], f64[4]),
                                  HEAD_INDEX: (f64[0], f64[0])}).truth(pred)
        n = len(bh)
        t, f = np.broadcast_to(t, (n,)), np.broadcast_to(f, (n,))
        for a, b, c, d, e in zip(*(x[t].tolist() for x in (bh, i0, i1, j0, j1))):
            kinds[a, b:c, d:e] = FULL
        und = ~(t | f)
        ni, nj = i1 - i0, j1 - j0
        one = und & (ni == 1) & (nj == 1)
        if one.any():
            single.append(tuple(x[one] for x in (bh, i0, j0)))
        split = und & ~one
        bh, i0, i1, j0, j1, ni, nj = (x[split] for x in (bh, i0, i1, j0, j1, ni, nj))
        along_i = ni >= nj
        imid = i0 + ni // 2
        jmid = j0 + nj // 2
        a = (bh, i0, np.where(along_i, imid, i1), j0, np.where(along_i, j1, jmid))
        b = (bh, np.where(along_i, imid, i0), i1, np.where(along_i, j0, jmid), j1)
        boxes = [np.concatenate([x, y]) for x, y in zip(a, b)]
    present = area = 0
    if single:
        bh, qi, sj = (np.concatenate([s[k] for s in single]) for k in range(3))
        plo, mlo = qi * tq, sj * tk
        phi, mhi = np.minimum(plo + tq, P) - 1, np.minimum(mlo + tk, M) - 1
        kept = count_tiles(pred, p, m, bh, plo, phi, mlo, mhi)
        size = (phi - plo + 1) * (mhi - mlo + 1)
        kind = np.where(kept == 0, EMPTY, np.where(kept == size, FULL, PARTIAL)).astype(np.int8)
        kinds[bh, qi, sj] = kind
        part = kind == PARTIAL
        present, area = int(kept[part].sum()), int(size[part].sum())
    kinds.setflags(write=False)
    return TileTable(kinds, present, area)


__all__ = ["TileTable", "bind_sizes", "tile_table"]
