"""The one sympy -> Triton index printer, run in Triton against exact sympy evaluation.

Two printers used to exist (index_printer.py for attention, a second one in linear_emit.py for the
linear and decode kernels) and disagreed on several points; these cases pin the merged behaviour
where they differed: floor division of negatives with constexpr (Python-int) operands, floor and
modulo by a size symbol, fractional bounds in comparisons, the unsigned window compare, integer
Piecewise values, Min/Max, float conversion of constexpr names, Xor/Implies, and fractional
coefficients inside Max/Min/Mod (``floor(Max(0, p/3 - m/3))`` printed as a difference of float32
thirds was wrong at 61 points of a 64x32 grid; now over one common denominator), and the bitwise
index functions. The oracle is
sympy itself on Integers (exact rationals), not symeval: symeval's float64 sum of ``p/3 - m/3``
floors ``(8 - 5)/3`` to 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from einfuse.codegen.triton.index_printer import HELPERS, IndexPrinter
from einfuse.codegen.triton.loader import load_module
from einfuse.frontends.dsl import m, p
from einfuse.ir.bitwise import bitand, bitor, bitxor
from einfuse.ir.ranks import HEAD_EXTENT as H

A = sympy.Symbol("A", integer=True)  # bound to a tl.constexpr: a Python int inside the kernel
NP, NM = 64, 16  # p in [0, 64), m in [0, 16): differences of both signs
H_VALUE, A_VALUE = 41, 6  # 41 * float32(1/41) rounds below 1; A - 20 = -14 is not a multiple of 3
NAMES = {p: "p", m: "m", H: "H", A: "A"}

# (name, expression, how to print it: value | float | predicate)
CASES = [
    ("floor_neg", sympy.floor((p - m) / 3), "value"),
    ("ceil_neg", sympy.ceiling((m - p) / 4), "value"),
    ("mod_neg", sympy.Mod(m - p, 5), "value"),
    ("floor_size", sympy.floor(p / H), "value"),  # float p*(1/41) floors 41 to 0
    ("floor_size_neg", sympy.floor((m - p) / H), "value"),
    ("mod_size", sympy.Mod(m - p, H), "value"),
    ("floor_constexpr", sympy.floor((A - 20) / 3), "value"),  # Python // floors, tensors' truncate
    ("ceil_constexpr", sympy.ceiling((A - 20) / 4), "value"),
    ("frac_bound", sympy.Ge(p / 3 - m / 3, 1), "predicate"),  # float compare fails at p=5, m=2
    ("window", sympy.And(m >= p - 3, m < p + 5), "predicate"),  # one unsigned compare
    ("piecewise_int", sympy.Piecewise((p + 2**25, p > m), (m - 2**25, True)), "value"),
    ("min_max", sympy.Max(p - 2 * m, sympy.Min(m - p, -3)), "value"),
    ("float_constexpr", A * p / 7, "float"),
    ("float_name", A, "float"),
    ("xor", sympy.Xor(p > m, m > 7), "predicate"),
    ("implies", sympy.Implies(p > 40, m < 3), "predicate"),
    # non-negative numerators over the tensors p, m: unsigned // and % (no signed rounding fix-up)
    ("udiv", sympy.floor((p + 3 * m) / 8), "value"),
    ("umod", sympy.Mod(p + m, 6), "value"),
    ("umod_nested", sympy.Mod(sympy.floor(p / 4), 3) - sympy.Mod(m, 4), "value"),
    # fractional coefficients inside Max/Min/Mod: one common denominator, integer // and %
    ("floor_max_frac", sympy.floor(sympy.Max(0, p / 3 - m / 3)), "value"),
    ("max_frac_bound", sympy.Max(0, p / 3 - m / 3) >= 1, "predicate"),
    ("mod_frac", sympy.Mod((p - m) / 3, 2), "float"),
    ("mod_frac_eq", sympy.Eq(sympy.Mod((p - m) / 3, 2), 0), "predicate"),
    ("ceil_min_frac", sympy.ceiling(sympy.Min(m / 3 - p / 6, p / 2 - 5)), "value"),
    # bitwise index functions (Morton-order masks); negative operands are two's complement
    ("bitand", bitand(p, 6) + bitand(m - p, 5), "value"),
    ("bitor_xor", bitor(p, 2 * m) - bitxor(p - m, 9), "value"),
    ("bits_eq", sympy.Eq(bitand(p, 3), bitand(m, 3)), "predicate"),
    ("shift", sympy.floor(bitxor(p, m) / 4) * 2 >= m, "predicate"),
]


def _module():
    pr = IndexPrinter(NAMES, context="test", tensors=(p, m))
    kernels = []
    for name, e, how in CASES:
        code = {"value": pr.value, "float": pr.float_value, "predicate": pr.predicate}[how](e)
        store = "tl.zeros([NP, NM], tl.float32)" if how == "float" else "tl.zeros([NP, NM], tl.int32)"
        kernels.append(f'''
@triton.jit
def k_{name}(out_ptr, H, A: tl.constexpr, NP: tl.constexpr, NM: tl.constexpr):
    p = tl.arange(0, NP)[:, None]
    m = tl.arange(0, NM)[None, :]
    r = {store} + ({code})
    tl.store(out_ptr + p * NM + m, r)
''')
    src = "import triton\nimport triton.language as tl\n" + HELPERS + "\n".join(kernels)
    return load_module(src, "test_index_printer")


def _exact(e: sympy.Basic) -> np.ndarray:
    """``e`` on the grid in exact rational arithmetic (sympy on Integers), as float64.

    Substitution, not lambdify: lambdify prints ``p/3`` as the Python float ``1/3*p``."""
    env = {H: sympy.Integer(H_VALUE), A: sympy.Integer(A_VALUE)}
    vals = [e.xreplace({**env, p: sympy.Integer(i), m: sympy.Integer(j)}) for i in range(NP) for j in range(NM)]
    return np.array([float(bool(v)) if isinstance(v, sympy.logic.boolalg.BooleanAtom) else float(v)
                     for v in vals]).reshape(NP, NM)


@pytest.fixture(scope="module")
def module():
    return _module()


@pytest.mark.parametrize("name,e,how", CASES, ids=[c[0] for c in CASES])
def test_printed_index_expression_is_exact(module, name, e, how):
    dtype = torch.float32 if how == "float" else torch.int32
    out = torch.zeros(NP, NM, dtype=dtype)
    getattr(module, f"k_{name}")[(1,)](out, H_VALUE, A=A_VALUE, NP=NP, NM=NM)
    want = _exact(e)
    got = out.numpy().astype(np.float64)
    if how == "float":
        np.testing.assert_allclose(got, want, rtol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


def test_cases_cover_both_signs_and_the_float_traps():
    """The grid really contains the points where the old printers went wrong."""
    assert NP > H_VALUE and (A_VALUE - 20) % 3 != 0 and A_VALUE - 20 < 0
    assert np.floor(np.float32(H_VALUE) * (np.float32(1) / np.float32(H_VALUE))) == 0
    assert (np.float32(5) / np.float32(3) - np.float32(2) / np.float32(3) >= 1) != (5 - 2 >= 3)
    assert float(np.float32(2**25 + 1)) != 2**25 + 1


def test_float_value_does_not_call_to_on_names():
    pr = IndexPrinter(NAMES)
    assert ".to(" not in pr.float_value(A) and pr.float_value(sympy.Integer(3)) == "3.0"


def test_nonnegative_tensor_numerators_divide_unsigned():
    pr = IndexPrinter(NAMES, context="test", tensors=(p, m))
    assert "tl.uint32) // 8" in pr.value(sympy.floor((p + 3 * m) / 8))
    assert "tl.uint32) % 6" in pr.value(sympy.Mod(p + m, 6))
    # a numerator that may be negative keeps the floor helpers; one without tensors stays signed
    assert "_floordiv" in pr.value(sympy.floor((p - m) / 3))
    assert "uint32" not in IndexPrinter(NAMES, context="test").value(sympy.Mod(p + m, 6))
