"""Block tables whose key tiles are boxes laid over each query tile's key span (:class:`SpanBoxes`).

For every query tile (a box of the token grid) the mask decides which keys any of its queries keeps;
their bounding box per grid axis is the tile's *key span*. One box shape for all tiles is chosen to
cover the spans with the fewest tiles (extents need not be powers of two, their product is at most
BLOCK_N), each span is cut into boxes from its first key, and every (query tile, box) pair is
classified FULL / PARTIAL / EMPTY by checking all its (query, key) pairs with the kernel's own
predicate, exactly as :func:`blocks._classify_dense` does for fixed tiles. The tables hold each box's
first token (its origin) where fixed tiles hold a tile index.
"""

from __future__ import annotations

import itertools
import math

import sympy

from einfuse.ir.ranks import HEAD_INDEX, size_symbol
from einfuse.lowering.blocks import EMPTY, FULL, PARTIAL, BlockTables, pack_lists
from einfuse.lowering.tile_order import TileOrder

_CHUNK = 1 << 23  # (query, key) pairs checked at once


def build_span_tables(mask: sympy.Basic, sizes: dict[str, int], n_q: int, n_kv: int, heads: int,
                      block_m: int, block_n: int, q_order: TileOrder, grid: tuple[int, ...],
                      device: object) -> BlockTables:
    """Tables for query tiles of ``q_order`` and key boxes over their spans on ``grid``
    (``n_kv == prod(grid)``); ``heads`` is 1 unless the mask depends on the head."""
    import torch

    if math.prod(grid) != n_kv:
        raise ValueError(f"span tables need N_kv = prod(grid) = {math.prod(grid)}, got {n_kv}")
    bound = mask.subs({size_symbol(k): v for k, v in sizes.items()})
    qpos, qok = q_order.positions(n_q, block_m, device)
    head_dep = HEAD_INDEX in bound.free_symbols
    n_heads = heads if head_dep else 1
    coords = _coords(torch.arange(n_kv, device=device), grid)          # (nd, n_kv)
    lo, length = [], []
    for h in range(n_heads):
        l_h, n_h = _spans(bound, qpos, qok, coords, n_kv, h)
        lo.append(l_h)
        length.append(n_h)
    lo, length = torch.stack(lo), torch.stack(length)                  # (heads, nt, nd)
    box = choose_box(length.reshape(-1, len(grid)), block_n)
    kinds, origins = [], []
    for h in range(n_heads):
        k_h, o_h = _classify(bound, qpos, qok, lo[h], length[h], box, grid, block_n, h)
        kinds.append(k_h)
        origins.append(o_h)
    width = max(k.shape[-1] for k in kinds)
    kinds = torch.stack([torch.nn.functional.pad(k, (0, width - k.shape[-1]), value=EMPTY) for k in kinds])
    origins = torch.stack([torch.nn.functional.pad(o, (0, width - o.shape[-1])) for o in origins])
    full_num, full_sel, _ = pack_lists(kinds == FULL)
    part_num, part_sel, _ = pack_lists(kinds == PARTIAL)
    full_idx = torch.gather(origins, -1, full_sel.long()).to(torch.int32).contiguous()
    part_idx = torch.gather(origins, -1, part_sel.long()).to(torch.int32).contiguous()
    visited = float((kinds != EMPTY).float().sum(-1).mean()) * block_n / max(n_kv, 1)
    return BlockTables(False, width, 0, full_num, full_idx, part_num, part_idx, False, False, head_dep,
                       visited, "span", k_box=(1,) * (3 - len(grid)) + tuple(box))


def choose_box(lengths, block_n: int) -> tuple[int, ...]:
    """The box extents (product <= block_n) that cover all spans with the fewest boxes; ties go to
    the longer innermost extent (contiguous keys), then to fuller tiles."""
    import torch

    nd = lengths.shape[-1]
    used = lengths[(lengths > 0).all(-1)]
    if used.numel() == 0:
        return (1,) * (nd - 1) + (block_n,)
    top = [max(1, min(block_n, int(used[:, a].max()))) for a in range(nd)]
    best, best_key = None, None
    for outer in itertools.product(*(range(1, t + 1) for t in top[:-1])):
        room = block_n // math.prod(outer)
        if room < 1:
            continue
        ext = outer + (min(room, top[-1]),)
        sizes = torch.tensor(ext, dtype=used.dtype, device=used.device)
        tiles = int(((used + sizes - 1) // sizes).prod(-1).sum())
        key = (tiles, -ext[-1], -math.prod(ext))
        if best_key is None or key < best_key:
            best, best_key = ext, key
    return tuple(best)


def _coords(pos, grid: tuple[int, ...]):
    """Row-major grid coordinates of flat positions: (nd, *pos.shape)."""
    import torch

    out, rest = [], pos
    for g in reversed(grid[1:]):
        out.append(rest % g)
        rest = rest // g
    out.append(rest)
    return torch.stack(out[::-1])


def _spans(bound, qpos, qok, coords, n_kv: int, head: int):
    """Per query tile: first key coordinate and span length per axis (length 0: no key kept)."""
    import torch

    from einfuse.ir.ranks import KEY_INDEX as m_sym
    from einfuse.ir.ranks import QUERY_INDEX as p_sym
    from einfuse.lowering import torch_eval

    nt, bm = qpos.shape
    nd = coords.shape[0]
    keys = torch.arange(n_kv, device=qpos.device, dtype=torch.float64)[None, None]
    big = torch.iinfo(torch.int64).max
    lo = torch.zeros((nt, nd), dtype=torch.int64, device=qpos.device)
    hi = torch.full((nt, nd), -1, dtype=torch.int64, device=qpos.device)
    step = max(1, _CHUNK // max(bm * n_kv, 1))
    for s in range(0, nt, step):
        qp = qpos[s:s + step].double()[:, :, None]
        keep = torch.as_tensor(torch_eval.evaluate(bound, {p_sym: qp, m_sym: keys, HEAD_INDEX: float(head)}),
                               device=qpos.device)
        touched = (torch.broadcast_to(keep, (qp.shape[0], bm, n_kv)) & qok[s:s + step, :, None]).any(1)
        for a in range(nd):
            c = coords[a][None]
            lo[s:s + step, a] = torch.where(touched, c, big).min(-1).values
            hi[s:s + step, a] = torch.where(touched, c, -1).max(-1).values
    length = torch.where(hi >= 0, hi - lo + 1, 0)
    return torch.where(hi >= 0, lo, 0), length


def _classify(bound, qpos, qok, lo, length, box: tuple[int, ...], grid: tuple[int, ...], block_n: int,
              head: int):
    """Kinds (nt, NB) of each query tile's boxes over its span, and the boxes' origin tokens."""
    import torch

    from einfuse.ir.ranks import KEY_INDEX as m_sym
    from einfuse.ir.ranks import QUERY_INDEX as p_sym
    from einfuse.lowering import torch_eval

    dev = qpos.device
    nt, bm = qpos.shape
    nd = len(grid)
    ext = torch.tensor(box, dtype=torch.int64, device=dev)
    per_axis = (length + ext - 1) // ext                                # (nt, nd) boxes per axis
    count = per_axis.prod(-1)                                           # (nt,)
    nb = max(int(count.max()) if nt else 0, 1)
    b = torch.arange(nb, device=dev)[None]                              # (1, NB)
    idx, rest = [None] * nd, b.expand(nt, nb)
    for a in range(nd - 1, 0, -1):                                      # box b -> its place in the span
        idx[a] = rest % per_axis[:, a:a + 1].clamp(min=1)
        rest = rest // per_axis[:, a:a + 1].clamp(min=1)
    idx[0] = rest
    origin = [lo[:, a:a + 1] + idx[a] * box[a] for a in range(nd)]      # (nt, NB) per axis
    exists = b < count[:, None]
    lanes = torch.arange(block_n, device=dev)
    local = _coords(lanes, tuple(box))                                  # (nd, BN); axis 0 may overflow
    lane_ok = lanes < math.prod(box)
    kpos = torch.zeros((nt, nb, block_n), dtype=torch.int64, device=dev)
    kok = exists[..., None] & lane_ok
    for a in range(nd):
        c = origin[a][..., None] + local[a]
        kok = kok & (c < grid[a])
        kpos = kpos * grid[a] + c
    origin_tok = torch.zeros((nt, nb), dtype=torch.int64, device=dev)
    for a in range(nd):
        origin_tok = origin_tok * grid[a] + origin[a]
    kinds = torch.full((nt, nb), EMPTY, dtype=torch.int8, device=dev)
    step = max(1, _CHUNK // max(bm * nb * block_n, 1))
    for s in range(0, nt, step):
        qp = qpos[s:s + step].double()[:, :, None, None]               # (c, BM, 1, 1)
        qv = qok[s:s + step][:, :, None, None]
        kp = kpos[s:s + step].double()[:, None]                         # (c, 1, NB, BN)
        kv = kok[s:s + step][:, None]
        keep = torch.as_tensor(torch_eval.evaluate(bound, {p_sym: qp, m_sym: kp, HEAD_INDEX: float(head)}),
                               device=dev)
        keep = torch.broadcast_to(keep, (qp.shape[0], bm, nb, block_n)) & qv & kv
        any_ = keep.any(dim=3).any(dim=1)
        all_ = (keep | ~qv).all(dim=3).all(dim=1) & kok[s:s + step].all(-1)
        kinds[s:s + step] = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)
    return kinds, origin_tok
