"""Block sparsity: tile classes from the constraint equal those of the dense mask, exactly, for
built-in masks and random predicates (hypothesis), on the analytic and the exact path."""


import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import einfuse
from einfuse.errors import PassError
from einfuse.ir.ranks import HEAD_INDEX, size_symbol
from einfuse.passes.block_sparsity import EMPTY, FULL, classify_tiles, dense_tile_kinds, score_constraint
from einfuse.passes.fusion import fuse_online_softmax

p, m, h = sympy.symbols("p m", integer=True, nonnegative=True) + (HEAD_INDEX,)


def dense_for(c, sizes, tq, tk):
    env = {size_symbol(k): int(v) for k, v in {**c.params, **sizes}.items()}
    pred = score_constraint(c).subs(env)
    heads = sizes.get("H", 1) if h in pred.free_symbols else 1
    return dense_tile_kinds(pred, sizes["P"], sizes["M"], tq, tk, heads=heads)


def check_against_dense(c, sizes, tq, tk):
    dense = dense_for(c, sizes, tq, tk)
    for method in ("auto", "exact"):
        tm = classify_tiles(c, sizes, tq, tk, method=method)
        np.testing.assert_array_equal(tm.kinds, dense)
        assert tm.skipped_fraction == np.mean(dense == EMPTY)
    return tm


MASKED = ["causal", "sliding_window:window=9", "sliding_window:window=5,causal=0", "alibi", "decode:causal=1",
          "s2attn:stride=3,window=6", "duo:recent=7,sink=3,retrieval_heads=1", "na1d:kernel=5,dilation=3",
          "na1d:kernel=4,stride=2,causal=1", "na2d:shape=7x9,kernel=3,dilation=2",
          "na2d:shape=8x8,kernel=5,stride=2,causal=1x0", "na3d:shape=3x4x5,kernel=3x2x3,dilation=1x2x1"]


@pytest.mark.parametrize("spec", MASKED)
@pytest.mark.parametrize("tq,tk", [(8, 8), (5, 7), (16, 3)])
def test_builtin_masks_match_the_dense_mask(spec, tq, tk):
    c = einfuse.load_spec(spec)
    grid = [int(v) for k, v in c.params.items() if k.startswith("X")]
    n = int(np.prod(grid)) if grid else 61  # NA over a grid: one token per grid cell
    check_against_dense(c, {"P": n, "M": n, "H": 4}, tq, tk)


def test_every_builtin_is_classified_and_the_fused_form_agrees():
    for name in sorted(einfuse.BUILTINS):
        c = einfuse.load_spec(name)
        sizes = {"P": 40, "M": 40, "H": 4}
        tm = check_against_dense(c, sizes, 8, 8)
        try:
            fused = fuse_online_softmax(c, tile=16)
        except PassError:
            continue
        np.testing.assert_array_equal(classify_tiles(fused, sizes, 8, 8).kinds, tm.kinds)


def atoms():
    coef = st.integers(-3, 3)
    affine = st.builds(lambda a, b, k: a * p + b * m + k, coef, coef, st.integers(-20, 20))
    d = st.integers(1, 9)
    floors = st.builds(lambda x, y: sympy.floor(p / x) - sympy.floor(m / y), d, d)
    mods = st.builds(lambda x, y: sympy.Mod(p, x) - sympy.Mod(m + y, x), d, st.integers(0, 5))
    heads = st.builds(lambda x: sympy.Mod(m, x) - sympy.Mod(h, x), d)
    mixed = st.builds(lambda x, e: sympy.Max(e, 0) - sympy.Min(sympy.floor(m / x), p), d, affine)
    expr = st.one_of(affine, floors, mods, heads, mixed)
    rel = st.sampled_from([sympy.Lt, sympy.Le, sympy.Eq, sympy.Ne, sympy.Gt, sympy.Ge])
    return st.builds(lambda r, e, k: r(e, k), rel, expr, st.integers(-4, 4))


predicates = st.recursive(atoms(), lambda inner: st.one_of(
    st.builds(lambda a, b: sympy.And(a, b), inner, inner),
    st.builds(lambda a, b: sympy.Or(a, b), inner, inner),
    st.builds(sympy.Not, inner)), max_leaves=4)


@settings(max_examples=150, deadline=None)
@given(pred=predicates, P=st.integers(1, 40), M=st.integers(1, 40), tq=st.integers(1, 12),
       tk=st.integers(1, 12))
def test_random_predicates_match_the_dense_mask(pred, P, M, tq, tk):
    if pred in (sympy.true, sympy.false):
        return
    c = einfuse.attention(mask_mod=lambda b_, h_, q, kv: pred.subs({p: q, m: kv}))
    check_against_dense(c, {"P": P, "M": M, "H": 3}, tq, tk)


DSL_MASKS = {  # ==, != and bitwise operators of the DSL, as users write them
    "block_diagonal": lambda b_, h_, q, kv: q // 8 == kv // 8,
    "sink_or_block": lambda b_, h_, q, kv: (kv < 4) | (q // 8 == kv // 8),
    "causal_no_diagonal": lambda b_, h_, q, kv: (q >= kv) & (q != kv),
    "bit_groups": lambda b_, h_, q, kv: (q & 12) == (kv & 12),
    "xor_window": lambda b_, h_, q, kv: ((q ^ kv) >> 3) == 0,
}


@pytest.mark.parametrize("name", sorted(DSL_MASKS))
def test_dsl_equality_and_bitwise_masks_match_the_dense_mask(name):
    c = einfuse.attention(mask_mod=DSL_MASKS[name])
    tm = check_against_dense(c, {"P": 61, "M": 53, "H": 2}, 8, 8)
    if name != "causal_no_diagonal":
        assert tm.skipped_fraction > 0.4  # blocks without a visible key are skipped, not merely masked


def test_kv_tile_ranges_of_neighbourhood_attention():
    c = einfuse.load_spec("na2d:shape=16x16,kernel=5")
    tm = classify_tiles(c, {"P": 256, "M": 256}, 16, 16)
    dense = dense_for(c, {"P": 256, "M": 256}, 16, 16)[0]
    for i in range(16):
        nonempty = np.nonzero(dense[i] != EMPTY)[0]
        assert tm.kv_tile_range(i) == (nonempty.min(), nonempty.max() + 1)
    assert tm.kv_ranges.shape == (1, 16, 2)
    shifted_window_start = [min(max(i - 2, 0), 16 - 5) for i in range(16)]  # rows, clamped at borders
    np.testing.assert_array_equal(tm.kv_ranges[0, :, 0], shifted_window_start)


def test_query_tile_without_keys_has_empty_range():
    c = einfuse.attention(mask_mod=lambda b_, h_, q, kv: kv <= q - 20)
    tm = classify_tiles(c, {"P": 32, "M": 32}, 8, 8)
    assert tm.kv_tile_range(0) == (0, 0) and tm.kv_tile_range(3) == (0, 2)


def test_no_constraint_is_all_full_and_head_dependent_masks_get_one_map_per_head():
    assert (classify_tiles(einfuse.load_spec("softmax"), {"P": 30, "M": 20}, 8, 8).kinds == FULL).all()
    tm = classify_tiles(einfuse.load_spec("s2attn:stride=4,window=8"), {"P": 64, "M": 64, "H": 8}, 16, 16)
    assert tm.kinds.shape == (8, 4, 4) and tm.kv_tile_range(2, head=5) == (0, 3)


def test_results_are_cached_and_read_only():
    c = einfuse.load_spec("causal")
    a = classify_tiles(c, {"P": 300, "M": 300}, 64, 32)
    b = classify_tiles(einfuse.load_spec("causal"), {"P": 300, "M": 300}, 64, 32)
    assert a is b
    with pytest.raises(ValueError):
        a.kinds[0, 0, 0] = 2


def test_exact_and_analytic_paths_agree_at_16k_tokens():
    # speed lives in benchmarks (benchmarks/sim_speed.py times tile classes at 1M tokens), not here
    c = einfuse.load_spec("na2d:shape=128x128,kernel=13,dilation=2")
    tm = classify_tiles(c, {"P": 16384, "M": 16384}, 128, 128, method="exact")
    assert tm.exact_tiles == 128 * 128
    analytic = classify_tiles(c, {"P": 16384, "M": 16384}, 128, 128)
    np.testing.assert_array_equal(analytic.kinds, tm.kinds)
    assert analytic.method == "analytic" and analytic.skipped_fraction > 0.85


def test_errors():
    with pytest.raises(PassError, match="batch"):
        classify_tiles(einfuse.attention(mask_mod=lambda b_, h_, q, kv: kv <= q + b_), {"P": 8, "M": 8}, 4, 4)
    with pytest.raises(PassError, match="H"):
        classify_tiles(einfuse.load_spec("s2attn"), {"P": 8, "M": 8}, 4, 4)
    with pytest.raises(PassError, match="tile_q"):
        classify_tiles(einfuse.load_spec("causal"), {"P": 8, "M": 8}, 0, 4)
    with pytest.raises(PassError, match="rank M"):
        classify_tiles(einfuse.load_spec("causal"), {"P": 8}, 4, 4)
