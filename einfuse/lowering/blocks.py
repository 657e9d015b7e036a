"""Block tables: for each query tile, which key tiles to visit, split into FULL and PARTIAL.

The kernel never evaluates the mask on a FULL tile (every pair kept) and never visits an EMPTY one;
only PARTIAL tiles run the generated predicate. This mirrors FlexAttention's BlockMask
(``full_kv_num_blocks/full_kv_indices`` and ``kv_num_blocks/kv_indices``) but is derived from the
cascade's constraint rather than from a user callback:

* contiguous tiles: :func:`einfuse.passes.block_sparsity.classify_tiles` classifies tile pairs
  analytically where it can (bands, windows), exactly otherwise;
* box tile orders (and any case classify_tiles cannot take): every (query, key) pair is checked on
  the tensors' device with the same predicate (:mod:`torch_eval`), chunk by chunk.

A key tile that runs past the key length is never FULL (full tiles load without bounds checks).
When every query tile's list is one run of consecutive tiles (causal: ``0..i`` full, the diagonal
partial) the kernel walks the run instead of reading indices (``*_CONTIG``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.lowering.tile_order import TileOrder

EMPTY, PARTIAL, FULL = 0, 1, 2
_CHUNK = 1 << 23  # (query, key) pairs checked at once by the dense classifier


@dataclass(frozen=True)
class BlockTables:
    """Per (mask head, query tile) lists of key tiles. ``dense`` tables have no lists: key tiles
    ``0 .. n_full-1`` are full and ``n_full .. n_k_tiles-1`` partial for every query tile."""

    dense: bool
    n_k_tiles: int
    n_full: int = 0
    full_num: object = None
    full_idx: object = None
    part_num: object = None
    part_idx: object = None
    full_contig: bool = False
    part_contig: bool = False
    head_dependent: bool = False
    visited_fraction: float = 1.0
    method: str = "dense"
    k_box: tuple[int, int, int] | None = None  # span tables: the key box extents (indices are origins)

    def cost(self, block_n: int, partial_weight: float = 1.25) -> float:
        """Key positions visited per query tile, partial tiles weighted for their mask arithmetic."""
        if self.dense:
            return float(self.n_k_tiles * block_n)
        nq = self.full_num.numel()
        return float(self.full_num.sum() + partial_weight * self.part_num.sum()) * block_n / max(nq, 1)

    def kernel_args(self, dummy: object) -> tuple:
        """Pointers and strides in the kernel's order; the head strides are 0 when the mask does not
        depend on the head (one table shared by all heads)."""
        if self.dense:
            return (dummy, dummy, dummy, dummy, 0, 0, 0, 0, 0)
        hs = 1 if self.head_dependent else 0
        return (self.full_num, self.full_idx, self.part_num, self.part_idx, hs * self.full_num.stride(0),
                hs * self.full_idx.stride(0), self.full_idx.stride(1),
                hs * self.part_idx.stride(0), self.part_idx.stride(1))


def dense_tables(n_kv: int, block_n: int, masked: bool) -> BlockTables:
    """No table: all key tiles visited; without a mask only the ragged last tile is partial."""
    nk = -(-n_kv // block_n)
    n_full = 0 if masked else n_kv // block_n
    return BlockTables(True, nk, n_full, method="dense" if not masked else "all-partial")


def build_tables(cascade, mask: sympy.Basic, sizes: dict[str, int], n_q: int, n_kv: int, heads: int,
                 block_m: int, block_n: int, q_order: TileOrder, k_order: TileOrder,
                 device: object, captured: dict | None = None) -> BlockTables:
    """Classify every (query tile, key tile) pair of ``mask`` and pack the lists for the kernel.

    A mask that reads captured tensors (``doc_ids[q] == doc_ids[kv]``) is classified on their values
    (``captured``: read function -> tensor), pair by pair on the tensors' device, the way
    FlexAttention's ``create_block_mask`` evaluates a mask_mod: tiles across documents are EMPTY."""
    import torch

    if BATCH_INDEX in mask.free_symbols:
        return dense_tables(n_kv, block_n, masked=True)  # batch-dependent masks: no skipping
    head_dep = HEAD_INDEX in mask.free_symbols
    kinds, method = None, "dense-check"
    if q_order.is_flat and k_order.is_flat and cascade is not None and not captured:
        kinds = _classify_with_pass(cascade, mask, sizes, block_m, block_n, heads if head_dep else 1)
        method = "classify_tiles"
    if kinds is None:
        kinds = _classify_dense(mask, sizes, n_q, n_kv, heads if head_dep else 1, block_m, block_n,
                                q_order, k_order, device, captured)
        method = "dense-check"
    if not isinstance(kinds, torch.Tensor):
        kinds = torch.as_tensor(np.array(kinds))  # a copy: the pass's cached maps are read-only
    kinds = kinds.to(device=device, dtype=torch.int8)
    if n_kv % block_n and k_order.is_flat:  # a ragged last key tile must take the bounds-checked path
        last = kinds[..., -1]
        kinds[..., -1] = torch.where(last == FULL, torch.full_like(last, PARTIAL), last)
    full_num, full_idx, full_contig = pack_lists(kinds == FULL)
    part_num, part_idx, part_contig = pack_lists(kinds == PARTIAL)
    visited = float((kinds != EMPTY).float().mean()) if kinds.numel() else 0.0
    return BlockTables(False, kinds.shape[-1], 0, full_num, full_idx, part_num, part_idx,
                       full_contig, part_contig, head_dep, visited, method)


def pack_lists(sel):
    """(counts, indices padded to the longest list, whether every list is one consecutive run)."""
    import torch

    counts = sel.sum(-1, dtype=torch.int32)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    order = torch.sort((~sel).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    idx = order.to(torch.int32).contiguous()
    ramp = torch.arange(width, device=idx.device, dtype=torch.int32)
    used = ramp < counts[..., None]
    contig = bool(((idx == idx[..., :1] + ramp) | ~used).all())
    return counts.contiguous(), idx, contig


def _classify_with_pass(cascade, mask: sympy.Basic, sizes: dict[str, int], block_m: int, block_n: int,
                        heads: int):
    """Tile kinds from the block-sparsity pass, or None when it is not available for this cascade or
    classifies another constraint than the kernel's mask (then the dense check decides)."""
    try:
        from einfuse.passes.block_sparsity import classify_tiles, score_constraint
    except ImportError:
        return None
    from einfuse.errors import EinfuseError

    try:
        if score_constraint(cascade) != mask:
            return None
        tm = classify_tiles(cascade, dict(sizes), block_m, block_n)
    except (EinfuseError, NotImplementedError):
        return None
    kinds = tm.kinds
    if kinds.shape[0] != heads:
        if kinds.shape[0] == 1:
            kinds = np.broadcast_to(kinds, (heads,) + kinds.shape[1:])
        else:
            return None
    return kinds


def _classify_dense(mask: sympy.Basic, sizes: dict[str, int], n_q: int, n_kv: int, heads: int,
                    block_m: int, block_n: int, q_order: TileOrder, k_order: TileOrder, device: object,
                    captured: dict | None = None):
    """Exact tile kinds by checking every (query, key) pair, a chunk of query tiles at a time."""
    import torch

    from einfuse.ir.ranks import KEY_INDEX as m_sym
    from einfuse.ir.ranks import QUERY_INDEX as p_sym
    from einfuse.lowering import torch_eval

    bound = mask.subs({size_symbol(k): v for k, v in sizes.items()})
    qpos, qok = q_order.positions(n_q, block_m, device)
    kpos, kok = k_order.positions(n_kv, block_n, device)
    nq, nk = qpos.shape[0], kpos.shape[0]
    out = torch.empty((heads, nq, nk), dtype=torch.int8, device=device)
    kpos4 = kpos.double()[None, None]            # (1, 1, nk, BN)
    kok4 = kok[None, None]
    k_all = kok.all(-1)[None]                     # (1, nk)
    step = max(1, _CHUNK // max(block_m * nk * block_n, 1))
    for h in range(heads):
        for s in range(0, nq, step):
            qp = qpos[s:s + step].double()[:, :, None, None]   # (c, BM, 1, 1)
            qv = qok[s:s + step][:, :, None, None]
            env = {p_sym: qp, m_sym: kpos4, HEAD_INDEX: float(h), **(captured or {})}
            keep = torch.as_tensor(torch_eval.evaluate(bound, env), device=device)
            keep = torch.broadcast_to(keep, (qp.shape[0], block_m, nk, block_n)) & qv & kok4
            any_ = keep.any(dim=3).any(dim=1)
            all_ = (keep | ~qv).all(dim=3).all(dim=1) & k_all
            out[h, s:s + step] = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)
    return out
