"""Small helpers shared by test modules.

Importable as ``from _helpers import ...`` because pytest (prepend import mode, no ``__init__.py``)
puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``, which it always does first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy

from einfuse.ir.bitwise import bitand, bitor, bitxor


def _as_f64(x: Any) -> np.ndarray:
    """NumPy float64 view of an array or a (CPU or GPU) torch tensor, so errors are measured exactly."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_err(got: Any, want: Any) -> float:
    """Relative error ``||got - want||_2 / ||want||_2`` (Frobenius over all elements), in float64.

    One norm-wise metric for every kernel-vs-reference check, so tolerances mean the same thing across
    the suite. Non-finite results fail loudly here rather than as an opaque ``nan < tol``; the floor
    on the denominator only matters for an all-zero reference.
    """
    g, w = _as_f64(got), _as_f64(want)
    assert np.isfinite(g).all(), "result has non-finite values"
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))


# symbols and cases shared by the exact-evaluation tests of symeval (NumPy) and torch_eval (torch)
P_SYM, M_SYM = sympy.symbols("p m", integer=True)
X_SYM = sympy.Symbol("X", integer=True, positive=True)
_p, _m, _X = P_SYM, M_SYM, X_SYM
FRACTION_SUM_CASES = [  # (expression, env, exact value): sympy rewrites (p-m)/3 as p/3 - m/3
    (sympy.floor((_p - _m) / 3), {_p: 8, _m: 5}, 1),
    (sympy.ceiling((_m - _p) / 3), {_p: 8, _m: 5}, -1),
    (sympy.Mod(sympy.floor((_p - _m) / 3), 2), {_p: 11, _m: 5}, 0),
    (sympy.Mod((_p - _m) / 3, 1), {_p: 8, _m: 5}, 0),
    (sympy.Ge(_p / 3 - _m / 3, 1), {_p: 5, _m: 2}, True),
    (sympy.Eq(_p / 3 - _m / 3, 1), {_p: 5, _m: 2}, True),
    (sympy.floor(_p / _X - _m / _X), {_p: 8, _m: 5, _X: 3}, 1),
    (sympy.Max(_p / 3 - _m / 3, 0) >= 1, {_p: 5, _m: 2}, True),
]


def exact_value(e: sympy.Basic, env: dict) -> float:
    """``e`` at integer ``env`` in sympy's exact rational arithmetic (booleans as 0/1)."""
    v = e.xreplace({s: sympy.Integer(int(x)) for s, x in env.items()})
    return float(bool(v)) if isinstance(v, sympy.logic.boolalg.BooleanAtom) else float(v)


# ---- index printer cases (Triton and C++ printers, both against sympy's exact evaluation) ----------
from einfuse.frontends.dsl import m as _m  # noqa: E402
from einfuse.frontends.dsl import p as _p  # noqa: E402
from einfuse.ir.ranks import HEAD_EXTENT as _H  # noqa: E402

p, m, H = _p, _m, _H
A_SYM = sympy.Symbol("A", integer=True)  # bound to a tl.constexpr: a Python int inside the kernel
INDEX_NP, INDEX_NM = 64, 16  # p in [0, 64), m in [0, 16): differences of both signs
INDEX_H_VALUE, INDEX_A_VALUE = 41, 6  # 41 * float32(1/41) rounds below 1; A - 20 = -14 is not a multiple of 3

# (name, expression, how to print it: value | float | predicate)
INDEX_CASES = [
    ("floor_neg", sympy.floor((p - m) / 3), "value"),
    ("ceil_neg", sympy.ceiling((m - p) / 4), "value"),
    ("mod_neg", sympy.Mod(m - p, 5), "value"),
    ("floor_size", sympy.floor(p / H), "value"),  # float p*(1/41) floors 41 to 0
    ("floor_size_neg", sympy.floor((m - p) / H), "value"),
    ("mod_size", sympy.Mod(m - p, H), "value"),
    ("floor_constexpr", sympy.floor((A_SYM - 20) / 3), "value"),  # Python // floors, tensors' truncate
    ("ceil_constexpr", sympy.ceiling((A_SYM - 20) / 4), "value"),
    ("frac_bound", sympy.Ge(p / 3 - m / 3, 1), "predicate"),  # float compare fails at p=5, m=2
    ("window", sympy.And(m >= p - 3, m < p + 5), "predicate"),  # one unsigned compare
    ("piecewise_int", sympy.Piecewise((p + 2**25, p > m), (m - 2**25, True)), "value"),
    ("min_max", sympy.Max(p - 2 * m, sympy.Min(m - p, -3)), "value"),
    ("float_constexpr", A_SYM * p / 7, "float"),
    ("float_name", A_SYM, "float"),
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


