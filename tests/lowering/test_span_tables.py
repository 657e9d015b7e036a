"""Key boxes laid over each query tile's key span: the tables list exactly the boxes holding kept pairs,
cover every kept pair once, and the box shape covers the spans with few tiles."""

import math

import pytest
import torch

import einfuse
from einfuse.frontends.dsl import m as m_sym
from einfuse.frontends.dsl import p as p_sym
from einfuse.ir.ranks import HEAD_INDEX, size_symbol
from einfuse.lowering import torch_eval
from einfuse.lowering.blocks import build_tables
from einfuse.lowering.onepass import analyze
from einfuse.lowering.span_tables import build_span_tables, choose_box
from einfuse.lowering.tile_order import SpanBoxes, TileOrder


def _box_keys(origin: int, box, grid):
    """Flat positions (and existence) of the lanes of a box starting at token ``origin``."""
    nd = len(grid)
    o, rest = [], origin
    for g in reversed(grid[1:]):
        o.append(rest % g)
        rest //= g
    o = [rest] + o[::-1]
    ext = box[3 - nd:]
    out = []
    for lane in range(math.prod(ext)):
        loc, r = [], lane
        for e in reversed(ext[1:]):
            loc.append(r % e)
            r //= e
        loc = [r] + loc[::-1]
        c = [a + b for a, b in zip(o, loc)]
        if all(x < g for x, g in zip(c, grid)):
            out.append(_flat(c, grid))
    return out


def _flat(c, grid):
    pos = 0
    for x, g in zip(c, grid):
        pos = pos * g + x
    return pos


@pytest.mark.parametrize("spec,bm,bn", [
    ("na2d:shape=9x11,kernel=5", 16, 16),
    ("na2d:shape=12x10,kernel=5,dilation=2", 16, 32),
    ("na2d:shape=9x9,kernel=3,causal=1x1", 16, 16),
    ("na3d:shape=5x6x7,kernel=3", 16, 32),
])
def test_span_tables_list_exactly_the_boxes_with_kept_pairs(spec, bm, bn):
    c = einfuse.load_spec(spec)
    plan = analyze(c)
    grid = tuple(c.attrs["neighborhood"]["shape"])
    n = math.prod(grid)
    sizes = {"P": n, "M": n, "H": 1, "B": 1, **{f"X{i}": g for i, g in enumerate(grid)}}
    q_order = TileOrder(grid)
    t = build_span_tables(plan.mask, sizes, n, n, 1, bm, bn, q_order, grid, "cpu")
    assert t.method == "span" and math.prod(t.k_box) <= bn
    bound = plan.mask.subs({size_symbol(k): v for k, v in sizes.items()})
    allp = torch.arange(n, dtype=torch.float64)
    keep = torch.broadcast_to(torch.as_tensor(torch_eval.evaluate(
        bound, {p_sym: allp[:, None], m_sym: allp[None, :], HEAD_INDEX: 0.0})), (n, n))
    qpos, qok = q_order.positions(n, bm)
    for qt in range(qpos.shape[0]):
        rows = qpos[qt][qok[qt]].tolist()
        seen = torch.zeros(n, dtype=torch.int64)
        for kind_num, kind_idx, full in ((t.full_num, t.full_idx, True), (t.part_num, t.part_idx, False)):
            for i in range(int(kind_num[0, qt])):
                keys = _box_keys(int(kind_idx[0, qt, i]), t.k_box, grid)
                seen[keys] += 1
                block = keep[rows][:, keys]
                assert bool(block.any()), "an empty box is listed"
                if full:
                    assert bool(block.all()) and len(keys) == bn, "a FULL box must keep every pair and lane"
        kept = keep[rows].any(0)
        assert torch.all(seen[kept] == 1), "every kept key is covered exactly once"
        assert torch.all(seen <= 1), "boxes of one query tile never overlap"


def test_span_boxes_visit_fewer_keys_than_a_fixed_partition():
    # 16x32x32 grid, 7x7x7 windows, 4x4x4 query boxes: fixed 4x4x4 key boxes straddle each 10-key span
    c = einfuse.load_spec("na3d:shape=16x32x32,kernel=7")
    plan = analyze(c)
    grid = (16, 32, 32)
    sizes = {"P": 16384, "M": 16384, "H": 1, "B": 1, "X0": 16, "X1": 32, "X2": 32}
    box = TileOrder(grid)
    fixed = build_tables(c, plan.mask, sizes, 16384, 16384, 1, 64, 128, box, box, "cpu")
    span = build_span_tables(plan.mask, sizes, 16384, 16384, 1, 64, 128, box, grid, "cpu")
    assert span.cost(128) < 0.75 * fixed.cost(128)


def test_choose_box_fits_the_spans():
    spans = torch.tensor([[10, 10, 10]] * 4)
    ext = choose_box(spans, 64)
    assert math.prod(ext) <= 64
    assert math.prod(-(-10 // e) for e in ext) == 20  # e.g. 2x5x5: 20 boxes where 4x4x4 needs 27
    assert choose_box(torch.tensor([[1, 5]]), 32) == (1, 5)
    assert choose_box(torch.zeros((0, 2), dtype=torch.int64), 16) == (1, 16)


def test_span_kernel_source_reads_box_origins():
    src = einfuse.compile("na2d:shape=12x16,kernel=5", torch_op=False).kernel.source(
        TileOrder((12, 16)), SpanBoxes((12, 16)))
    assert "whose first token is t" in src and "K_SPAN = True" in src


def test_span_order_needs_a_grid():
    f = einfuse.compile("causal", torch_op=False)
    q = torch.randn(1, 1, 64, 8)
    with pytest.raises(einfuse.EinfuseError, match="tile_order='span' needs a token grid"):
        f(q, q, q, tile_order="span")
