"""Evaluate sympy index predicates on torch tensors (on the GPU when the tensors live there).

Used to classify tile pairs exactly when tiles are not contiguous runs (box tile orders), where a
dense check of every (query, key) pair is the simplest exact method and the GPU does it in
milliseconds; also FlexAttention's ``mask_mod``/``score_mod`` peers. A misclassified tile (EMPTY
instead of PARTIAL) silently drops keys from a kernel's output, so integer results must be exact.

Why fractions (as in :mod:`einfuse.ir.symeval`): sympy stores ``floor((p - m)/3)`` as
``floor(p/3 - m/3)``; adding the two thirds in float64 gives ``8/3 - 5/3 = 0.999...`` and a floor
of 0. So every sub-expression is carried as ``(numerator, denominator)``: sums go over a common
denominator (the LCM of constant denominators, the product of symbolic ones), and only
``floor``/``ceiling``/``Mod``/comparisons/``Max``/``Min`` look at the fraction, with floor division
and cross-multiplication, never a rounded quotient. With integer inputs (float64 or integer
tensors) every numerator is an exact integer below 2**53, so results are exact; genuinely float
expressions (``exp``, non-integer inputs) behave as plain float64. The closures branch only on
Python types fixed when the sympy tree is compiled, never on tensor values, so they trace.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping

import sympy
from sympy.core.function import AppliedUndef
from sympy.core.relational import Relational

from einfuse.ir.bitwise import NUMPY_NAMES

# numerator / denominator: the denominator is a positive Python int (constant coefficients: exact
# LCMs stay small) or a tensor / float of either sign (symbolic denominators such as p/X)
Frac = tuple[object, object]
_Fn = Callable[[Mapping[sympy.Symbol, object]], Frac]

_REL = {
    sympy.StrictLessThan: operator.lt, sympy.LessThan: operator.le, sympy.StrictGreaterThan: operator.gt,
    sympy.GreaterThan: operator.ge, sympy.Equality: operator.eq, sympy.Unequality: operator.ne,
}


def evaluate(expr: sympy.Basic, env: Mapping[sympy.Symbol, object]):
    """Evaluate ``expr`` with symbols bound to torch tensors or numbers; broadcasting applies."""
    return compile_expr(expr)(env)


def compile_expr(expr: sympy.Basic) -> Callable[[Mapping[sympy.Symbol, object]], object]:
    """A closure of torch operations computing ``expr`` from an environment of symbol values.

    The sympy tree is walked once, here; the closure does torch arithmetic only, so it can run
    inside traced code (FlexAttention's score_mod/mask_mod under torch.compile). The fraction is
    divided once, at the end.
    """
    f = _c(sympy.sympify(expr))
    return lambda env: _value(f(env))


def _value(x: Frac) -> object:
    """The fraction divided, in float64 (integer tensors would divide into float32)."""
    num, den = x
    if _is_one(den):
        return num
    if hasattr(num, "is_floating_point") and not num.is_floating_point():
        num = num.double()
    return num / den


def _is_one(d: object) -> bool:
    return isinstance(d, int) and d == 1


def _c(e: sympy.Basic) -> _Fn:
    """``e`` compiled to a closure returning its fraction; see the module docstring for why."""
    import torch

    if isinstance(e, sympy.Symbol):
        def sym(env, e=e):
            if e not in env:
                raise KeyError(e)
            return env[e], 1
        return sym
    if e is sympy.true or e is sympy.false:
        val = e is sympy.true
        return lambda env: (val, 1)
    if isinstance(e, sympy.Integer):
        ival = int(e)  # a Python int keeps integer tensors integer (and float64 ones float64)
        return lambda env: (ival, 1)
    if isinstance(e, sympy.Rational):
        rnum, rden = int(e.p), int(e.q)
        return lambda env: (rnum, rden)
    if e.is_Number or isinstance(e, sympy.NumberSymbol):  # floats, oo, E, pi
        nval = float(e)
        return lambda env: (nval, 1)
    if isinstance(e, sympy.Piecewise):
        return _piecewise(e)
    args = [_c(a) for a in e.args]
    if isinstance(e, AppliedUndef):  # a read of a captured tensor (einfuse.ir.captures)
        return _gather(e.func, args)
    if isinstance(e, sympy.Add):
        return lambda env: functools.reduce(_add, (f(env) for f in args))
    if isinstance(e, sympy.Mul):
        return lambda env: functools.reduce(_mul, (f(env) for f in args))
    if isinstance(e, sympy.Pow):
        return _pow(e, args)
    if isinstance(e, sympy.floor):
        return lambda env: (_floordiv(*args[0](env)), 1)
    if isinstance(e, sympy.ceiling):
        def ceil(env):
            n, d = args[0](env)
            return -_floordiv(-_t(n), d), 1
        return ceil
    if isinstance(e, sympy.Mod):
        # Mod(a/b, c/d) = Mod(a*d, c*b) / (b*d): scaling both operands by any non-zero k scales the
        # result by k, since floor(k*x / (k*y)) = floor(x / y)
        def mod(env):
            (an, ad), (cn, cd) = args[0](env), args[1](env)
            return torch.remainder(_t(an * cd), cn * ad), ad * cd
        return mod
    if isinstance(e, sympy.Abs):
        def absolute(env):
            n, d = args[0](env)
            return torch.abs(_t(n)), (d if isinstance(d, int) else abs(d))
        return absolute
    if isinstance(e, (sympy.Max, sympy.Min)):
        fn = torch.maximum if isinstance(e, sympy.Max) else torch.minimum
        return lambda env: _extremum(fn, [f(env) for f in args])
    if isinstance(e, Relational):
        op = _REL[type(e)]

        def rel(env):
            a, b = _common(args[0](env), args[1](env))
            return op(_t(a), b), 1
        return rel
    if isinstance(e, sympy.sign):
        def sign(env):
            n, d = args[0](env)
            s = torch.sign(_t(n))
            return (s if isinstance(d, int) else s * torch.sign(_t(d))), 1
        return sign
    unary = {sympy.exp: torch.exp, sympy.log: torch.log}
    for cls, fn1 in unary.items():
        if isinstance(e, cls):
            return lambda env, fn1=fn1: (fn1(_t(_value(args[0](env)))), 1)
    if type(e) in NUMPY_NAMES:  # bitand/bitor/bitxor of integers, in int64, back to float64
        fn2 = getattr(torch, NUMPY_NAMES[type(e)])

        def bitwise(env, fn2=fn2):
            a, b = (_int64(_value(f(env))) for f in args)
            return fn2(a, b).double(), 1
        return bitwise
    if isinstance(e, sympy.And):
        return lambda env: (functools.reduce(operator.and_, (_value(f(env)) for f in args)), 1)
    if isinstance(e, sympy.Or):
        return lambda env: (functools.reduce(operator.or_, (_value(f(env)) for f in args)), 1)
    if isinstance(e, sympy.Not):
        return lambda env: (~_t(_value(args[0](env))), 1)
    if isinstance(e, sympy.Xor):
        return lambda env: (functools.reduce(operator.xor, (_t(_value(f(env))) for f in args)), 1)
    raise TypeError(f"cannot evaluate {e} ({type(e).__name__}) on tensors")


def _gather(key: object, args: list[_Fn]) -> _Fn:
    """A gather from the tensor bound to ``key`` (a captured tensor's read function) in the
    environment, each index clamped to its dimension (einfuse.ir.captures), as float64."""
    def gather(env):
        if key not in env:
            raise KeyError(key)
        t = env[key]
        idx = tuple(_int64(_value(f(env))).to(t.device).clamp(0, n - 1) for f, n in zip(args, t.shape))
        return t[idx].double(), 1
    return gather


def _piecewise(e: sympy.Piecewise) -> _Fn:
    import torch

    branches = [(_c(val), _c(cond)) for val, cond in e.args]

    def pw(env):
        out = None
        for val, cond in reversed(branches):
            v = _value(val(env))
            out = v if out is None else torch.where(_t(_value(cond(env))), _t(v), _t(out))
        return out, 1
    return pw


def _floordiv(n: object, d: object) -> object:
    """``floor(n / d)`` without rounding the quotient first (torch's floor division of float64
    integers is exact: it divides the remainder-free part)."""
    import torch

    if _is_one(d):
        return torch.floor(_t(n)) if _t(n).is_floating_point() else _t(n)
    return torch.div(_t(n), d, rounding_mode="floor")


def _common(x: Frac, y: Frac) -> tuple[object, object]:
    """Numerators of ``x`` and ``y`` over one positive denominator, so that they compare (and add)
    exactly. Constant denominators use their LCM; symbolic ones cross-multiply, with the sign of
    the product folded in so that the order is kept."""
    import torch

    (xn, xd), (yn, yd) = x, y
    if isinstance(xd, int) and isinstance(yd, int):
        if xd == yd:
            return xn, yn
        lcm = math.lcm(xd, yd)
        return xn * (lcm // xd), yn * (lcm // yd)
    s = torch.sign(_t(xd * yd))
    return xn * yd * s, yn * xd * s


def _add(x: Frac, y: Frac) -> Frac:
    (xn, xd), (yn, yd) = x, y
    if isinstance(xd, int) and isinstance(yd, int):
        a, b = _common(x, y)
        return a + b, math.lcm(xd, yd)
    return xn * yd + yn * xd, xd * yd


def _mul(x: Frac, y: Frac) -> Frac:
    return x[0] * y[0], x[1] * y[1]


def _extremum(fn: Callable, args: list[Frac]) -> Frac:
    """Max/Min over a common constant denominator (exact); symbolic denominators fall back to the
    divided values, each rounded once."""
    if all(isinstance(d, int) for _, d in args):
        lcm = math.lcm(*(d for _, d in args))
        return functools.reduce(lambda a, b: fn(_t(a), _t(b)), (n * (lcm // d) for n, d in args)), lcm
    return functools.reduce(lambda a, b: fn(_t(a), _t(b)), (_value(a) for a in args)), 1


def _pow(e: sympy.Pow, args: list[_Fn]) -> _Fn:
    """Integer powers keep the fraction ((n/d)**-k = d**k / n**k); others are plain float64."""
    import torch

    ex = e.args[1]
    if ex.is_Integer:
        k = int(ex)

        def ipow(env):
            n, d = args[0](env)
            kk = k
            if kk < 0:  # keep the new denominator positive: its sign moves into the numerator
                n, d, kk = d, n, -kk
                if not isinstance(d, int):
                    d = _t(d)
                    n = n * torch.where(d < 0, -1.0, 1.0)
                    d = torch.abs(d)
            return _t(n) ** kk, (d**kk if isinstance(d, int) else _t(d) ** kk)
        return ipow
    return lambda env: (_t(_value(args[0](env))) ** _value(args[1](env)), 1)


def _int64(x):
    """An integer-valued tensor or number as an int64 tensor (float64 integers are exact)."""
    import torch

    t = _t(x)
    return t if t.dtype == torch.int64 else torch.round(t).to(torch.int64) if t.is_floating_point() else t.long()


def _t(x):
    """``x`` as a tensor (Python numbers become float64 scalars; tensors pass through)."""
    import torch

    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)
