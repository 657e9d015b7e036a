"""Exact present-point counts of the partial tiles of a score constraint, without a dense mask.

The simulator needs how many (query, key) points of its PARTIAL tiles the constraint keeps (useful
MACs, utilisation). Counting them point by point costs the sequence length squared; here it costs
the distinct tile classes times the length of the mask's boundary inside one tile:

1. **classes**: tiles are first grouped by which argument of every ``Min``/``Max`` of the predicate
   is provably the extreme one over the whole tile (interval bounds); inside a group the predicate is
   the one with those clamps resolved. If that predicate is unchanged by shifting ``p`` and ``m``
   together by ``T`` (proved on the expression; ``T`` = 1, each denominator of a ``Mod``/``floor``/
   rational coefficient, or their lcm), two tiles of the group with the same ``plo - mlo``, the same
   ``plo mod T`` and the same clipped extents keep the same points: causal and sliding windows
   (``T = 1``) and N-D neighbourhoods away from their borders (``T`` = a grid row) collapse to a few
   classes, each counted once and weighted by its multiplicity. Tiles whose group has no period are
   their own class.
2. **subdivision**: each class's box is split in halves along its longer side; the interval evaluator
   of the block-sparsity pass (:mod:`einfuse.passes.intervals`) proves sub-boxes wholly inside (their
   area is counted) or wholly outside (dropped); what is undecided at ``LEAF`` points or fewer is
   evaluated point by point, all leaves at once.

Every step is exact: intervals only decide what they prove, clamps are resolved only where proved,
and leaves are evaluated. Nothing is sampled.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import sympy

from einfuse.ir.ranks import HEAD_INDEX
from einfuse.ir.symeval import evaluate
from einfuse.passes.intervals import IntervalEvaluator

PARTIAL = 1
LEAF = 256            # undecided boxes of at most this many points are evaluated point by point
_LEAF_SIDE = 16


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
    Always exact (the flag stays for callers that report it)."""
    idx = np.argwhere(kinds == PARTIAL)
    if len(idx) == 0:
        return 0, 0, True
    h, q, s = (idx[:, i].astype(np.int64) for i in range(3))
    plo, mlo = q * tq, s * tk
    phi, mhi = np.minimum(plo + tq, P) - 1, np.minimum(mlo + tk, M) - 1
    area = int(((phi - plo + 1) * (mhi - mlo + 1)).sum())
    present = int(count_tiles(pred, p, m, h, plo, phi, mlo, mhi).sum())
    return present, area, True


def count_tiles(pred: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol, h: np.ndarray, plo: np.ndarray,
                phi: np.ndarray, mlo: np.ndarray, mhi: np.ndarray) -> np.ndarray:
    """Points kept by ``pred`` in each box ``[plo, phi] x [mlo, mhi]`` of head ``h`` (exact, once per
    tile class; see the module docstring)."""
    h, plo, phi, mlo, mhi = (np.asarray(x, np.int64) for x in (h, plo, phi, mlo, mhi))
    if HEAD_INDEX not in pred.free_symbols:
        h = np.zeros_like(h)
    out = np.zeros(len(h), np.int64)
    if not len(h):
        return out
    for members, gpred, period in _groups(pred, p, m, h, plo, phi, mlo, mhi):
        gh, gpl, gph, gml, gmh = h[members], plo[members], phi[members], mlo[members], mhi[members]
        if period:
            _, first, inverse = np.unique(_encode([gh, gpl - gml, gpl % period, gph - gpl, gmh - gml]),
                                          return_index=True, return_inverse=True)
            counts = count_each(gpred, p, m, gh[first], gpl[first], gph[first], gml[first], gmh[first])
            out[members] = counts[inverse.reshape(-1)]
        else:
            out[members] = count_each(gpred, p, m, gh, gpl, gph, gml, gmh)
    return out


def _encode(cols: list[np.ndarray]) -> np.ndarray:
    """Rows of small integers as one int64 per row (mixed radix), or an object array of tuples when
    the ranges do not fit: a fast 1-D key for ``np.unique``."""
    cols = [np.asarray(c, np.int64) for c in cols]
    if not cols or not len(cols[0]):
        return np.zeros(len(cols[0]) if cols else 0, np.int64)
    lo = [int(c.min()) for c in cols]
    span = [int(c.max()) - a + 1 for c, a in zip(cols, lo)]
    if math.prod(span) < 2 ** 62:
        key = np.zeros(len(cols[0]), np.int64)
        for c, a, w in zip(cols, lo, span):
            key = key * w + (c - a)
        return key
    return np.array(list(zip(*(c.tolist() for c in cols))), dtype=object)


def _clamps(pred: sympy.Basic) -> list[sympy.Basic]:
    """``Min``/``Max`` nodes, innermost first."""
    nodes = list(pred.atoms(sympy.Min, sympy.Max))
    return sorted(nodes, key=lambda e: sympy.count_ops(e))


def _groups(pred, p, m, h, plo, phi, mlo, mhi):
    """``(member indices, predicate with the clamps resolved on them, shift period or 0)``."""
    nodes = _clamps(pred)
    n = len(h)
    if not nodes:
        return [(np.arange(n), pred, period_of(pred, p, m))]
    ev = IntervalEvaluator({p: (plo.astype(np.float64), phi.astype(np.float64)),
                            m: (mlo.astype(np.float64), mhi.astype(np.float64)),
                            HEAD_INDEX: (h.astype(np.float64), h.astype(np.float64))})
    choice = np.full((n, len(nodes)), -1, np.int64)
    for ni, node in enumerate(nodes):
        ivs = [tuple(np.broadcast_to(x, (n,)) for x in ev.value(a)) for a in node.args]
        for ai, (lo, hi) in enumerate(ivs):
            ok = np.ones(n, bool)
            for bi, (lo2, hi2) in enumerate(ivs):
                if bi != ai:
                    # this argument is the extreme one over the whole box
                    ok &= (hi <= lo2) if isinstance(node, sympy.Min) else (lo >= hi2)
            choice[ok & (choice[:, ni] < 0), ni] = ai
    _, first, inverse = np.unique(_encode(list(choice.T)), return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    out = []
    for gi, vec in enumerate(choice[first]):
        members = np.flatnonzero(inverse == gi)
        gpred = _resolve(pred, tuple(nodes), tuple(int(x) for x in vec))
        out.append((members, gpred, period_of(gpred, p, m)))
    return out


def xreplace_shared(e: sympy.Basic, rule: dict, memo: dict | None = None) -> sympy.Basic:
    """``e.xreplace(rule)``, rebuilding each distinct sub-expression once: a mask repeats its clamps
    (``Min(.., Max(.., Mod(p, X) - 3))`` on both sides of a window), and rebuilding a ``Min``/``Max``
    of symbols queries sympy's assumptions (milliseconds each). Same rule, same constructors, same
    result as sympy's own ``xreplace``."""
    memo = {} if memo is None else memo
    hit = memo.get(e)
    if hit is None:
        if e in rule:
            hit = rule[e]
        else:
            args = tuple(xreplace_shared(a, rule, memo) if isinstance(a, sympy.Basic) else a for a in e.args)
            hit = e.func(*args) if any(x is not y for x, y in zip(args, e.args)) else e
        memo[e] = hit
    return hit


_UNEVALUATED = (sympy.Min, sympy.Max, sympy.core.relational.Relational, sympy.And, sympy.Or)


def xreplace_plain(e: sympy.Basic, rule: dict, memo: dict | None = None) -> sympy.Basic:
    """:func:`xreplace_shared`, except that clamps, relations and And/Or are rebuilt unevaluated.
    Evaluating them queries sympy's assumptions (``is_ge`` per pair of clamp arguments, a few
    milliseconds each, most of :func:`_resolve`'s time); what evaluation could do (drop a dominated
    clamp argument, decide a relation) only changes how the group's predicate is written, and the
    count is exact for any form (intervals decide what they prove, leaves are evaluated)."""
    memo = {} if memo is None else memo
    hit = memo.get(e)
    if hit is None:
        if e in rule:
            hit = rule[e]
        else:
            args = tuple(xreplace_plain(a, rule, memo) if isinstance(a, sympy.Basic) else a for a in e.args)
            if not any(x is not y for x, y in zip(args, e.args)):
                hit = e
            elif isinstance(e, _UNEVALUATED):
                hit = e.func(*args, evaluate=False)
            else:
                hit = e.func(*args)
        memo[e] = hit
    return hit


@functools.lru_cache(maxsize=512)
def _resolve(pred: sympy.Basic, nodes: tuple, choice: tuple[int, ...]) -> sympy.Basic:
    mapping = {node: node.args[c] for node, c in zip(nodes, choice) if c >= 0}
    for _ in range(len(mapping) + 1):        # nested clamps: resolve until nothing changes
        new = xreplace_plain(pred, mapping, {})
        if new == pred:
            break
        pred = new
    return pred


def _periods(pred: sympy.Basic) -> list[int]:
    """Candidate shift periods: 1, every integer denominator in the predicate, their lcm."""
    dens: set[int] = set()
    for e in sympy.preorder_traversal(pred):
        if isinstance(e, sympy.Mod) and e.args[1].is_Integer:
            dens.add(abs(int(e.args[1])))
        elif isinstance(e, sympy.Rational) and not e.is_Integer:
            dens.add(int(e.q))
        elif isinstance(e, (sympy.floor, sympy.ceiling)):
            d = sympy.fraction(sympy.together(e.args[0]))[1]
            if d.is_Integer:
                dens.add(abs(int(d)))
    dens.discard(0)
    out = sorted({1} | dens)
    if len(dens) > 1:
        out.append(int(np.lcm.reduce(sorted(dens))))
    return out


@functools.lru_cache(maxsize=512)
def period_of(pred: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol) -> int:
    """Smallest candidate ``T`` with ``pred(p + T, m + T) == pred(p, m)`` (proved: every relation of
    the predicate is unchanged, so the boolean combination is), else 0."""
    atoms = sorted(pred.atoms(sympy.core.relational.Relational), key=sympy.default_sort_key)
    if not atoms:
        return 1
    for t in _periods(pred):
        if all(_atom_invariant(a, p, m, t) for a in atoms):
            return t
    return 0


@functools.lru_cache(maxsize=2048)
def _atom_invariant(rel: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol, t: int) -> bool:
    """``lhs - rhs`` of the relation is unchanged by the shift (no relation is rebuilt: sympy's
    relational constructor queries assumptions and is slow)."""
    e = rel.lhs - rel.rhs
    shifted = xreplace_plain(e, {p: p + t, m: m + t})     # any form of e(p + t, m + t) proves as well
    return shifted == e or sympy.expand(shifted - e) == 0     # (equal: zero without expanding)


def count_each(pred, p, m, h, plo, phi, mlo, mhi) -> np.ndarray:
    """Exact points kept in each box, by interval-proved subdivision (see the module docstring)."""
    n0 = len(h)
    total = np.zeros(n0, np.int64)
    boxes = [np.asarray(x, np.int64) for x in (h, plo, phi, mlo, mhi)] + [np.arange(n0)]
    while len(boxes[0]):
        h, plo, phi, mlo, mhi, ids = boxes
        f64 = [x.astype(np.float64) for x in (h, plo, phi, mlo, mhi)]
        t, f = IntervalEvaluator({p: (f64[1], f64[2]), m: (f64[3], f64[4]), HEAD_INDEX: (f64[0], f64[0])}
                                 ).truth(pred)
        n = len(h)
        t, f = np.broadcast_to(t, (n,)), np.broadcast_to(f, (n,))
        np_, nm = phi - plo + 1, mhi - mlo + 1
        np.add.at(total, ids[t], (np_ * nm)[t])
        und = ~(t | f)
        leaf = und & (np_ <= _LEAF_SIDE) & (nm <= _LEAF_SIDE)
        if leaf.any():
            np.add.at(total, ids[leaf], _evaluate_leaves(pred, p, m, *(x[leaf] for x in (h, plo, phi, mlo, mhi))))
        split = und & ~leaf
        h, plo, phi, mlo, mhi, ids, np_, nm = (x[split] for x in (h, plo, phi, mlo, mhi, ids, np_, nm))
        along_p = np_ >= nm
        pmid = plo + np_ // 2 - 1
        mmid = mlo + nm // 2 - 1
        a = (h, plo, np.where(along_p, pmid, phi), mlo, np.where(along_p, mhi, mmid), ids)
        b = (h, np.where(along_p, pmid + 1, plo), phi, np.where(along_p, mlo, mmid + 1), mhi, ids)
        boxes = [np.concatenate([x, y]) for x, y in zip(a, b)]
    return total


def _evaluate_leaves(pred, p, m, h, plo, phi, mlo, mhi) -> np.ndarray:
    r = np.arange(_LEAF_SIDE)
    pp = plo[:, None, None] + r[None, :, None]
    mm = mlo[:, None, None] + r[None, None, :]
    inside = (pp <= phi[:, None, None]) & (mm <= mhi[:, None, None])
    v = evaluate(pred, {p: pp.astype(np.float64), m: mm.astype(np.float64),
                        HEAD_INDEX: h[:, None, None].astype(np.float64)})
    v = np.broadcast_to(np.asarray(v).astype(bool), inside.shape) & inside
    return v.sum(axis=(1, 2)).astype(np.int64)


__all__ = ["count_each", "count_tiles", "partial_points", "period_of", "shift_invariant", "xreplace_plain",
           "xreplace_shared"]
