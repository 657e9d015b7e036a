"""Bitwise index functions: exact in every evaluator (NumPy, torch), sound interval bounds, and the
text form round-trips them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy

from einfuse.ir import symeval
from einfuse.ir.bitwise import bitand, bitor, bitxor, shift_left, shift_right
from einfuse.ir.parser import parse_index_expr
from einfuse.passes.intervals import IntervalEvaluator

p, m = sympy.symbols("p m", integer=True, nonnegative=True)
q = sympy.Symbol("q", integer=True)  # may be negative

EXPRS = [
    bitand(p, m),
    bitor(p, 3 * m + 1),
    bitxor(p, m) + bitand(p, 12),
    bitand(shift_right(p, 2), 5) - bitor(shift_left(m, 1), 1),
    sympy.Mod(bitxor(p, 2 * m), 7),
]


def _python(e: sympy.Basic, pv: int, mv: int) -> int:
    return int(e.xreplace({p: sympy.Integer(pv), m: sympy.Integer(mv)}))


@pytest.mark.parametrize("e", EXPRS, ids=str)
def test_numpy_and_torch_evaluation_are_exact(e):
    torch = pytest.importorskip("torch")
    from einfuse.lowering import torch_eval

    P, M = np.arange(70.0).reshape(-1, 1), np.arange(40.0).reshape(1, -1)
    want = np.array([[_python(e, i, j) for j in range(40)] for i in range(70)], dtype=np.float64)
    np.testing.assert_array_equal(symeval.evaluate(e, {p: P, m: M}), want)
    got = torch_eval.evaluate(e, {p: torch.tensor(P), m: torch.tensor(M)})
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), want)


def test_functions_fold_on_integers_like_python_operators():
    for a, b in itertools.product(range(-9, 10), range(-4, 12)):
        assert (bitand(a, b), bitor(a, b), bitxor(a, b)) == (a & b, a | b, a ^ b)
    assert shift_left(sympy.Integer(-5), 3) == -5 << 3 and shift_right(sympy.Integer(-5), 1) == -5 >> 1


def test_assumptions_the_printers_rely_on():
    assert bitand(p, m).is_integer and bitand(p, m).is_nonnegative and bitand(q, 7).is_nonnegative
    assert bitor(p, m).is_nonnegative and bitor(q, 1).is_nonnegative is None


@pytest.mark.parametrize("e", EXPRS, ids=str)
def test_interval_bounds_are_sound_over_tiles(e):
    tq, tk = 8, 5
    lo_p, lo_m = np.arange(0, 64, tq, dtype=float).reshape(-1, 1), np.arange(0, 40, tk, dtype=float).reshape(1, -1)
    ev = IntervalEvaluator({p: (lo_p, lo_p + tq - 1), m: (lo_m, lo_m + tk - 1)})
    lo, hi = np.broadcast_arrays(*ev.value(e))
    vals = symeval.evaluate(e, {p: np.arange(64.0).reshape(-1, 1), m: np.arange(40.0).reshape(1, -1)})
    tiles = vals.reshape(8, tq, 8, tk)
    assert (tiles.min(axis=(1, 3)) >= lo).all() and (tiles.max(axis=(1, 3)) <= hi).all()
    if isinstance(e, (bitand, bitor, bitxor)):
        assert np.isfinite(hi).all()  # non-negative operands get finite bounds


def test_text_form_round_trips():
    for e in EXPRS:
        assert parse_index_expr(str(e)) == e
