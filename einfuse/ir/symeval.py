"""Evaluate sympy index expressions and predicates over NumPy grids, exactly for integers.

sympy's ``lambdify`` prints ``Max`` as ``amax`` (which does not broadcast) and turns ``floor(p/49)``
into a float product that can round 49*(1/49) below 1. This evaluator walks the expression itself:
rational coefficients divide last, so integer index arithmetic is exact for every index below 2**53.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import sympy
from sympy.core.relational import Relational

_REL = {
    sympy.StrictLessThan: np.less, sympy.LessThan: np.less_equal,
    sympy.StrictGreaterThan: np.greater, sympy.GreaterThan: np.greater_equal,
    sympy.Equality: np.equal, sympy.Unequality: np.not_equal,
}


def evaluate(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> np.ndarray:
    """Evaluate ``expr`` with symbols bound to arrays (or numbers) in ``env``; broadcasting applies."""
    return np.asarray(_ev(sympy.sympify(expr), env))


def _ev(e: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> object:
    if isinstance(e, sympy.Symbol):
        if e not in env:
            raise KeyError(e)
        return env[e]
    if e is sympy.true:
        return np.bool_(True)
    if e is sympy.false:
        return np.bool_(False)
    if isinstance(e, sympy.Integer):
        return np.float64(int(e))
    if isinstance(e, sympy.Rational):
        return np.float64(e.p) / np.float64(e.q)
    if e.is_Number:
        if e == sympy.oo:
            return np.float64(np.inf)
        if e == -sympy.oo:
            return np.float64(-np.inf)
        return np.float64(float(e))
    if isinstance(e, sympy.Add):
        return functools.reduce(np.add, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Mul):
        # numerator and denominator separately, divided last: p/X and p/49 are exact when divisible
        num: object = np.float64(1.0)
        den: object = np.float64(1.0)
        for a in e.args:
            if isinstance(a, sympy.Pow) and a.exp.is_Integer and a.exp < 0:
                den = den * _ev(a.base ** (-a.exp), env)
            elif isinstance(a, sympy.Rational) and not isinstance(a, sympy.Integer):
                num, den = num * np.float64(a.p), den * np.float64(a.q)
            else:
                num = num * _ev(a, env)
        return num / den
    if isinstance(e, sympy.Pow):
        return np.power(np.asarray(_ev(e.base, env), dtype=np.float64), _ev(e.exp, env))
    if isinstance(e, sympy.floor):
        return np.floor(_ev(e.args[0], env))
    if isinstance(e, sympy.ceiling):
        return np.ceil(_ev(e.args[0], env))
    if isinstance(e, sympy.Mod):
        return np.mod(_ev(e.args[0], env), _ev(e.args[1], env))
    if isinstance(e, sympy.Abs):
        return np.abs(_ev(e.args[0], env))
    if isinstance(e, sympy.Max):
        return functools.reduce(np.maximum, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Min):
        return functools.reduce(np.minimum, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.exp):
        return np.exp(_ev(e.args[0], env))
    if isinstance(e, sympy.log):
        return np.log(_ev(e.args[0], env))
    if isinstance(e, sympy.sign):
        return np.sign(_ev(e.args[0], env))
    if isinstance(e, Relational):
        return _REL[type(e)](_ev(e.lhs, env), _ev(e.rhs, env))
    if isinstance(e, sympy.And):
        return functools.reduce(np.logical_and, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Or):
        return functools.reduce(np.logical_or, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Not):
        return np.logical_not(_ev(e.args[0], env))
    if isinstance(e, sympy.Piecewise):
        out = None
        for val, cond in reversed(e.args):
            v = _ev(val, env)
            out = v if out is None else np.where(_ev(cond, env), v, out)
        return out
    raise TypeError(f"cannot evaluate {e} ({type(e).__name__}) numerically")


def evaluate_int(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]) -> np.ndarray:
    """Evaluate an integer-valued index expression and return int64 (exact below 2**53)."""
    return np.rint(evaluate(expr, env)).astype(np.int64)
