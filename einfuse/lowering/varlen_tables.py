"""Block tables of a packed variable-length batch: every sequence's query tiles in one work list.

A packed batch (FlashAttention's ``cu_seqlens`` convention) holds sequences of different lengths
back to back. Each sequence is attention on its own: query ``i`` and key ``j`` of sequence ``s``
are at positions ``i`` and ``j`` counted from that sequence's start, and the mask and score see the
sequence's own lengths as ``P`` and ``M`` (so the built-ins' bottom-right alignment holds per
sequence) and its index as the batch index ``b``. A kernel program therefore works on one *item*,
a query tile of one sequence, and visits only key tiles of that sequence.

Which key tiles, and whether each needs the mask (FULL, PARTIAL, EMPTY as in
:mod:`einfuse.lowering.blocks`), is decided here for all items at once: the mask is bounded over
every (item, key tile) box by interval reasoning (:class:`einfuse.passes.intervals.IntervalEvaluator`,
with ``P``, ``M`` and ``b`` bound per item rather than substituted), then sample points and, for
what is still undecided, exact evaluation. One vectorised pass over the batch rather than one
classification per distinct length, because in serving every call brings new lengths.

Items are ordered heaviest first (most key tiles), so a causal batch's long rows start early and
short ones fill the tail (longest-processing-time scheduling; FlashAttention reverses its causal
tiles for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, KEY_INDEX, QUERY_INDEX, size_symbol
from einfuse.lowering.blocks import EMPTY, FULL, PARTIAL
from einfuse.passes.block_sparsity import _samples
from einfuse.passes.intervals import IntervalEvaluator

_CHUNK = 1 << 22  # (query, key) pairs evaluated at once on the exact path
_P, _M = size_symbol("P"), size_symbol("M")


@dataclass(frozen=True)
class VarlenTables:
    """The work list of a packed batch and each item's key tiles, as torch tensors on one device.

    ``items[i] = (sequence, query tile)``; ``cu_q``/``cu_k`` are the offsets the kernel reads;
    ``full_num[hm, i]``/``full_idx[hm, i, :]`` (and ``part_*``) list item ``i``'s FULL (PARTIAL) key
    tiles for mask head ``hm`` (one row shared by all heads unless the mask reads ``h``). A
    ``*_contig`` list is one run of consecutive tiles and keeps only its first index.
    """

    items: object
    cu_q: object
    cu_k: object
    full_num: object
    full_idx: object
    part_num: object
    part_idx: object
    full_contig: bool
    part_contig: bool
    head_dependent: bool
    n_items: int
    visited_fraction: float

    def kernel_args(self) -> tuple:
        """Pointers and strides in the varlen kernel's order (head strides 0 when shared)."""
        hs = 1 if self.head_dependent else 0
        return (self.full_num, self.full_idx, self.part_num, self.part_idx, hs * self.full_num.stride(0),
                hs * self.full_idx.stride(0), self.full_idx.stride(1), hs * self.part_idx.stride(0),
                self.part_idx.stride(1))


def tile_kinds(mask: sympy.Basic | None, lens_q: np.ndarray, lens_k: np.ndarray, block_m: int,
               block_n: int, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """``(items, kinds)``: the (sequence, query tile) of every item of a batch with these lengths
    (sequences without queries have none), and ``kinds[hm, item, key tile]`` over the longest key
    sequence's tiles (EMPTY past an item's own keys). ``mask`` is over ``p``, ``m``, ``P``, ``M``,
    ``b`` and ``h`` with every other size bound; None keeps every pair."""
    nqt = -(-lens_q // block_m)
    seq = np.repeat(np.arange(len(lens_q)), nqt)
    first = np.repeat(np.cumsum(nqt) - nqt, nqt)
    tile = np.arange(len(seq)) - first
    items = np.stack([seq, tile], axis=1).astype(np.int64)
    P = lens_q[seq].astype(np.float64)[None, :, None]            # (1, items, 1)
    M = lens_k[seq].astype(np.float64)[None, :, None]
    nk = max(int(-(-lens_k.max() // block_n)) if len(lens_k) else 0, 1)
    plo = (tile * block_m).astype(np.float64)[None, :, None]
    phi = np.minimum(plo + block_m, P) - 1
    mlo = (np.arange(nk) * block_n).astype(np.float64)[None, None, :]
    mhi = np.minimum(mlo + block_n, M) - 1
    exists = mlo < M                                              # key tile inside the sequence
    ragged = mhi < mlo + block_n - 1                              # runs past its keys: never FULL
    head_dep = mask is not None and HEAD_INDEX in mask.free_symbols
    hm = heads if head_dep else 1
    shape = (hm, len(seq), nk)
    if mask is None:
        kinds = np.where(exists, np.where(ragged, PARTIAL, FULL), EMPTY)
        return items, np.broadcast_to(kinds, shape).astype(np.int8)
    hs = np.arange(hm, dtype=np.float64).reshape(hm, 1, 1)
    b = seq.astype(np.float64)[None, :, None]
    boxes = {QUERY_INDEX: (plo, phi), KEY_INDEX: (mlo, mhi), HEAD_INDEX: (hs, hs), BATCH_INDEX: (b, b),
             _P: (P, P), _M: (M, M)}
    t, f = (np.broadcast_to(x, shape) for x in IntervalEvaluator(boxes).truth(mask))
    kinds = np.full(shape, PARTIAL, np.int8)
    kinds[t] = FULL
    kinds[f] = EMPTY
    hd, it, kt = np.nonzero(~(t | f) & exists)  # undecided by the bounds: sample, then evaluate
    if len(hd):
        flat = {QUERY_INDEX: (plo[0, it, 0], phi[0, it, 0]), KEY_INDEX: (mlo[0, 0, kt], mhi[0, it, kt]),
                HEAD_INDEX: hd.astype(np.float64), BATCH_INDEX: b[0, it, 0], _P: P[0, it, 0], _M: M[0, it, 0]}
        left = ~_witnessed(mask, flat)
        if left.any():
            sub = {s: (v[0][left], v[1][left]) if isinstance(v, tuple) else v[left] for s, v in flat.items()}
            kinds[hd[left], it[left], kt[left]] = _exact(mask, sub, block_m, block_n)
    kinds[~np.broadcast_to(exists, shape)] = EMPTY
    kinds[(kinds == FULL) & np.broadcast_to(ragged, shape)] = PARTIAL
    return items, kinds


def _witnessed(mask: sympy.Basic, flat: dict) -> np.ndarray:
    """Which undecided pairs take both truth values at sample points of their box (PARTIAL, proved);
    ``flat`` holds one entry per pair (boxes for ``p`` and ``m``, values for the rest)."""
    from einfuse.ir.symeval import evaluate

    env = {s: v for s, v in flat.items() if not isinstance(v, tuple)}
    seen_t = np.zeros(len(flat[_P]), bool)
    seen_f = np.zeros(len(flat[_P]), bool)
    for pp in _samples(flat[QUERY_INDEX]):
        for mm in _samples(flat[KEY_INDEX]):
            v = np.broadcast_to(evaluate(mask, {**env, QUERY_INDEX: pp, KEY_INDEX: mm}).astype(bool), seen_t.shape)
            seen_t |= v
            seen_f |= ~v
    return seen_t & seen_f


def _exact(mask: sympy.Basic, flat: dict, block_m: int, block_n: int) -> np.ndarray:
    """The kinds of the pairs in ``flat`` (as in :func:`_witnessed`) from every point of each."""
    from einfuse.ir.symeval import evaluate

    n = len(flat[_P])
    out = np.empty(n, np.int8)
    per = max(1, _CHUNK // (block_m * block_n))
    offs_m = np.arange(block_m, dtype=np.float64)[None, :, None]
    offs_n = np.arange(block_n, dtype=np.float64)[None, None, :]
    for s in range(0, n, per):
        cut = slice(s, s + per)
        col = {sym: (v[0] if isinstance(v, tuple) else v)[cut][:, None, None] for sym, v in flat.items()}
        pp = col[QUERY_INDEX] + offs_m
        mm = col[KEY_INDEX] + offs_n
        inside = (pp < col[_P]) & (mm < col[_M])
        keep = np.broadcast_to(evaluate(mask, {**col, QUERY_INDEX: pp, KEY_INDEX: mm}).astype(bool),
                               inside.shape) & inside
        n_keep = keep.sum(axis=(1, 2))
        area = inside.sum(axis=(1, 2))
        out[cut] = np.where(n_keep == 0, EMPTY, np.where(n_keep == area, FULL, PARTIAL))
    return out


def pack(items: np.ndarray, kinds: np.ndarray, cu_q: np.ndarray, cu_k: np.ndarray, device: object,
         partial_weight: float = 1.25) -> VarlenTables:
    """Order the items heaviest first and pack their lists into one int32 buffer, copied to
    ``device`` at once (one transfer per new batch)."""
    import torch

    work = ((kinds == FULL).sum(axis=(0, 2)) + partial_weight * (kinds == PARTIAL).sum(axis=(0, 2)))
    order = np.argsort(-work, kind="stable")
    items, kinds = items[order], kinds[:, order]
    full_num, full_idx, full_contig = _lists(kinds == FULL)
    part_num, part_idx, part_contig = _lists(kinds == PARTIAL)
    parts = [items, cu_q, cu_k, full_num, full_idx, part_num, part_idx]
    flat = torch.from_numpy(np.concatenate([x.reshape(-1) for x in parts]).astype(np.int32)).to(device)
    views, at = [], 0
    for x in parts:
        views.append(flat[at:at + x.size].view(x.shape))
        at += x.size
    visited = float((kinds != EMPTY).mean()) if kinds.size else 0.0
    return VarlenTables(*views, full_contig, part_contig, kinds.shape[0] > 1, len(items), visited)


def _lists(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(counts, indices padded to the longest list, whether every list is one consecutive run; then
    only each run's first index is kept), as :func:`einfuse.lowering.blocks.pack_lists` in NumPy."""
    counts = sel.sum(-1)
    width = max(int(counts.max()) if counts.size else 0, 1)
    idx = np.argsort(~sel, axis=-1, kind="stable")[..., :width]
    ramp = np.arange(width)
    contig = bool(((idx == idx[..., :1] + ramp) | (ramp >= counts[..., None])).all())
    return counts, (idx[..., :1] if contig else idx), contig


__all__ = ["VarlenTables", "pack", "tile_kinds"]
