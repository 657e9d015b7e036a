"""Evaluate sympy index predicates on torch tensors (on the GPU when the tensors live there).

Used to classify tile pairs exactly when tiles are not contiguous runs (box tile orders), where a
dense check of every (query, key) pair is the simplest exact method and the GPU does it in
milliseconds. Arithmetic is float64 with rational coefficients divided last, like
:mod:`einfuse.ir.symeval`, so integer index arithmetic is exact below 2**53.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping

import sympy
from sympy.core.relational import Relational


def evaluate(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]):
    """Evaluate ``expr`` with symbols bound to torch tensors or numbers; broadcasting applies."""
    return compile_expr(expr)(env)


def compile_expr(expr: sympy.Basic) -> Callable[[Mapping[sympy.Symbol, object]], object]:
    """A closure of torch operations computing ``expr`` from an environment of symbol values.

    The sympy tree is walked once, here; the closure does torch arithmetic only, so it can run
    inside traced code (FlexAttention's score_mod/mask_mod under torch.compile).
    """
    return _c(sympy.sympify(expr))


def _c(e: sympy.Basic):
    import torch

    if isinstance(e, sympy.Symbol):
        def sym(env, e=e):
            if e not in env:
                raise KeyError(e)
            return env[e]
        return sym
    if e is sympy.true or e is sympy.false:
        val = e is sympy.true
        return lambda env: val
    if isinstance(e, sympy.Integer):
        ival = float(int(e))
        return lambda env: ival
    if isinstance(e, sympy.Rational):
        rval = float(e.p) / float(e.q)
        return lambda env: rval
    if e.is_Number:
        nval = float(e)
        return lambda env: nval
    args = [_c(a) for a in e.args]
    if isinstance(e, sympy.Add):
        return lambda env: functools.reduce(lambda a, b: a + b, (f(env) for f in args))
    if isinstance(e, sympy.Mul):
        coeff, rest = e.as_coeff_Mul()
        if isinstance(coeff, sympy.Rational) and not isinstance(coeff, sympy.Integer) and rest != e:
            num, den, frest = float(coeff.p), float(coeff.q), _c(rest)
            return lambda env: (frest(env) * num) / den  # rational coefficients divide last: exact
        return lambda env: functools.reduce(lambda a, b: a * b, (f(env) for f in args))
    if isinstance(e, sympy.Pow):
        return lambda env: _t(args[0](env)) ** args[1](env)
    unary = {sympy.floor: torch.floor, sympy.ceiling: torch.ceil, sympy.Abs: torch.abs,
             sympy.exp: torch.exp, sympy.log: torch.log}
    for cls, fn in unary.items():
        if isinstance(e, cls):
            return lambda env, fn=fn: fn(_t(args[0](env)))
    if isinstance(e, sympy.Mod):
        return lambda env: torch.remainder(_t(args[0](env)), args[1](env))
    if isinstance(e, (sympy.Max, sympy.Min)):
        fn2 = torch.maximum if isinstance(e, sympy.Max) else torch.minimum
        return lambda env: functools.reduce(lambda a, b: fn2(_t(a), _t(b)), (f(env) for f in args))
    if isinstance(e, Relational):
        op = {sympy.StrictLessThan: operator.lt, sympy.LessThan: operator.le, sympy.StrictGreaterThan: operator.gt,
              sympy.GreaterThan: operator.ge, sympy.Equality: operator.eq, sympy.Unequality: operator.ne}[type(e)]
        return lambda env: op(_t(args[0](env)), args[1](env))
    if isinstance(e, sympy.And):
        return lambda env: functools.reduce(lambda a, b: a & b, (f(env) for f in args))
    if isinstance(e, sympy.Or):
        return lambda env: functools.reduce(lambda a, b: a | b, (f(env) for f in args))
    if isinstance(e, sympy.Not):
        return lambda env: ~_t(args[0](env))
    raise TypeError(f"cannot evaluate {e} ({type(e).__name__}) on tensors")


def _t(x):
    import torch

    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)
