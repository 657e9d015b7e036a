"""torch_eval (tile classification and FlexAttention peers) against sympy's exact evaluation, and a
kernel whose block tables depend on it.

sympy rewrites ``floor((p - m)/3)`` as ``floor(p/3 - m/3)``; summing the thirds in float64 floors
``8/3 - 5/3`` to 0, and a tile classified EMPTY instead of PARTIAL silently drops keys. The oracle is
substitution of sympy Integers (exact rationals), not lambdify, which prints the same float thirds.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from _helpers import FRACTION_SUM_CASES, M_SYM, P_SYM, X_SYM, exact_value, rel_err  # noqa: E402

import einfuse  # noqa: E402
from einfuse.codegen.reference import run_cascade  # noqa: E402
from einfuse.lowering import blocks, torch_eval  # noqa: E402
from einfuse.lowering.torch_eval import compile_expr, evaluate  # noqa: E402

p, m, X = P_SYM, M_SYM, X_SYM
_exact = exact_value


@pytest.mark.parametrize("expr,env,want", FRACTION_SUM_CASES + [
    (sympy.floor(sympy.Min(p / 3 - m / 3, 7)), {p: 8, m: 5}, 1),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_fraction_sums_are_exact(expr, env, want, dtype):
    assert _exact(expr, env) == want  # the case really is what the comment says
    got = evaluate(expr, {s: torch.tensor([v], dtype=dtype) for s, v in env.items()})
    assert torch.as_tensor(got).tolist() == [want]


def test_float_expressions_stay_float():
    pv = torch.tensor([0.0, 1.5, 4.0], dtype=torch.float64)
    got = evaluate(sympy.exp(-(p - m) / 3), {p: pv, m: 1.0})
    torch.testing.assert_close(got, torch.exp(-(pv - 1.0) / 3), rtol=1e-15, atol=0)
    assert evaluate(sympy.floor((p - m) / 3), {p: pv, m: 1.0}).tolist() == [-1, 0, 1]  # 1.5 is not an integer
    assert float(evaluate(1 / (p - m), {p: torch.tensor(2.0, dtype=torch.float64), m: 5.0})) == pytest.approx(-1 / 3)
    pw = sympy.Piecewise((p / 3, p > m), (m - p, True))
    assert evaluate(pw, {p: torch.tensor([9.0, 1.0], dtype=torch.float64), m: 2.0}).tolist() == [3.0, 1.0]


def test_compiled_predicate_traces_without_tensor_branches():
    """FlexAttention runs the closure under torch.compile: one graph (fullgraph) means no Python
    branch looks at a tensor's value."""
    f = compile_expr(sympy.Eq(sympy.Mod(sympy.floor((p - m) / 3), 2), 0))
    traced = torch.compile(lambda a, b: f({p: a, m: b}), fullgraph=True, backend="eager")
    a = torch.arange(40, dtype=torch.float64)[:, None]
    b = torch.arange(30, dtype=torch.float64)[None, :]
    want = torch.tensor([[((i - j) // 3) % 2 == 0 for j in range(30)] for i in range(40)])
    assert torch.equal(traced(a, b), want)


_ints = st.integers(-9, 9)
_dens = st.integers(1, 7)


@settings(max_examples=150, deadline=None)
@given(a=_ints, b=_ints, c=_ints, da=_dens, db=_dens, dc=_dens, k=st.integers(1, 5), dk=_dens,
       op=st.sampled_from(["floor", "ceiling", "mod", "mod_floor", "ge", "lt", "eq", "ne", "max", "min",
                           "max_ge", "sym_floor", "sym_ceil", "abs_floor"]),
       ps=st.lists(st.integers(-40, 40), min_size=6, max_size=6),
       ms=st.lists(st.integers(-40, 40), min_size=6, max_size=6),
       xs=st.integers(1, 9), dtype=st.sampled_from([torch.float64, torch.int64]))
def test_rational_linear_combinations_match_sympy(a, b, c, da, db, dc, k, dk, op, ps, ms, xs, dtype):
    lin = sympy.Rational(a, da) * p + sympy.Rational(b, db) * m + sympy.Rational(c, dc)
    expr = {
        "floor": sympy.floor(lin),
        "ceiling": sympy.ceiling(lin),
        "mod": sympy.Mod(lin, sympy.Rational(k, dk)),
        "mod_floor": sympy.Mod(sympy.floor(lin), k),
        "ge": sympy.Ge(lin, sympy.Rational(k, dk)),
        "lt": sympy.Lt(lin, sympy.Rational(-k, dk)),
        "eq": sympy.Eq(lin, k),
        "ne": sympy.Ne(lin, sympy.Rational(k, dk)),
        "max": sympy.floor(sympy.Max(lin, sympy.Rational(b, dk) * p)),
        "min": sympy.ceiling(sympy.Min(lin, sympy.Rational(a, dk) * m, 0)),
        "max_ge": sympy.Max(0, lin) >= sympy.Rational(k, dk),
        "sym_floor": sympy.floor((a * p + b * m) / X + sympy.Rational(c, dc)),
        "sym_ceil": sympy.ceiling((a * p - b * m) / X - sympy.Rational(c, dc)),
        "abs_floor": sympy.floor(sympy.Abs(lin)),
    }[op]
    env = {p: torch.tensor(ps, dtype=dtype), m: torch.tensor(ms, dtype=dtype), X: torch.tensor(xs, dtype=dtype)}
    got = torch.broadcast_to(torch.as_tensor(evaluate(expr, env), dtype=torch.float64), (len(ps),)).tolist()
    want = [_exact(expr, {p: pi, m: mi, X: xs}) for pi, mi in zip(ps, ms)]
    assert got == want, f"{expr} at p={ps}, m={ms}"


def _mod3_mask(b, h, q, kv):
    return sympy.Eq(sympy.Mod(sympy.floor((q - kv) / 3), 2), 0)


def _trap_mask(b, h, q, kv):
    """Keeps only (8, 5), (24, 21), (40, 37): one pair per tile pair, and at (8, 5) float64 gives
    8/3 - 5/3 = 0.999..., so a float classifier marks that tile EMPTY and row 8 comes out 0."""
    return sympy.And(sympy.Eq(sympy.floor((q - kv) / 3), 1), sympy.Eq(sympy.Mod(q - kv, 3), 0),
                     sympy.Eq(sympy.Mod(kv, 16), 5), sympy.Eq(sympy.Mod(q, 16), 8))


MASKS = {
    "mod3": (_mod3_mask, lambda i, j: ((i - j) // 3) % 2 == 0),
    "trap": (_trap_mask, lambda i, j: (i - j) // 3 == 1 and (i - j) % 3 == 0 and j % 16 == 5 and i % 16 == 8),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("dense", [True, False], ids=["dense-check", "default"])
def test_kernel_with_fraction_sum_mask_matches_reference(monkeypatch, dense, mask):
    """Kernels with fraction-sum masks, 16x16 tiles at ragged sizes, against the float64 reference.
    With ``dense`` the block-sparsity pass is bypassed so torch_eval classifies every tile."""
    calls = []
    if dense:
        monkeypatch.setattr(blocks, "_classify_with_pass", lambda *a, **k: None)
        real = torch_eval.evaluate
        monkeypatch.setattr(torch_eval, "evaluate", lambda *a: calls.append(1) or real(*a))
    mask_mod, brute = MASKS[mask]
    c = einfuse.attention(mask_mod=mask_mod)
    B, H, Hkv, N, M, D = 1, 2, 1, 45, 53, 16
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(B, H, N, D, generator=gen)
    k = torch.randn(B, Hkv, M, D, generator=gen)
    v = torch.randn(B, Hkv, M, D, generator=gen)
    f = einfuse.compile(c, decode=False, block_m=16, block_n=16)
    out = f(q, k, v)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    keep = np.array([[brute(i, j) for j in range(M)] for i in range(N)])
    assert keep.any() and not keep.all()
    if mask == "trap":
        assert keep.sum() == 3 and keep[8, 5]  # the float trap is a kept pair, alone in its tile
    assert not dense or calls, "the dense classifier was not used"
    assert rel_err(out.numpy().astype(np.float64), ref) < 2e-5
