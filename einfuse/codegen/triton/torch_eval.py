"""Evaluate sympy index predicates on torch tensors (on the GPU when the tensors live there).

Used to classify tile pairs exactly when tiles are not contiguous runs (box tile orders), where a
dense check of every (query, key) pair is the simplest exact method and the GPU does it in
milliseconds. Arithmetic is float64 with rational coefficients divided last, like
:mod:`einfuse.ir.symeval`, so integer index arithmetic is exact below 2**53.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import sympy
from sympy.core.relational import Relational


def evaluate(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]):
    """Evaluate ``expr`` with symbols bound to torch tensors or numbers; broadcasting applies."""
    return _ev(sympy.sympify(expr), env)


def _ev(e: sympy.Basic, env: Mapping[sympy.Symbol, object]):
    import torch

    if isinstance(e, sympy.Symbol):
        if e not in env:
            raise KeyError(e)
        return env[e]
    if e is sympy.true:
        return True
    if e is sympy.false:
        return False
    if isinstance(e, sympy.Integer):
        return float(int(e))
    if isinstance(e, sympy.Rational):
        return float(e.p) / float(e.q)
    if e.is_Number:
        return float(e)
    if isinstance(e, sympy.Add):
        return functools.reduce(lambda a, b: a + b, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Mul):
        coeff, rest = e.as_coeff_Mul()
        if isinstance(coeff, sympy.Rational) and not isinstance(coeff, sympy.Integer) and rest != e:
            return (_ev(rest, env) * float(coeff.p)) / float(coeff.q)
        return functools.reduce(lambda a, b: a * b, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Pow):
        return _t(_ev(e.base, env)) ** _ev(e.exp, env)
    if isinstance(e, sympy.floor):
        return torch.floor(_t(_ev(e.args[0], env)))
    if isinstance(e, sympy.ceiling):
        return torch.ceil(_t(_ev(e.args[0], env)))
    if isinstance(e, sympy.Mod):
        return torch.remainder(_t(_ev(e.args[0], env)), _ev(e.args[1], env))
    if isinstance(e, sympy.Abs):
        return torch.abs(_t(_ev(e.args[0], env)))
    if isinstance(e, (sympy.Max, sympy.Min)):
        fn = torch.maximum if isinstance(e, sympy.Max) else torch.minimum
        return functools.reduce(lambda a, b: fn(_t(a), _t(b)), (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.exp):
        return torch.exp(_t(_ev(e.args[0], env)))
    if isinstance(e, sympy.log):
        return torch.log(_t(_ev(e.args[0], env)))
    if isinstance(e, Relational):
        a, b = _ev(e.lhs, env), _ev(e.rhs, env)
        return {sympy.StrictLessThan: lambda: a < b, sympy.LessThan: lambda: a <= b,
                sympy.StrictGreaterThan: lambda: a > b, sympy.GreaterThan: lambda: a >= b,
                sympy.Equality: lambda: _t(a) == b, sympy.Unequality: lambda: _t(a) != b}[type(e)]()
    if isinstance(e, sympy.And):
        return functools.reduce(lambda a, b: a & b, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Or):
        return functools.reduce(lambda a, b: a | b, (_ev(a, env) for a in e.args))
    if isinstance(e, sympy.Not):
        return ~_t(_ev(e.args[0], env))
    raise TypeError(f"cannot evaluate {e} ({type(e).__name__}) on tensors")


def _t(x):
    import torch

    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)
