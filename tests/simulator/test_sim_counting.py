"""Exact present-point counts of partial tiles (einfuse.simulator.counting) against brute force."""

import numpy as np
import pytest
import sympy

import einfuse
from einfuse.ir.ranks import HEAD_INDEX, index_symbol, size_symbol
from einfuse.ir.symeval import evaluate
from einfuse.passes.block_sparsity import PARTIAL, dense_tile_kinds
from einfuse.simulator import load_arch, prepare, simulate, workload
from einfuse.simulator.counting import partial_points, shift_invariant

p, m, h = index_symbol("P"), index_symbol("M"), HEAD_INDEX

MASKS = {
    "causal": m <= p,
    "sliding": sympy.And(m <= p, p - m < 37),
    "chunked": sympy.Eq(sympy.floor(p / 24), sympy.floor(m / 24)),
    "na2d": sympy.And(sympy.Abs(sympy.floor(p / 20) - sympy.floor(m / 20)) <= 3,
                      sympy.Abs(sympy.Mod(p, 20) - sympy.Mod(m, 20)) <= 3),
    "strided": sympy.Or(sympy.Eq(sympy.Mod(p - m, 7), 0), m <= p - 50),
    "per_head": m <= p - 9 * h,
}


def brute(pred, P, M, tq, tk, heads):
    kinds = dense_tile_kinds(pred, P, M, tq, tk, heads)
    present = area = 0
    for hd in range(heads):
        mask = np.broadcast_to(evaluate(pred, {p: np.arange(P, dtype=float)[:, None],
                                               m: np.arange(M, dtype=float)[None, :],
                                               h: float(hd)}).astype(bool), (P, M))
        for i, j in np.argwhere(kinds[hd] == PARTIAL):
            blk = mask[i * tq:(i + 1) * tq, j * tk:(j + 1) * tk]
            present += int(blk.sum())
            area += blk.size
    return kinds, present, area


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("P, M, tq, tk", [(300, 300, 32, 16), (257, 190, 64, 64), (96, 400, 5, 33)])
def test_partial_points_equal_brute_force(name, P, M, tq, tk):
    pred = MASKS[name]
    heads = 3 if name == "per_head" else 1
    kinds, present, area = brute(pred, P, M, tq, tk, heads)
    assert partial_points(pred, p, m, P, M, tq, tk, kinds) == (present, area, True)


def test_shift_invariance_is_proved_not_sampled():
    assert shift_invariant(MASKS["causal"], p, m) and shift_invariant(MASKS["sliding"], p, m)
    assert not shift_invariant(MASKS["chunked"], p, m) and not shift_invariant(MASKS["na2d"], p, m)


@pytest.mark.parametrize("spec", ["causal", "sliding_window:window=100", "na2d:kernel=7,shape=16x32"])
def test_simulated_macs_are_exact_for_masked_variants(spec):
    """Useful MACs = MACs of the points the mask keeps, counted densely on a small problem."""
    a = load_arch("fusemax")
    c0 = einfuse.load_spec(spec)
    c = prepare(c0, a)
    wl = workload("bert-base", 512, batch=1)
    r = simulate(c, a, wl)
    assert r.sim["macs_exact"] and "exact" in r.sim["tiles"]
    sizes = {**{k: float(v) for k, v in c0.params.items()}, "P": 512, "M": 512}
    from einfuse.passes.block_sparsity import score_constraint
    pred = score_constraint(c0).subs({size_symbol(k): v for k, v in sizes.items()})
    kept = int(np.broadcast_to(evaluate(pred, {p: np.arange(512.)[:, None], m: np.arange(512.)[None, :],
                                               h: 0.0}).astype(bool), (512, 512)).sum())
    qk = next(e for e in r.per_einsum if e.name == "BQK")
    assert qk.useful_points == kept * wl.heads * wl.head_dim * wl.batch


def _spec_pred(spec: str, n: int):
    from einfuse.passes.block_sparsity import _bind, score_constraint

    c = einfuse.load_spec(spec)
    env = tuple(sorted({**{k: float(v) for k, v in c.params.items()}, "P": float(n), "M": float(n)}.items()))
    return _bind(score_constraint(c), c.ranks["P"].extent, c.ranks["M"].extent, env, "P", "M")[0]


SPEC_MASKS = [("causal", 300), ("sliding_window:window=37", 300), ("na1d:kernel=5", 263),
              ("na2d:shape=13x21,kernel=5", 13 * 21), ("na2d:shape=16x16,kernel=7,dilation=2", 256),
              ("na3d:shape=5x6x7,kernel=3", 5 * 6 * 7)]


@pytest.mark.parametrize("spec, n", SPEC_MASKS)
@pytest.mark.parametrize("tq, tk", [(32, 16), (64, 64), (5, 33), (21, 21)])
def test_tile_table_equals_the_dense_mask(spec, n, tq, tk):
    """Tile classes and present points of partial tiles from interval subdivision + per-class
    counting equal the dense mask's, on ragged sizes and the built-in neighbourhood masks."""
    from einfuse.simulator.tilemap import tile_table

    pred = _spec_pred(spec, n)
    kinds, present, area = brute(pred, n, n, tq, tk, 1)
    t = tile_table(pred, p, m, n, n, tq, tk)
    assert np.array_equal(t.kinds, kinds)
    assert (t.present, t.area) == (present, area)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_tile_table_equals_the_dense_mask_on_synthetic_masks(name):
    from einfuse.simulator.tilemap import tile_table

    heads = 3 if name == "per_head" else 1
    kinds, present, area = brute(MASKS[name], 257, 190, 64, 16, heads)
    t = tile_table(MASKS[name], p, m, 257, 190, 64, 16, heads)
    assert np.array_equal(t.kinds, kinds) and (t.present, t.area) == (present, area)


def test_neighbourhood_classes_have_a_grid_row_period():
    """Away from the borders a 2-D neighbourhood is shift-invariant by one grid row (proved), which
    is what makes 1M-token counts cheap; the whole predicate is not (its clamps bind at borders)."""
    from einfuse.simulator.counting import _groups, period_of

    pred = _spec_pred("na2d:shape=64x64,kernel=7", 4096)
    assert period_of(pred, p, m) == 0
    q = np.arange(16, dtype=np.int64)
    h, plo = np.zeros(256, np.int64), np.repeat(q * 256, 16)
    mlo = np.tile(q * 256, 16)
    periods = {per for _, _, per in _groups(pred, p, m, h, plo, plo + 255, mlo, mlo + 255)}
    assert 64 in periods


def test_na2d_at_1m_tokens_counts_49_keys_per_query():
    """Exact at 1M tokens (no sampling): every query of a 7x7 neighbourhood keeps 49 keys."""
    from einfuse.simulator.tilemap import tile_table

    pred = _spec_pred("na2d:shape=1024x1024,kernel=7", 1 << 20)
    t = tile_table(pred, p, m, 1 << 20, 1 << 20, 256, 256)
    full = int((t.kinds == 2).sum()) * 256 * 256
    assert t.present + full == 49 * (1 << 20)
