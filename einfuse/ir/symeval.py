"""Evaluate sympy index expressions and predicates over NumPy grids, exactly for integers.

sympy's ``lambdify`` prints ``Max`` as ``amax`` (which does not broadcast) and turns ``floor(p/49)``
into a float product that can round 49*(1/49) below 1. This evaluator walks the expression itself.

Why fractions: sympy stores ``floor((p - m)/3)`` as ``floor(p/3 - m/3)``; adding the two thirds in
float64 gives ``8/3 - 5/3 = 0.999...`` and a floor of 0. So every numeric sub-expression is carried
as a fraction ``(numerator, denominator)``: sums are put over a common denominator (the LCM of
constant denominators, the product of symbolic ones) and only ``floor``/``ceiling``/``Mod``/
comparisons look at the fraction, with floor division and cross-multiplication, never a rounded
quotient. With integer inputs every numerator is an exact integer in float64 below 2**53, so results
are exact; genuinely float expressions (``exp``, non-integer inputs) behave as plain float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import sympy
from sympy.core.function import AppliedUndef
from sympy.core.relational import Relational

from einfuse.ir.bitwise import NUMPY_NAMES

_REL = {
    sympy.StrictLessThan: np.less, sympy.LessThan: np.less_equal,
    sympy.StrictGreaterThan: np.greater, sympy.GreaterThan: np.greater_equal,
    sympy.Equality: np.equal, sympy.Unequality: np.not_equal,
}

# A value as numerator / denominator. The denominator is a positive Python int (constants: exact
# LCMs stay small) or an array / NumPy scalar of either sign (symbolic denominators such as p/X).
Frac = tuple[object, object]


def evaluate(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> np.ndarray:
    """Evaluate ``expr`` with symbols bound to arrays (or numbers) in ``env``; broadcasting applies."""
    return np.asarray(_ev(sympy.sympify(expr), env))


def evaluate_int(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> np.ndarray:
    """Evaluate an integer-valued index expression and return int64 (exact below 2**53)."""
    return np.rint(evaluate(expr, env)).astype(np.int64)


def _ev(e: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> object:
    """The value of ``e``: its fraction divided once, at the end (booleans pass through)."""
    num, den = _q(e, env)
    return num if _is_one(den) else num / den


def _is_one(d: object) -> bool:
    return isinstance(d, int) and d == 1


def _q(e: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> Frac:
    """``e`` as a fraction; see the module docstring for why."""
    if isinstance(e, sympy.Symbol):
        if e not in env:
            raise KeyError(e)
        return env[e], 1
    if isinstance(e, AppliedUndef):  # a read of a captured tensor (einfuse.ir.captures): a gather
        return gather(e, env), 1
    if e is sympy.true:
        return np.bool_(True), 1
    if e is sympy.false:
        return np.bool_(False), 1
    if isinstance(e, sympy.Integer):
        return np.float64(int(e)), 1
    if isinstance(e, sympy.Rational):
        return np.float64(e.p), int(e.q)
    if e.is_Number:
        if e == sympy.oo:
            return np.float64(np.inf), 1
        if e == -sympy.oo:
            return np.float64(-np.inf), 1
        return np.float64(float(e)), 1
    if isinstance(e, sympy.Add):
        return functools.reduce(_add, (_q(a, env) for a in e.args))
    if isinstance(e, sympy.Mul):
        return functools.reduce(_mul, (_q(a, env) for a in e.args))
    if isinstance(e, sympy.Pow):
        return _pow(e, env)
    if isinstance(e, sympy.floor):
        n, d = _q(e.args[0], env)
        return (np.floor(n) if _is_one(d) else np.floor_divide(n, d)), 1
    if isinstance(e, sympy.ceiling):
        n, d = _q(e.args[0], env)
        return (np.ceil(n) if _is_one(d) else -np.floor_divide(-n, d)), 1
    if isinstance(e, sympy.Mod):
        # Mod(a/b, c/d) = Mod(a*d, c*b) / (b*d): scaling both operands by any non-zero k scales
        # the result by k, since floor(k*x / (k*y)) = floor(x / y)
        (an, ad), (cn, cd) = _q(e.args[0], env), _q(e.args[1], env)
        return np.mod(an * cd, cn * ad), _times(ad, cd)
    if isinstance(e, sympy.Abs):
        n, d = _q(e.args[0], env)
        return np.abs(n), (d if isinstance(d, int) else np.abs(d))
    if isinstance(e, (sympy.Max, sympy.Min)):
        fn = np.maximum if isinstance(e, sympy.Max) else np.minimum
        return _extremum(fn, [_q(a, env) for a in e.args])
    if isinstance(e, Relational):
        a, b = _common(_q(e.lhs, env), _q(e.rhs, env))
        return _REL[type(e)](a, b), 1
    if isinstance(e, sympy.exp):
        return np.exp(_ev(e.args[0], env)), 1
    if isinstance(e, sympy.log):
        return np.log(_ev(e.args[0], env)), 1
    if isinstance(e, sympy.sign):
        n, d = _q(e.args[0], env)
        return (np.sign(n) if isinstance(d, int) else np.sign(n) * np.sign(d)), 1
    if type(e) in NUMPY_NAMES:  # bitand/bitor/bitxor of integers
        fn = getattr(np, NUMPY_NAMES[type(e)])
        ints = [np.rint(np.asarray(_ev(a, env), dtype=np.float64)).astype(np.int64) for a in e.args]
        return fn(*ints).astype(np.float64), 1
    if isinstance(e, sympy.And):
        return functools.reduce(np.logical_and, (_ev(a, env) for a in e.args)), 1
    if isinstance(e, sympy.Or):
        return functools.reduce(np.logical_or, (_ev(a, env) for a in e.args)), 1
    if isinstance(e, sympy.Not):
        return np.logical_not(_ev(e.args[0], env)), 1
    if isinstance(e, sympy.Xor):
        return functools.reduce(np.logical_xor, (_ev(a, env) for a in e.args)), 1
    if isinstance(e, sympy.Piecewise):
        out = None
        for val, cond in reversed(e.args):
            v = _ev(val, env)
            out = v if out is None else np.where(_ev(cond, env), v, out)
        return out, 1
    raise TypeError(f"cannot evaluate {e} ({type(e).__name__}) numerically")


def gather(e: AppliedUndef, env: Mapping[object, object]) -> np.ndarray:
    """``NAME(i0, i1, ...)`` from the array bound to ``NAME``'s function in ``env``, each index
    rounded to an integer and clamped to the array's extent on its dimension (the captured-tensor
    semantics of :mod:`einfuse.ir.captures`)."""
    arr = env.get(e.func)
    if arr is None:
        raise KeyError(e.func.__name__)
    arr = np.asarray(arr)
    if arr.ndim != len(e.args):
        raise ValueError(f"captured tensor {e.func.__name__} has {arr.ndim} dimension(s); it is read with "
                         f"{len(e.args)} indices")
    idx = tuple(np.clip(np.rint(np.asarray(_ev(a, env), dtype=np.float64)).astype(np.int64), 0, n - 1)
                for a, n in zip(e.args, arr.shape))
    return np.asarray(arr[idx], dtype=np.float64)


def _times(a: object, b: object) -> object:
    return a * b if isinstance(a, int) and isinstance(b, int) else np.multiply(a, b)


def _common(x: Frac, y: Frac) -> tuple[object, object]:
    """Numerators of ``x`` and ``y`` over one positive denominator, so that they compare (and add)
    exactly. Constant denominators use their LCM; symbolic ones cross-multiply, with the sign of the
    product folded in so that the order is kept."""
    (xn, xd), (yn, yd) = x, y
    if isinstance(xd, int) and isinstance(yd, int):
        if xd == yd:
            return xn, yn
        lcm = math.lcm(xd, yd)
        return xn * (lcm // xd), yn * (lcm // yd)
    s = np.sign(np.multiply(xd, yd))
    return xn * yd * s, yn * xd * s


def _add(x: Frac, y: Frac) -> Frac:
    (xn, xd), (yn, yd) = x, y
    a, b = _common(x, y)
    if isinstance(xd, int) and isinstance(yd, int):
        return a + b, math.lcm(xd, yd)
    return xn * yd + yn * xd, np.multiply(xd, yd)


def _mul(x: Frac, y: Frac) -> Frac:
    return x[0] * y[0], _times(x[1], y[1])


def _extremum(fn: np.ufunc, args: list[Frac]) -> Frac:
    """Max/Min over a common constant denominator (exact); symbolic denominators fall back to the
    divided values, each rounded once."""
    if all(isinstance(d, int) for _, d in args):
        lcm = math.lcm(*(d for _, d in args))
        return functools.reduce(fn, (n * (lcm // d) for n, d in args)), lcm
    return functools.reduce(fn, (n if _is_one(d) else n / d for n, d in args)), 1


def _pow(e: sympy.Pow, env: Mapping[sympy.Symbol, object]) -> Frac:
    base, ex = e.args
    if ex.is_Integer:
        n, d = _q(base, env)
        k = int(ex)
        if k < 0:  # (n/d)**-k = d**k / n**k; keep the denominator's sign in the numerator
            n, d, k = d, n, -k
            if not isinstance(d, int):
                d = np.asarray(d, dtype=np.float64)
                n = n * np.where(d < 0, -1.0, 1.0)
                d = np.abs(d)
        n = np.power(np.asarray(n, dtype=np.float64), k)
        return n, (d**k if isinstance(d, int) else np.power(d, k))
    return np.power(np.asarray(_ev(base, env), dtype=np.float64), _ev(ex, env)), 1
