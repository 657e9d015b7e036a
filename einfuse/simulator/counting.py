"""Exact present-point counts of the partial tiles of a score constraint, without a dense mask.

The simulator needs how many (query, key) points of its PARTIAL tiles the constraint keeps (useful
MACs, utilisation). Counting them point by point costs the sequence length squared; here it costs
the distinct tile classes times the length of the mask's boundary inside one tile:

1. **classes**: when the constraint is unchanged by shifting ``p`` and ``m`` together (causal, sliding
   window, chunked-free band masks: proved symbolically, no sampling), two partial tiles with the same
   diagonal offset ``plo - mlo`` and the same clipped extents keep the same points, so each class is
   counted once and weighted by its multiplicity. Otherwise every partial tile is its own class.
2. **subdivision**: each class's box is split in halves along its longer side; the interval evaluator
   of the block-sparsity pass (:mod:`einfuse.passes.intervals`) proves sub-boxes wholly inside (their
   area is counted) or wholly outside (dropped); what is undecided at ``LEAF`` points or fewer is
   evaluated point by point, all leaves at once.

Every step is exact: intervals only decide what they prove, and leaves are evaluated. Masks that are
not shift-invariant and have more than ``MAX_CLASSES`` partial tiles (2-D neighbourhoods at long
lengths) are counted exactly on a seeded random sample of ``SAMPLE`` tiles and scaled (flagged).
"""

from __future__ import annotations

import functools

import numpy as np
import sympy

from einfuse.ir.ranks import HEAD_INDEX
from einfuse.ir.symeval import evaluate
from einfuse.passes.intervals import IntervalEvaluator

PARTIAL = 1
LEAF = 256            # undecided boxes of at most this many points are evaluated point by point
_LEAF_SIDE = 16
MAX_CLASSES = 2048    # distinct partial tiles counted exactly; beyond, a random sample of ...
SAMPLE = 512          # ... this many is counted exactly and scaled


def _canon(pred: sympy.Basic) -> sympy.Basic:
    """A form where ``a <= b`` and ``a - b <= 0`` compare equal (relations as ``expand(a - b) OP 0``)."""
    if isinstance(pred, sympy.core.relational.Relational):
        return pred.func(sympy.expand(pred.lhs - pred.rhs), 0, evaluate=False)
    if isinstance(pred, sympy.logic.boolalg.BooleanFunction):
        return pred.func(*[_canon(a) for a in pred.args])
    return pred


@functools.lru_cache(maxsize=128)
def shift_invariant(pred: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol) -> bool:
    """True when ``pred(p + t, m + t) == pred(p, m)`` for every ``t`` (proved on the expression)."""
    t = sympy.Symbol("_shift_t", integer=True)
    shifted = pred.subs({p: p + t, m: m + t}, simultaneous=True)
    return _canon(shifted) == _canon(pred)


def partial_points(pred: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol, P: int, M: int,
                   tq: int, tk: int, kinds: np.ndarray) -> tuple[int, int, bool]:
    """``(present, area, exact)``: points kept by ``pred`` and all points, over the PARTIAL tiles of
    ``kinds[head, q_tile, k_tile]`` (tiles of ``tq`` queries x ``tk`` keys, clipped to P x M).
    ``exact`` is False when more than ``MAX_CLASSES`` distinct tiles had to be counted and
    ``present`` was scaled from ``SAMPLE`` of them."""
    idx = np.argwhere(kinds == PARTIAL)
    if len(idx) == 0:
        return 0, 0, True
    h, q, s = (idx[:, i].astype(np.int64) for i in range(3))
    plo, mlo = q * tq, s * tk
    phi, mhi = np.minimum(plo + tq, P) - 1, np.minimum(mlo + tk, M) - 1
    area = int(((phi - plo + 1) * (mhi - mlo + 1)).sum())
    if HEAD_INDEX not in pred.free_symbols:
        h = np.zeros_like(h)
    if shift_invariant(pred, p, m):
        # one class per (head, diagonal offset, extents); counted at its first tile's position
        keys = np.stack([h, plo - mlo, phi - plo, mhi - mlo], axis=1)
        _, first, weight = np.unique(keys, axis=0, return_index=True, return_counts=True)
        h, plo, phi, mlo, mhi = h[first], plo[first], phi[first], mlo[first], mhi[first]
    else:
        weight = np.ones(len(h), np.int64)
    if len(h) > MAX_CLASSES:
        # too many distinct tiles to count each: count a seeded random sample exactly and scale
        # (unbiased; random, not evenly spaced, so regular masks do not alias)
        pick = np.random.default_rng(0).choice(len(h), SAMPLE, replace=False)
        areas = (phi - plo + 1) * (mhi - mlo + 1) * weight
        kept = _count(pred, p, m, h[pick], plo[pick], phi[pick], mlo[pick], mhi[pick], weight[pick])
        return round(kept * areas.sum() / areas[pick].sum()), area, False
    present = _count(pred, p, m, h, plo, phi, mlo, mhi, weight)
    return present, area, True


def _count(pred, p, m, h, plo, phi, mlo, mhi, weight) -> int:
    total = 0
    boxes = [np.asarray(x, np.int64) for x in (h, plo, phi, mlo, mhi, weight)]
    while len(boxes[0]):
        h, plo, phi, mlo, mhi, w = boxes
        f64 = [x.astype(np.float64) for x in (h, plo, phi, mlo, mhi)]
        t, f = IntervalEvaluator({p: (f64[1], f64[2]), m: (f64[3], f64[4]), HEAD_INDEX: (f64[0], f64[0])}
                                 ).truth(pred)
        n = len(h)
        t, f = np.broadcast_to(t, (n,)), np.broadcast_to(f, (n,))
        np_, nm = phi - plo + 1, mhi - mlo + 1
        total += int((w[t] * np_[t] * nm[t]).sum())
        und = ~(t | f)
        leaf = und & (np_ <= _LEAF_SIDE) & (nm <= _LEAF_SIDE)
        if leaf.any():
            total += _evaluate_leaves(pred, p, m, *(x[leaf] for x in (h, plo, phi, mlo, mhi, w)))
        split = und & ~leaf
        h, plo, phi, mlo, mhi, w, np_, nm = (x[split] for x in (h, plo, phi, mlo, mhi, w, np_, nm))
        along_p = np_ >= nm
        pmid = plo + np_ // 2 - 1
        mmid = mlo + nm // 2 - 1
        a = (h, plo, np.where(along_p, pmid, phi), mlo, np.where(along_p, mhi, mmid), w)
        b = (h, np.where(along_p, pmid + 1, plo), phi, np.where(along_p, mlo, mmid + 1), mhi, w)
        boxes = [np.concatenate([x, y]) for x, y in zip(a, b)]
    return total


def _evaluate_leaves(pred, p, m, h, plo, phi, mlo, mhi, w) -> int:
    r = np.arange(_LEAF_SIDE)
    pp = plo[:, None, None] + r[None, :, None]
    mm = mlo[:, None, None] + r[None, None, :]
    inside = (pp <= phi[:, None, None]) & (mm <= mhi[:, None, None])
    v = evaluate(pred, {p: pp.astype(np.float64), m: mm.astype(np.float64),
                        HEAD_INDEX: h[:, None, None].astype(np.float64)})
    v = np.broadcast_to(np.asarray(v).astype(bool), inside.shape) & inside
    return int((v.sum(axis=(1, 2)) * w).sum())


__all__ = ["partial_points", "shift_invariant"]
