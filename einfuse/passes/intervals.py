"""Interval bounds of sympy index expressions over boxes of indices, vectorised over many boxes.

Used by block sparsity to decide, for every (query tile, key tile) box at once, whether a mask
predicate is certainly true or certainly false there. Every bound is *sound*: the true range of the
expression over the box lies inside ``[lo, hi]``. Soundness with floats rests on two rules:

* integer arithmetic is exact (all index values are integers below 2**53);
* a rational ``a/b`` is never rounded before a ``floor``, ``ceiling``, ``Mod`` or a comparison:
  those split their argument into numerator and denominator (``as_numer_denom``) and use exact floor
  division; anything still fractional elsewhere is widened outward by a relative 1e-9.

What the evaluator does not understand yields ``(-inf, inf)``, which makes an atom undecided, never
wrong. Predicates are decided in three-valued logic as a pair of boolean arrays
``(certainly_true, certainly_false)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanFunction, to_nnf

from einfuse.ir.bitwise import bitand, bitor, bitxor

Interval = tuple[np.ndarray, np.ndarray]
_WIDEN = 1e-9


def _const(v: float) -> Interval:
    a = np.asarray(float(v))
    return a, a


def _unknown() -> Interval:
    return np.asarray(-np.inf), np.asarray(np.inf)


def _widen(iv: Interval) -> Interval:
    lo, hi = iv
    return lo - _WIDEN * (1 + np.abs(lo)), hi + _WIDEN * (1 + np.abs(hi))


def _clean(lo: np.ndarray, hi: np.ndarray) -> Interval:
    """NaN bounds (from inf arithmetic) become unbounded."""
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _mul(a: Interval, b: Interval) -> Interval:
    with np.errstate(invalid="ignore"):
        prods = np.broadcast_arrays(a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    nan = [np.isnan(x) for x in prods]  # 0 * inf: unbounded, so stay sound
    lo = np.minimum.reduce([np.where(n, -np.inf, x) for x, n in zip(prods, nan)])
    hi = np.maximum.reduce([np.where(n, np.inf, x) for x, n in zip(prods, nan)])
    return lo, hi


@functools.lru_cache(maxsize=4096)
def _int_fraction(e: sympy.Expr) -> tuple[sympy.Expr, int] | None:
    """``e = num / den`` with ``num`` built from integers only and ``den`` a positive integer.
    (Cached, like :func:`_difference` and :func:`_scaled`: the evaluator meets the same
    expressions once per subdivision level, and sympy's rewriting costs more than the arrays.)"""
    num, den = sympy.sympify(e).as_numer_denom()
    if not den.is_Integer or den <= 0 or any(a.is_Float for a in sympy.preorder_traversal(num)):
        return None
    return num, int(den)


@functools.lru_cache(maxsize=4096)
def _difference(r: Relational) -> sympy.Expr:
    """What :meth:`IntervalEvaluator._relation` bounds: ``lhs - rhs``, or its integer numerator."""
    d = r.lhs - r.rhs
    frac = _int_fraction(d)
    return frac[0] if frac is not None else d


@functools.lru_cache(maxsize=4096)
def _scaled(e: sympy.Mul) -> tuple[sympy.Expr, float] | None:
    """A product with a non-integer rational coefficient ``p/q`` as ``(p * rest, q)``."""
    coeff, rest = e.as_coeff_Mul()
    if coeff.is_Rational and not coeff.is_Integer:
        return coeff.p * rest, float(coeff.q)
    return None


class IntervalEvaluator:
    """Bounds over boxes: ``boxes`` maps each symbol to its (lo, hi) arrays (broadcastable)."""

    def __init__(self, boxes: Mapping[sympy.Symbol, Interval]) -> None:
        self.boxes = boxes
        # bounds per sub-expression, for these boxes: a mask repeats its clamps (a window's lower
        # and upper edge share ``Min(.., Max(.., Mod(p, X) - 3))``) and the bounds of an
        # expression are a function of the boxes alone; callers never modify the arrays returned
        self._memo: dict[sympy.Basic, Interval] = {}

    # ---- values ----------------------------------------------------------------------------
    def value(self, e: sympy.Basic) -> Interval:
        if not isinstance(e, sympy.Basic):
            e = sympy.sympify(e)
        hit = self._memo.get(e)
        if hit is None:
            hit = self._memo[e] = self._value(e)
        return hit

    def _value(self, e: sympy.Basic) -> Interval:
        if isinstance(e, sympy.Symbol):
            return self.boxes[e] if e in self.boxes else _unknown()
        if e.is_Integer:
            return _const(int(e))
        if e.is_Rational:
            return _widen(_const(float(e)))
        if e.is_Number:
            return _widen(_const(float(e))) if e.is_finite else _unknown()
        if isinstance(e, sympy.Add):
            lo, hi = np.asarray(0.0), np.asarray(0.0)
            for a in e.args:
                alo, ahi = self.value(a)
                lo, hi = lo + alo, hi + ahi
            return lo, hi
        if isinstance(e, sympy.Mul):
            scaled = _scaled(e)
            if scaled is not None:
                iv = self.value(scaled[0])
                q = scaled[1]
                return _widen((iv[0] / q, iv[1] / q))
            if len(e.args) == 2 and e.args[0].is_Integer and e.args[0] != 0:
                # c * x: the two products _mul would pick (its NaN guard only matters for NaN bounds)
                c = float(e.args[0])
                lo, hi = self.value(e.args[1])
                if not (np.isnan(lo).any() or np.isnan(hi).any()):
                    return (c * lo, c * hi) if c > 0 else (c * hi, c * lo)
                return _mul(_mul(_const(1), _const(c)), (lo, hi))
            out = _const(1)
            for a in e.args:
                out = _mul(out, self.value(a))
            return out
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp > 0:
            lo, hi = self.value(e.base)
            k = int(e.exp)
            if k % 2:
                return lo ** k, hi ** k
            top = np.maximum(np.abs(lo), np.abs(hi)) ** k
            bottom = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)) ** k)
            return bottom, top
        if isinstance(e, (sympy.floor, sympy.ceiling)):
            return self._round(e)
        if isinstance(e, sympy.Mod):
            return self._mod(e)
        if isinstance(e, (sympy.Max, sympy.Min)):
            ivs = [self.value(a) for a in e.args]
            f = np.maximum if isinstance(e, sympy.Max) else np.minimum
            return f.reduce(np.broadcast_arrays(*[i[0] for i in ivs])), \
                f.reduce(np.broadcast_arrays(*[i[1] for i in ivs]))
        if isinstance(e, sympy.Abs):
            lo, hi = self.value(e.args[0])
            return (np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0.0)),
                    np.maximum(np.abs(lo), np.abs(hi)))
        if isinstance(e, (bitand, bitor, bitxor)):
            return self._bitwise(e)
        if isinstance(e, sympy.Piecewise):
            ivs = [self.value(v) for v, _ in e.args]
            return (np.minimum.reduce(np.broadcast_arrays(*[i[0] for i in ivs])),
                    np.maximum.reduce(np.broadcast_arrays(*[i[1] for i in ivs])))
        return _unknown()

    def _round(self, e: sympy.Basic) -> Interval:
        frac = _int_fraction(e.args[0])
        if frac is None:
            lo, hi = self.value(e.args[0])
            f = np.floor if isinstance(e, sympy.floor) else np.ceil
            return f(lo), f(hi)
        num, den = frac
        lo, hi = self.value(num)
        with np.errstate(invalid="ignore"):
            if isinstance(e, sympy.floor):
                return _clean(np.floor_divide(lo, den), np.floor_divide(hi, den))
            return _clean(-np.floor_divide(-lo, den), -np.floor_divide(-hi, den))

    def _bitwise(self, e: sympy.Basic) -> Interval:
        """Bounds for non-negative operands: ``0 <= a & b <= min(a, b)``; ``a | b`` and ``a ^ b`` stay
        below the next power of two above both (``a | b`` is also at least ``max(a, b)``)."""
        (alo, ahi), (blo, bhi) = (self.value(a) for a in e.args)
        ok = (alo >= 0) & (blo >= 0) & np.isfinite(ahi) & np.isfinite(bhi)
        with np.errstate(invalid="ignore", divide="ignore"):
            top = np.exp2(np.ceil(np.log2(np.maximum(ahi, bhi) + 1.0))) - 1.0
        if isinstance(e, bitand):
            lo, hi = np.asarray(0.0), np.minimum(ahi, bhi)
        else:
            lo, hi = (np.maximum(alo, blo) if isinstance(e, bitor) else np.asarray(0.0)), top
        return np.where(ok, lo, -np.inf), np.where(ok, hi, np.inf)

    def _mod(self, e: sympy.Basic) -> Interval:
        x, n = e.args
        if not (n.is_Integer and n > 0) or _int_fraction(x) is None or _int_fraction(x)[1] != 1:
            return (np.asarray(0.0), np.asarray(float(n))) if n.is_positive and n.is_number else _unknown()
        n = int(n)
        lo, hi = self.value(x)
        with np.errstate(invalid="ignore"):
            q_lo, q_hi = np.floor_divide(lo, n), np.floor_divide(hi, n)
            same = (q_lo == q_hi) & np.isfinite(lo) & np.isfinite(hi)
            return np.where(same, lo - n * q_lo, 0.0), np.where(same, hi - n * q_lo, n - 1.0)

    # ---- predicates ------------------------------------------------------------------------
    def truth(self, pred: sympy.Basic) -> tuple[np.ndarray, np.ndarray]:
        """``(certainly_true, certainly_false)`` of a predicate over every box."""
        if pred is sympy.true:
            return np.asarray(True), np.asarray(False)
        if pred is sympy.false:
            return np.asarray(False), np.asarray(True)
        if isinstance(pred, sympy.And):
            parts = [self.truth(a) for a in pred.args]
            return (np.logical_and.reduce(np.broadcast_arrays(*[p[0] for p in parts])),
                    np.logical_or.reduce(np.broadcast_arrays(*[p[1] for p in parts])))
        if isinstance(pred, sympy.Or):
            parts = [self.truth(a) for a in pred.args]
            return (np.logical_or.reduce(np.broadcast_arrays(*[p[0] for p in parts])),
                    np.logical_and.reduce(np.broadcast_arrays(*[p[1] for p in parts])))
        if isinstance(pred, sympy.Not):
            t, f = self.truth(pred.args[0])
            return f, t
        if isinstance(pred, Relational):
            return self._relation(pred)
        if isinstance(pred, BooleanFunction):  # Xor, Equivalent, ...: in And/Or/Not form
            return self.truth(to_nnf(pred))
        return np.asarray(False), np.asarray(False)

    def _relation(self, r: Relational) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.value(_difference(r))
        if isinstance(r, sympy.StrictLessThan):
            return hi < 0, lo >= 0
        if isinstance(r, sympy.LessThan):
            return hi <= 0, lo > 0
        if isinstance(r, sympy.StrictGreaterThan):
            return lo > 0, hi <= 0
        if isinstance(r, sympy.GreaterThan):
            return lo >= 0, hi < 0
        if isinstance(r, sympy.Equality):
            return (lo == 0) & (hi == 0), (lo > 0) | (hi < 0)
        if isinstance(r, sympy.Unequality):
            return (lo > 0) | (hi < 0), (lo == 0) & (hi == 0)
        return np.asarray(False), np.asarray(False)


__all__ = ["Interval", "IntervalEvaluator"]
