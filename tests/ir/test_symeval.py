"""symeval against sympy's own exact (rational) evaluation, and the reference executor on a mask that
needs it.

sympy rewrites ``floor((p - m)/3)`` as ``floor(p/3 - m/3)``; summing the thirds in float64 floors
``8/3 - 5/3`` to 0. The oracle here is substitution of sympy Integers (exact rationals), not lambdify,
which would print the same float thirds.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from _helpers import FRACTION_SUM_CASES, M_SYM, P_SYM, X_SYM, exact_value, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.ir.symeval import evaluate, evaluate_int

p, m, X = P_SYM, M_SYM, X_SYM
_exact = exact_value


@pytest.mark.parametrize("expr,env,want", FRACTION_SUM_CASES)
def test_fraction_sums_are_exact(expr, env, want):
    assert evaluate(expr, env) == want
    assert _exact(expr, env) == want  # the case really is what the comment says


def test_float_expressions_stay_float():
    env = {p: np.array([0.0, 1.5, 4.0]), m: np.float64(1.0)}
    np.testing.assert_allclose(evaluate(sympy.exp(-(p - m) / 3), env), np.exp(-(env[p] - 1.0) / 3), rtol=1e-15)
    assert list(evaluate(sympy.floor((p - m) / 3), env)) == [-1, 0, 1]  # non-integer input 1.5
    assert evaluate(1 / (p - m), {p: 2.0, m: 5.0}) == pytest.approx(-1 / 3)
    assert evaluate_int(sympy.floor((p - m) / 3), {p: np.arange(8, 11), m: np.int64(5)}).tolist() == [1, 1, 1]


_ints = st.integers(-9, 9)
_dens = st.integers(1, 7)


@settings(max_examples=150, deadline=None)
@given(a=_ints, b=_ints, c=_ints, da=_dens, db=_dens, dc=_dens, k=st.integers(1, 5), dk=_dens,
       op=st.sampled_from(["floor", "ceiling", "mod", "mod_floor", "ge", "lt", "eq", "max", "sym_floor"]),
       ps=st.lists(st.integers(-40, 40), min_size=6, max_size=6),
       ms=st.lists(st.integers(-40, 40), min_size=6, max_size=6),
       xs=st.integers(1, 9))
def test_rational_linear_combinations_match_sympy(a, b, c, da, db, dc, k, dk, op, ps, ms, xs):
    lin = sympy.Rational(a, da) * p + sympy.Rational(b, db) * m + sympy.Rational(c, dc)
    expr = {
        "floor": sympy.floor(lin),
        "ceiling": sympy.ceiling(lin),
        "mod": sympy.Mod(lin, sympy.Rational(k, dk)),
        "mod_floor": sympy.Mod(sympy.floor(lin), k),
        "ge": sympy.Ge(lin, sympy.Rational(k, dk)),
        "lt": sympy.Lt(lin, sympy.Rational(-k, dk)),
        "eq": sympy.Eq(lin, k),
        "max": sympy.floor(sympy.Max(lin, sympy.Rational(b, dk) * p)),
        "sym_floor": sympy.floor((a * p + b * m) / X + sympy.Rational(c, dc)),
    }[op]
    env = {p: np.array(ps, dtype=np.float64), m: np.array(ms, dtype=np.float64), X: np.float64(xs)}
    got = np.broadcast_to(evaluate(expr, env), (len(ps),)).astype(np.float64)
    want = [_exact(expr, {p: pi, m: mi, X: xs}) for pi, mi in zip(ps, ms)]
    assert got.tolist() == want, f"{expr} at p={ps}, m={ms}"


def _brute_softmax(q, k, v, keep):
    """Masked softmax attention with an explicit Python-loop mask (rows with no key -> 0)."""
    s = np.einsum("bhpe,bhme->bhpm", q, k)
    s = np.where(keep, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    w = np.where(keep, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0.0)
    den = w.sum(-1, keepdims=True)
    return np.einsum("bhpm,bhmf->bhpf", w / np.where(den > 0, den, 1), v)


def test_reference_executor_mask_with_fraction_sum():
    """``Mod(floor((q - kv)/3), 2) == 0`` keeps key blocks of 3 alternately; a float64 sum of thirds
    drops exact multiples (p - m = 3, 9, ...) whenever 8/3 - 5/3 style rounding lands below."""
    def mask(b, h, q, kv):
        return sympy.Eq(sympy.Mod(sympy.floor((q - kv) / 3), 2), 0)

    c = einfuse.attention(mask_mod=mask, scale=1.0)
    N, M, D = 23, 19, 8
    keep = np.array([[((i - j) // 3) % 2 == 0 for j in range(M)] for i in range(N)])
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((1, 2, N, D)), rng.standard_normal((1, 2, M, D)), rng.standard_normal((1, 2, M, D))
    out = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out, _brute_softmax(q, k, v, keep)) < 1e-12
