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

from _helpers import A_SYM as A  # noqa: E402
from _helpers import INDEX_A_VALUE as A_VALUE  # noqa: E402
from _helpers import INDEX_CASES as CASES  # noqa: E402
from _helpers import INDEX_H_VALUE as H_VALUE  # noqa: E402
from _helpers import INDEX_NM as NM  # noqa: E402
from _helpers import INDEX_NP as NP  # noqa: E402

from einfuse.codegen.triton.index_printer import HELPERS, IndexPrinter
from einfuse.codegen.triton.loader import load_module
from einfuse.frontends.dsl import m, p
from einfuse.ir.ranks import HEAD_EXTENT as H

NAMES = {p: "p", m: "m", H: "H", A: "A"}


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
