"""Neighborhood attention: the cascade's constraint equals a per-query loop over NATTEN's definition.

The mask is read end to end from the reference executor: with Q = K = 1 every visible score is
positive and every masked one is absent (0), so ``QK != 0`` is the constraint as executed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sympy
from frontend_oracles import natten_keys, natten_mask

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.frontends.neighborhood import na1d, na2d, na3d
from einfuse.ir.ranks import index_symbol, size_symbol
from einfuse.ir.symeval import evaluate


def executed_mask(c: ef.Cascade, n: int, sizes: dict[str, int] | None = None) -> np.ndarray:
    ones = np.ones((1, 1, n, 1))
    out = run_cascade(c, {"Q": ones, "K": ones, "V": ones}, sizes=sizes, keep_intermediates=True)
    return out["QK"][0, 0].T != 0  # QK is [M, P]; return [P, M]


def check(shape, kernel, dilation, stride, causal, c: ef.Cascade) -> None:
    got = executed_mask(c, math.prod(shape))
    want = natten_mask(shape, kernel, dilation, stride, causal)
    assert (got == want).all(), f"{shape=} {kernel=} {dilation=} {stride=} {causal=}: " \
                                f"{np.argwhere(got != want)[:5].tolist()} differ"
    counts = want.sum(1)
    if not any(causal):  # shifted, never truncated: exactly prod(kernel) keys for every query
        assert (counts == math.prod(kernel)).all()
    else:
        assert counts.max() <= math.prod(kernel) and want.diagonal().all()


def _configs_1d(L: int):
    for k in range(2, L + 1):
        for d in range(1, L // k + 1):
            for s in range(1, k + 1):
                for causal in (False, True):
                    yield k, d, s, causal


@pytest.mark.parametrize("L", [7, 11])
def test_na1d_sweep(L: int) -> None:
    for k, d, s, causal in _configs_1d(L):
        check((L,), (k,), (d,), (s,), (causal,), na1d(shape=(L,), kernel=k, dilation=d, stride=s, causal=causal))


@pytest.mark.parametrize("causal", list(itertools.product([False, True], repeat=2)), ids=str)
def test_na2d_sweep(causal) -> None:
    shape = (6, 9)
    for k0, k1, d0, d1, s in itertools.product((2, 3), (3, 4), (1, 2), (1, 2), (1, 2)):
        kernel, dilation, stride = (k0, k1), (d0, d1), (s, min(s + 1, k1))
        c = na2d(shape=shape, kernel=kernel, dilation=dilation, stride=stride, causal=causal)
        check(shape, kernel, dilation, stride, causal, c)


def test_na3d_sweep() -> None:
    shape = (4, 5, 6)
    options = [((2, 3, 3), (1, 1, 2), (1, 3, 1)), ((3, 2, 4), (1, 2, 1), (2, 2, 3)),
               ((4, 5, 2), (1, 1, 3), (4, 1, 2)), ((2, 2, 2), (2, 2, 3), (1, 2, 2))]
    for (kernel, dilation, stride), causal in itertools.product(options, itertools.product([False, True], repeat=3)):
        c = na3d(shape=shape, kernel=kernel, dilation=dilation, stride=stride, causal=causal)
        check(shape, kernel, dilation, stride, causal, c)


def test_spec_with_per_axis_values() -> None:
    c = ef.load_spec("na3d:shape=4x5x6,kernel=3x2x4,stride=1x2x3,causal=1x0x0")
    info = c.attrs["neighborhood"]
    assert info["kernel"] == [3, 2, 4] and info["stride"] == [1, 2, 3] and info["causal"] == [True, False, False]
    check((4, 5, 6), (3, 2, 4), (1, 1, 1), (1, 2, 3), (True, False, False), c)


def test_large_grid_rows_match() -> None:
    """The README example (96x96, kernel 13, dilation 2) on a sample of queries, border ones included."""
    c = ef.load_spec("na2d:shape=96x96,kernel=13,dilation=2")
    assert c.params == {"X0": 96.0, "X1": 96.0}
    where = c.einsums[0].where
    queries = np.array([0, 1, 95, 96, 97, 191, 4600, 4659, 9120, 9215, 9214, 5000, 12 * 96 + 13])
    env = {size_symbol(k): np.float64(v) for k, v in {**c.params, "P": 9216, "M": 9216}.items()}
    env[index_symbol("p")] = queries.astype(np.float64).reshape(-1, 1)
    env[index_symbol("m")] = np.arange(9216, dtype=np.float64).reshape(1, -1)
    rows = np.broadcast_to(evaluate(where, env), (len(queries), 9216))
    for q, row in zip(queries, rows):
        want = np.zeros(9216, dtype=bool)
        want[natten_keys((96, 96), (13, 13), (2, 2), (1, 1), (False, False), int(q))] = True
        assert (row == want).all(), q
        assert row.sum() == 169


def test_grid_sizes_are_symbolic_and_can_be_overridden() -> None:
    c = na2d(shape=(6, 9), kernel=3, dilation=(1, 2), stride=2)
    assert {size_symbol("X0"), size_symbol("X1")} <= c.einsums[0].where.free_symbols
    got = executed_mask(c, 40, sizes={"X0": 5, "X1": 8})
    assert (got == natten_mask((5, 8), (3, 3), (1, 2), (2, 2), (False, False))).all()


def test_na1d_without_shape_follows_the_sequence_length() -> None:
    c = na1d(kernel=5, dilation=2, stride=2)
    assert not c.params
    for n in (10, 13):
        assert (executed_mask(c, n) == natten_mask((n,), (5,), (2,), (2,), (False,))).all()


def test_masks_are_pure_index_predicates() -> None:
    """Only p, m, the grid sizes and (for the query's position, bottom-right) the lengths P and M
    appear: no head or batch dependence, so block masks are shared."""
    opts = dict(shape=(4, 5, 6), kernel=(2, 3, 3), dilation=(2, 1, 2), stride=(2, 3, 1), causal=(True, False, True))
    c = na3d(**opts)
    names = {s.name for s in c.einsums[0].where.free_symbols}
    assert names == {"p", "m", "X0", "X1", "X2", "P", "M"}
    assert isinstance(c.einsums[0].where, sympy.And)
    top_left = na3d(**opts, align="top_left")
    assert {s.name for s in top_left.einsums[0].where.free_symbols} == {"p", "m", "X0", "X1", "X2"}


def test_grid_widths_whose_reciprocal_rounds_down() -> None:
    """49 * (1/49) < 1 in floats: flat-to-grid division must stay exact (2-D width, 3-D plane 7*7)."""
    check((7, 49), (3, 3), (1, 1), (1, 1), (False, False), na2d(shape=(7, 49), kernel=3))
    check((4, 7, 7), (3, 3, 3), (1, 2, 1), (1, 1, 2), (False, True, False),
          na3d(shape=(4, 7, 7), kernel=3, dilation=(1, 2, 1), stride=(1, 1, 2), causal=(False, True, False)))
