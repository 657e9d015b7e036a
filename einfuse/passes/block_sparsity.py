"""Block sparsity from the iteration-space constraint: classify (query tile, key tile) pairs.

A pair is EMPTY when no (p, m) of the tile pair satisfies the score constraint (a kernel skips it),
FULL when all do (a kernel drops the mask arithmetic) and PARTIAL otherwise. No dense mask is built:

1. **interval reasoning** bounds every affine / ``floor`` / ``Mod`` / ``Min`` / ``Max`` sub-expression of
   the constraint over each tile's index box (all boxes at once, :mod:`einfuse.passes.intervals`) and
   decides the conjunctions and disjunctions in three-valued logic: exact for causal, sliding-window,
   ALiBi-style and most neighbourhood tiles, and never wrong (EMPTY/FULL only when proved);
2. **witnesses**: an undecided pair where sample points (corners, edge midpoints, centre) give both
   true and false is PARTIAL;
3. **exact evaluation** of whatever is still undecided, a tile row at a time (vectorised NumPy over
   the undecided key tiles of that row), so arbitrary user predicates are classified exactly too.

The result is a pure function of (constraint, sizes, tiles) and is cached; the arrays are read-only
so a cached map can be shared by every kernel launch. For neighbourhood attention each query tile
gets its key-tile range (the half-open span of non-EMPTY key tiles), which a fused neighbourhood
kernel iterates instead of the whole key sequence.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, index_symbol, size_symbol
from einfuse.ir.symeval import evaluate
from einfuse.passes.intervals import IntervalEvaluator

EMPTY, PARTIAL, FULL = 0, 1, 2
_CHUNK = 1 << 22  # predicate points evaluated at once on the exact path


@dataclass(frozen=True, eq=False)
class TileMap:
    """Tile classification: ``kinds[head, q_tile, k_tile]`` in {EMPTY, PARTIAL, FULL}.

    ``kinds`` has one head (``Hm = 1``) unless the constraint depends on the head index.
    ``kv_ranges[head, q_tile] = (lo, hi)``: half-open range of key tiles that are not EMPTY
    (``(0, 0)`` for a query tile that sees no key). ``method`` is ``"analytic"`` when interval
    reasoning and witnesses decided every pair, ``"exact"`` when ``exact_tiles`` pairs needed exact
    evaluation.
    """

    kinds: np.ndarray
    kv_ranges: np.ndarray
    tile_q: int
    tile_k: int
    n_q: int
    n_k: int
    method: str
    exact_tiles: int
    constraint: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.kinds.shape

    @property
    def skipped_fraction(self) -> float:
        """Fraction of tile pairs that are EMPTY (a kernel never visits them)."""
        return float(np.mean(self.kinds == EMPTY)) if self.kinds.size else 0.0

    @property
    def full_fraction(self) -> float:
        return float(np.mean(self.kinds == FULL)) if self.kinds.size else 0.0

    @property
    def partial_fraction(self) -> float:
        return float(np.mean(self.kinds == PARTIAL)) if self.kinds.size else 0.0

    def kv_tile_range(self, q_tile: int, head: int = 0) -> tuple[int, int]:
        """Half-open range of key tiles that query tile ``q_tile`` (of ``head``) must visit."""
        hm = 0 if self.kinds.shape[0] == 1 else head
        lo, hi = self.kv_ranges[hm, q_tile]
        return int(lo), int(hi)

    def __str__(self) -> str:
        hm, nq, nk = self.kinds.shape
        heads = f", {hm} head patterns" if hm > 1 else ""
        return (f"{nq} x {nk} tiles of {self.tile_q} x {self.tile_k} "
                f"({self.n_q} queries, {self.n_k} keys{heads}): "
                f"{self.skipped_fraction:.2%} skipped, {self.full_fraction:.2%} full, "
                f"{self.partial_fraction:.2%} partial [{self.method}]")

    def render(self, head: int = 0) -> str:
        """ASCII picture (``.`` empty, ``+`` partial, ``#`` full), one line per query tile."""
        chars = np.array([".", "+", "#"])
        return "\n".join("".join(chars[row]) for row in self.kinds[0 if self.kinds.shape[0] == 1 else head])


def _vars(c: Cascade, rank: str) -> set[sympy.Symbol]:
    """The index of ``rank`` and of every rank it is partitioned into."""
    out, todo = {index_symbol(rank)}, [rank]
    while todo:
        part = c.partition_of(todo.pop())
        if part is not None:
            out |= {index_symbol(part.outer), index_symbol(part.inner)}
            todo += [part.outer, part.inner]
    return out


def _flatten(c: Cascade, pred: sympy.Basic) -> sympy.Basic:
    """Rewrite tile indices back to flat ones (``m0 -> m - m1*M0``, after which ``m1`` cancels)."""
    for _ in range(len(c.partitions) + 1):
        changed = False
        for part in c.partitions:
            inner, outer = index_symbol(part.inner), index_symbol(part.outer)
            if inner in pred.free_symbols:
                pred = pred.subs(inner, index_symbol(part.parent) - outer * size_symbol(part.inner))
                changed = True
        if not changed:
            break
    return pred


def score_constraint(c: Cascade, q_rank: str = "P", k_rank: str = "M",
                     einsum: str | None = None) -> sympy.Basic:
    """The score constraint over flat ``p``, ``m`` (and ``h``): the ``where`` of ``einsum``, or by
    default of the first Einsum over both ranks that feeds the max-reduction over the key rank (the
    softmax score), else of the first Einsum over both ranks with a constraint."""
    qv, kv = _vars(c, q_rank), _vars(c, k_rank)
    cands = [e for e in c.einsums if e.where is not None
             and qv & set(c.iteration_vars(e)) and kv & set(c.iteration_vars(e))]
    if einsum is not None:
        named = [e for e in c.einsums if e.name == einsum]
        if not named:
            raise PassError(f"block sparsity: no Einsum {einsum} in {c.name}")
        cands = [e for e in named if e.where is not None]
    else:
        g = c.tensor_graph()
        import networkx as nx

        for e in c.einsums:
            if e.reduce == "max" and kv & set(c.reduced_vars(e)):
                feeding = nx.ancestors(g, e.name) | {e.name}
                ahead = [x for x in cands if x.name in feeding]
                cands = ahead or cands
                break
    if not cands:
        return sympy.true
    pred = _flatten(c, cands[0].where)
    allowed = {index_symbol(q_rank), index_symbol(k_rank), HEAD_INDEX}
    stray = sorted(str(s) for s in pred.free_symbols if s.name[0].islower() and s not in allowed)
    if BATCH_INDEX in pred.free_symbols:
        raise PassError(f"block sparsity: the constraint of {cands[0].name} depends on the batch index b")
    if stray:
        raise PassError(f"block sparsity: the constraint of {cands[0].name} depends on {', '.join(stray)}, "
                        f"not only on {q_rank.lower()}, {k_rank.lower()} and h")
    return pred


def classify_tiles(c: Cascade, sizes: Mapping[str, int], tile_q: int, tile_k: int, q_rank: str = "P",
                   k_rank: str = "M", einsum: str | None = None, method: str = "auto") -> TileMap:
    """Classify every (query tile, key tile) pair of the score constraint (see the module docstring).

    ``sizes`` binds ``P`` and ``M`` (and ``H`` when the constraint depends on the head, and any size
    the constraint mentions that the cascade's params do not give). ``method="exact"`` skips the
    analysis and evaluates every pair (a cross-check).
    """
    if method not in ("auto", "exact"):
        raise PassError(f"block sparsity: method must be auto or exact, got {method!r}")
    for name, t in (("tile_q", tile_q), ("tile_k", tile_k)):
        if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or t < 1:
            raise PassError(f"block sparsity: {name} must be a positive integer, got {t!r}")
    for r in (q_rank, k_rank):
        if r not in c.ranks:
            raise PassError(f"block sparsity: {c.name} has no rank {r} (ranks: {', '.join(c.ranks)})")
    per_cascade = _CONSTRAINTS.setdefault(c, {})
    key = (q_rank, k_rank, einsum)
    if key not in per_cascade:
        per_cascade[key] = (score_constraint(c, q_rank, k_rank, einsum), c.ranks[q_rank].extent,
                            c.ranks[k_rank].extent)
    pred, q_ext, k_ext = per_cascade[key]
    for r in (q_rank, k_rank):
        if r in sizes and (isinstance(sizes[r], bool) or not float(sizes[r]).is_integer() or sizes[r] < 1):
            raise PassError(f"block sparsity: {r} = {sizes[r]!r}; the number of positions must be an integer >= 1")
    env = tuple(sorted({**{k: float(v) for k, v in c.params.items()},
                        **{k: float(v) for k, v in sizes.items()}}.items()))
    bound, P, M, heads = _bind(pred, q_ext, k_ext, env, q_rank, k_rank)
    return _classify(bound, P, M, heads, int(tile_q), int(tile_k), index_symbol(q_rank),
                     index_symbol(k_rank), method == "exact")


# constraint of each cascade seen (cascades are immutable values; keyed by identity, dropped with them)
_CONSTRAINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=256)
def _bind(pred: sympy.Basic, q_ext: sympy.Expr, k_ext: sympy.Expr, env: tuple[tuple[str, float], ...],
          q_rank: str, k_rank: str) -> tuple[sympy.Basic, int, int, int]:
    """Substitute the sizes into the constraint and the two extents (cached: sympy is slow)."""
    values = {size_symbol(k): sympy.Integer(int(v)) if float(v).is_integer() else sympy.Rational(str(v))
              for k, v in env}
    extents = []
    for r, ext in ((q_rank, q_ext), (k_rank, k_ext)):
        ext = sympy.sympify(ext).subs(values)
        if ext.free_symbols:
            raise PassError(f"block sparsity: size of rank {r} unknown; pass it in sizes (e.g. {r}=4096)")
        extents.append(int(ext))
    bound = pred.subs(values)
    heads = 1
    if HEAD_INDEX in bound.free_symbols:
        if "H" not in dict(env):
            raise PassError("block sparsity: the constraint depends on the head index; pass H in sizes")
        heads = int(dict(env)["H"])
    missing = sorted(s.name for s in bound.free_symbols if s.name[0].isupper())
    if missing:
        raise PassError(f"block sparsity: the constraint needs sizes {', '.join(missing)}; "
                        "pass them in sizes")
    return bound, extents[0], extents[1], heads


@functools.lru_cache(maxsize=256)
def _classify(pred: sympy.Basic, P: int, M: int, heads: int, tq: int, tk: int, p: sympy.Symbol,
              m: sympy.Symbol, force_exact: bool) -> TileMap:
    nq, nk = math.ceil(P / tq), math.ceil(M / tk)
    shape = (heads, nq, nk)
    plo = (np.arange(nq, dtype=np.float64) * tq).reshape(1, nq, 1)
    phi = np.minimum(plo + tq, P) - 1
    mlo = (np.arange(nk, dtype=np.float64) * tk).reshape(1, 1, nk)
    mhi = np.minimum(mlo + tk, M) - 1
    hs = np.arange(heads, dtype=np.float64).reshape(heads, 1, 1)
    kinds = np.full(shape, PARTIAL, np.int8)
    if force_exact:
        undecided = np.ones(shape, bool)
    else:
        t, f = IntervalEvaluator({p: (plo, phi), m: (mlo, mhi), HEAD_INDEX: (hs, hs)}).truth(pred)
        t, f = np.broadcast_to(t, shape), np.broadcast_to(f, shape)
        kinds[t] = FULL
        kinds[f] = EMPTY
        undecided = ~(t | f)
        if undecided.any():
            undecided &= ~_witnessed_partial(pred, p, m, (plo, phi), (mlo, mhi), hs, shape)
    exact = int(undecided.sum())
    if exact:
        _exact(pred, p, m, P, M, tq, tk, kinds, undecided)
    kinds.setflags(write=False)
    ranges = _ranges(kinds)
    return TileMap(kinds, ranges, tq, tk, P, M, "exact" if exact else "analytic", exact, str(pred))


def _samples(box: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """Sample points of each interval: both ends, their neighbours (small-period ``Mod`` patterns)
    and the middle, clipped to the box."""
    lo, hi = box
    pts = [lo, lo + 1, lo + 2, np.floor((lo + hi) / 2), hi - 1, hi]
    return [np.clip(x, lo, hi) for x in pts]


def _witnessed_partial(pred, p, m, pbox, mbox, hs, shape) -> np.ndarray:
    """Pairs where sample points of the box take both truth values (so PARTIAL, proved)."""
    seen_t = np.zeros(shape, bool)
    seen_f = np.zeros(shape, bool)
    for pp in _samples(pbox):
        for mm in _samples(mbox):
            v = np.broadcast_to(evaluate(pred, {p: pp, m: mm, HEAD_INDEX: hs}).astype(bool), shape)
            seen_t |= v
            seen_f |= ~v
    return seen_t & seen_f


def _exact(pred, p, m, P, M, tq, tk, kinds, undecided) -> None:
    """Classify the undecided pairs by evaluating the predicate on them, one tile row at a time."""
    heads = kinds.shape[0]
    for hd in range(heads):
        for i in np.nonzero(undecided[hd].any(axis=1))[0]:
            js = np.nonzero(undecided[hd, i])[0]
            p0, p1 = i * tq, min((i + 1) * tq, P)
            pp = np.arange(p0, p1, dtype=np.float64)[:, None]
            per_chunk = max(1, _CHUNK // (tk * (p1 - p0)))
            for s in range(0, len(js), per_chunk):
                part = js[s:s + per_chunk]
                starts = part * tk
                lens = np.minimum(starts + tk, M) - starts
                offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
                mm = (np.repeat(starts - offsets, lens) + np.arange(lens.sum())).astype(np.float64)
                v = evaluate(pred, {p: pp, m: mm[None, :], HEAD_INDEX: np.float64(hd)})
                v = np.broadcast_to(v.astype(bool), (p1 - p0, mm.size))
                counts = np.add.reduceat(v.sum(axis=0), offsets)
                area = lens * (p1 - p0)
                kinds[hd, i, part] = np.where(counts == 0, EMPTY, np.where(counts == area, FULL, PARTIAL))


def _ranges(kinds: np.ndarray) -> np.ndarray:
    nonempty = kinds != EMPTY
    any_ = nonempty.any(axis=2)
    nk = kinds.shape[2]
    lo = np.where(any_, np.argmax(nonempty, axis=2), 0)
    hi = np.where(any_, nk - np.argmax(nonempty[:, :, ::-1], axis=2), 0)
    out = np.stack([lo, hi], axis=-1).astype(np.int64)
    out.setflags(write=False)
    return out


def dense_tile_kinds(pred: sympy.Basic, P: int, M: int, tq: int, tk: int, heads: int = 1,
                     p: sympy.Symbol | None = None, m: sympy.Symbol | None = None) -> np.ndarray:
    """Reference classification from the dense ``P x M`` mask (for tests and small sizes only)."""
    p = p or index_symbol("P")
    m = m or index_symbol("M")
    nq, nk = math.ceil(P / tq), math.ceil(M / tk)
    out = np.empty((heads, nq, nk), np.int8)
    for hd in range(heads):
        mask = np.broadcast_to(evaluate(pred, {p: np.arange(P, dtype=np.float64)[:, None],
                                               m: np.arange(M, dtype=np.float64)[None, :],
                                               HEAD_INDEX: np.float64(hd)}).astype(bool), (P, M))
        for i in range(nq):
            for j in range(nk):
                blk = mask[i * tq:(i + 1) * tq, j * tk:(j + 1) * tk]
                out[hd, i, j] = EMPTY if not blk.any() else FULL if blk.all() else PARTIAL
    return out


__all__ = ["EMPTY", "FULL", "PARTIAL", "TileMap", "classify_tiles", "dense_tile_kinds", "score_constraint"]
