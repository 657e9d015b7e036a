"""Small helpers shared by test modules.

Importable as ``from _helpers import ...`` because pytest (prepend import mode, no ``__init__.py``)
puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``, which it always does first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy


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
