"""Print sympy index expressions and predicates as Triton expressions.

Mask predicates (``p >= m``, ``Abs(floor(p/96) - floor(m/96)) <= 6``) and index-valued score terms
(ALiBi's ``2**(-8(h+1)/H) * (m - p)``) are sympy in the IR; the kernel needs them as Triton code over
the tile's index vectors. Integer arithmetic must stay exact, and Triton's ``//`` and ``%`` truncate
toward zero like C, so ``floor`` and ``Mod`` get explicit floor semantics unless sympy can prove the
operands non-negative (the common case: ``p``, ``m``, ``h`` are non-negative indices).

Each printed sub-expression carries a kind (``int``, ``float``, ``bool``) so that integer division
is only used where sympy's division is exact-integer, and float literals appear only where the
value really is fractional.

This is the one sympy -> Triton printer: the attention generator (``emit.py``, through
``score_printer.py``) and the linear-attention and decode generators (``linear_emit.py``) all use it.
Names may be bound to ``tl.constexpr`` arguments (Python ints inside the kernel), so the printed
code never calls tensor methods on a bare name and the helpers are exact for Python ints as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanFunction, to_nnf

from einfuse.errors import CodegenError
from einfuse.ir.bitwise import TRITON_INFIX

_REL_OPS = {
    sympy.StrictLessThan: "<", sympy.LessThan: "<=", sympy.StrictGreaterThan: ">",
    sympy.GreaterThan: ">=", sympy.Equality: "==", sympy.Unequality: "!=",
}


@dataclass(frozen=True)
class Printed:
    """A Triton expression string and its value kind (int, float or bool)."""

    code: str
    kind: str


class IndexPrinter:
    """Prints sympy expressions with symbols replaced by Triton names.

    ``names`` maps each sympy symbol to the Triton expression holding it (``p`` -> ``qi``, ``H`` ->
    ``H``); a symbol missing from ``names`` is an error naming the symbol, because silently treating
    it as 0 would produce a wrong kernel.
    """

    def __init__(self, names: Mapping[sympy.Symbol, str], context: str = "expression",
                 tensors: Iterable[sympy.Symbol] = ()) -> None:
        self.names = dict(names)
        self.context = context
        # symbols whose Triton names are always int32 tensors (never constexpr): a non-negative
        # numerator over them divides and takes remainders unsigned (one shift/and for powers of two,
        # where signed // and % need a rounding fix-up; per element in a mask, that is most of its cost)
        self.tensors = frozenset(tensors)

    # ---- entry points ----------------------------------------------------------------------------
    def value(self, e: sympy.Basic) -> str:
        """A numeric expression (int or float)."""
        return self._p(sympy.sympify(e)).code

    def float_value(self, e: sympy.Basic) -> str:
        """A numeric expression forced to float32 (for use in score arithmetic).

        Converted by ``* 1.0`` rather than ``.to(tl.float32)``: a name may hold a ``tl.constexpr``
        (a Python int in the kernel, e.g. a block size, or a size Triton specialised), which has no
        ``.to``; int32 times a float scalar is float32 either way.
        """
        return _as_float(self._p(sympy.sympify(e)))

    def predicate(self, e: sympy.Basic) -> str:
        out = self._p(sympy.sympify(e))
        if out.kind != "bool":
            raise CodegenError(f"{self.context}: {e} is not a predicate")
        return out.code

    # ---- recursive printer -------------------------------------------------------------------
    def _p(self, e: sympy.Basic) -> Printed:
        if e is sympy.true:
            return Printed("True", "bool")
        if e is sympy.false:
            return Printed("False", "bool")
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise CodegenError(f"{self.context}: symbol {e} has no value in the kernel "
                                   f"(known: {', '.join(sorted(map(str, self.names)))})")
            return Printed(self.names[e], "int" if e.is_integer is not False else "float")
        if isinstance(e, sympy.Integer):
            return Printed(str(int(e)), "int")
        if e.is_Number or isinstance(e, sympy.NumberSymbol):  # floats, rationals, oo, nan, E, pi
            return Printed(float_literal(float(e)), "float")
        if isinstance(e, (sympy.Add, sympy.Max, sympy.Min)):
            form = common_form(e)
            if form is not None and form[1] != 1:  # p/3 - m/3: one rounding of (p - m) / 3
                return Printed(f"({self._p(form[0]).code} / {float(form[1])!r})", "float")
        if isinstance(e, sympy.Add):
            parts = [self._p(a) for a in _ordered_args(e)]
            kind = "int" if all(p.kind == "int" for p in parts) else "float"
            code = parts[0].code
            for p, a in zip(parts[1:], _ordered_args(e)[1:]):
                if a.could_extract_minus_sign() and isinstance(a, sympy.Mul):
                    code += f" - {self._p(-a).code}"
                else:
                    code += f" + {p.code}"
            return Printed(f"({code})", kind)
        if isinstance(e, sympy.Mul):
            return self._mul(e)
        if isinstance(e, sympy.Pow):
            return self._pow(e)
        if isinstance(e, sympy.floor):
            return self._floor(e.args[0])
        if isinstance(e, sympy.ceiling):
            return Printed(f"(-{self._floor(-e.args[0]).code})", "int")
        if isinstance(e, sympy.Mod):
            return self._mod(e.args[0], e.args[1])
        if isinstance(e, sympy.Abs):
            a = self._p(e.args[0])
            return Printed(f"tl.abs({a.code})", a.kind)
        if isinstance(e, (sympy.Max, sympy.Min)):
            fn = "tl.maximum" if isinstance(e, sympy.Max) else "tl.minimum"
            parts = [self._p(a) for a in e.args]
            kind = "int" if all(p.kind == "int" for p in parts) else "float"
            code = parts[0].code
            for p in parts[1:]:
                code = f"{fn}({code}, {p.code})"
            return Printed(code, kind)
        if type(e) in TRITON_INFIX:  # bitand/bitor/bitxor: integer operands only
            a, c = self._p(e.args[0]), self._p(e.args[1])
            if a.kind != "int" or c.kind != "int":
                raise CodegenError(f"{self.context}: {e} needs integer operands")
            return Printed(f"({a.code} {TRITON_INFIX[type(e)]} {c.code})", "int")
        if isinstance(e, sympy.exp):
            return Printed(f"tl.exp({self.float_value(e.args[0])})", "float")
        if isinstance(e, sympy.log):
            return Printed(f"tl.log({self.float_value(e.args[0])})", "float")
        if isinstance(e, Relational):
            lhs_e, rhs_e = _clear_denominators(e)
            lhs, rhs = self._p(lhs_e), self._p(rhs_e)
            return Printed(f"({lhs.code} {_REL_OPS[type(e)]} {rhs.code})", "bool")
        if isinstance(e, sympy.And):
            parts = [self._range_test(x, lo, width) for x, lo, width in _ranges(e.args)[0]]
            parts += [self.predicate(a) for a in _ranges(e.args)[1]]
            return Printed("(" + " & ".join(parts) + ")" if len(parts) > 1 else parts[0], "bool")
        if isinstance(e, sympy.Or):
            return Printed("(" + " | ".join(self.predicate(a) for a in e.args) + ")", "bool")
        if isinstance(e, sympy.Not):
            return Printed(f"({self.predicate(e.args[0])} == 0)", "bool")
        if isinstance(e, BooleanFunction):  # Xor, Implies, Equivalent, ITE: rewrite with And/Or/Not
            return self._p(to_nnf(e))
        if isinstance(e, sympy.Piecewise):
            return self._piecewise(e)
        raise CodegenError(f"{self.context}: cannot print {e} ({type(e).__name__}) as Triton code")

    def _range_test(self, x: sympy.Expr, lo: sympy.Expr, width: int) -> str:
        """``lo <= x < lo + width`` as one unsigned comparison of ``x - lo`` (negative wraps high)."""
        diff = self._p(sympy.expand(x - lo))
        return f"(({diff.code}).to(tl.uint32) < {width})"

    def _piecewise(self, e: sympy.Piecewise) -> Printed:
        """Nested ``tl.where``; integer (or boolean) branches stay integer (boolean), so an index
        such as ``p + 2**25`` picked by a condition is not rounded to float32."""
        vals = [self._p(val) for val, _ in e.args]
        kind = vals[0].kind if all(v.kind == vals[0].kind for v in vals) else "float"
        code = None
        for v, (_, cond) in zip(reversed(vals), reversed(e.args)):
            vc = v.code if kind != "float" else _as_float(v)
            code = vc if code is None else f"tl.where({self.predicate(cond)}, {vc}, {code})"
        return Printed(code, kind)

    def _mul(self, e: sympy.Mul) -> Printed:
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:
            inner = self._p(rest)
            return Printed(f"(-{inner.code})", inner.kind)
        if coeff != 1 and isinstance(coeff, sympy.Rational) and not isinstance(coeff, sympy.Integer):
            inner = self._p(rest)
            num = f"{inner.code} * {coeff.p}" if coeff.p != 1 else inner.code
            # a fraction of an integer is a float: compute num / den in float (exact for small ints)
            return Printed(f"({num} / {float(coeff.q)!r})", "float")
        parts = [self._p(a) for a in e.args]
        kind = "int" if all(p.kind == "int" for p in parts) else "float"
        return Printed("(" + " * ".join(p.code for p in parts) + ")", kind)

    def _pow(self, e: sympy.Pow) -> Printed:
        base, ex = e.args
        if isinstance(ex, sympy.Integer) and 0 < int(ex) <= 4:
            b = self._p(base)
            return Printed("(" + " * ".join([b.code] * int(ex)) + ")", b.kind)
        if isinstance(ex, sympy.Integer) and -4 <= int(ex) < 0:
            b = self.float_value(base)
            return Printed("(1.0 / (" + " * ".join([b] * -int(ex)) + "))", "float")
        if ex == sympy.Rational(1, 2):
            return Printed(f"tl.sqrt({self.float_value(base)})", "float")
        if base == 2:
            return Printed(f"tl.exp2({self.float_value(ex)})", "float")
        if base.is_number and float(base) > 0:
            return Printed(f"tl.exp2({self.float_value(ex)} * {math.log2(float(base))!r})", "float")
        return Printed(f"tl.exp2({self.float_value(ex)} * tl.log2({self.float_value(base)}))", "float")

    def _floor(self, arg: sympy.Expr) -> Printed:
        """Exact integer division when ``arg`` is an integer over a positive integer, the divisor
        a constant or a size symbol (``floor(p/W)``); a float floor of ``p * (1/41)`` would give 0
        at ``p = 41``."""
        form = common_form(arg)
        num, den = ((form[0], sympy.Integer(form[1])) if form is not None
                    else sympy.fraction(sympy.together(arg)))
        if num.is_integer and den.is_integer and den.is_positive:
            n, d = self._p(sympy.expand(num)), self._p(den)
            if n.kind == "int" and d.kind == "int":
                if den == 1:
                    return n
                if num.is_nonnegative and den.is_Integer and self._unsigned(num):
                    return Printed(f"(({n.code}).to(tl.uint32) // {d.code}).to(tl.int32)", "int")
                if num.is_nonnegative:
                    return Printed(f"({n.code} // {d.code})", "int")
                return Printed(f"_floordiv({n.code}, {d.code})", "int")
        a = self._p(arg)
        if a.kind == "int":
            return a
        return Printed(f"tl.floor({a.code}).to(tl.int32)", "int")

    def _unsigned(self, numerator: sympy.Expr) -> bool:
        """Whether to divide unsigned: the numerator is a tensor (Triton refuses uint32 // int32
        tensors, so callers also require a literal divisor)."""
        return bool(numerator.free_symbols & self.tensors)

    def _mod(self, a: sympy.Expr, c: sympy.Expr) -> Printed:
        fa, fc = common_form(a), common_form(c)
        if fa is not None and fc is not None and fa[1] * fc[1] != 1:
            # Mod(a/b, c/d) = Mod(a*d, c*b) / (b*d) for positive b, d: an integer Mod, divided once
            (an, ad), (cn, cd) = fa, fc
            inner = self._mod(sympy.expand(an * cd), sympy.expand(cn * ad))
            return Printed(f"({_as_float(inner)} / {float(ad * cd)!r})", "float")
        pa, pc = self._p(a), self._p(c)
        if pa.kind != "int" or pc.kind != "int":
            fa, fc = self.float_value(a), self.float_value(c)
            return Printed(f"({fa} - {fc} * tl.floor({fa} / {fc}))", "float")
        if a.is_nonnegative and c.is_Integer and c.is_positive and self._unsigned(a):
            return Printed(f"(({pa.code}).to(tl.uint32) % {pc.code}).to(tl.int32)", "int")
        if a.is_nonnegative and c.is_positive:
            return Printed(f"({pa.code} % {pc.code})", "int")
        return Printed(f"_floormod({pa.code}, {pc.code})", "int")


def _bounds(rel: sympy.Basic) -> list[tuple[sympy.Expr, str, sympy.Expr]]:
    """``(x, 'lo', a)`` for ``x >= a`` and ``(x, 'hi', b)`` for ``x < b`` (exclusive), in both
    orientations of the relation; [] for anything else."""
    if not isinstance(rel, Relational) or isinstance(rel, (sympy.Eq, sympy.Ne)):
        return []
    lhs, rhs = _clear_denominators(rel)
    if isinstance(rel, (sympy.StrictGreaterThan, sympy.GreaterThan)):
        big, small, strict = lhs, rhs, isinstance(rel, sympy.StrictGreaterThan)
    else:
        small, big, strict = lhs, rhs, isinstance(rel, sympy.StrictLessThan)
    # small < big  (or <=): a lower bound on big, an upper bound on small
    return [(big, "lo", small + 1 if strict else small), (small, "hi", big if strict else big + 1)]


def _ranges(args: tuple) -> tuple[list[tuple[sympy.Expr, sympy.Expr, int]], list[sympy.Basic]]:
    """Pair conjuncts ``x >= a`` and ``x < a + w`` (w a positive integer) into range tests; the
    neighbourhood masks are made of these, and one unsigned compare replaces two compares and an and."""
    used: set[int] = set()
    found = []
    for i, a in enumerate(args):
        for j, b in enumerate(args):
            if i >= j or i in used or j in used:
                continue
            for x1, k1, v1 in _bounds(a):
                hit = None
                for x2, k2, v2 in _bounds(b):
                    if x1 == x2 and {k1, k2} == {"lo", "hi"} and x1.is_integer:
                        lo, hi = (v1, v2) if k1 == "lo" else (v2, v1)
                        width = sympy.expand(hi - lo)
                        if width.is_Integer and int(width) > 0 and lo.is_integer:
                            hit = (x1, lo, int(width))
                            break
                if hit:
                    found.append(hit)
                    used |= {i, j}
                    break
    return found, [a for k, a in enumerate(args) if k not in used]


def _clear_denominators(e: Relational) -> tuple[sympy.Expr, sympy.Expr]:
    """``m/96 >= k`` -> ``m >= 96*k``: sympy rewrites ``floor(m/96) >= k`` into the former, and a
    float division on the GPU could put an exact multiple on the wrong side of the bound."""
    diff = e.lhs - e.rhs
    if diff.is_number:
        return e.lhs, e.rhs
    form = common_form(diff)  # reaches into Max/Min/Mod, where together does not
    num, den = ((form[0], sympy.Integer(form[1])) if form is not None
                else sympy.fraction(sympy.together(diff)))
    if den == 1 or not den.is_positive:
        return e.lhs, e.rhs
    terms = sympy.Add.make_args(sympy.expand(num))
    pos = sympy.Add(*[t for t in terms if not t.could_extract_minus_sign()])
    neg = -sympy.Add(*[t for t in terms if t.could_extract_minus_sign()])
    return pos, neg


def common_form(e: sympy.Expr) -> tuple[sympy.Expr, int] | None:
    """``(num, den)`` with ``e == num / den``, ``num`` integer-valued and ``den`` a positive int,
    or None when ``e`` is not an integer expression with rational coefficients.

    Why: ``(p - m)/3`` is stored by sympy as ``p/3 - m/3``, and printing each third as a float32
    division makes ``5/3 - 2/3`` land below 1. Over a common denominator the integer parts stay
    exact and floor/Mod/comparisons use integer arithmetic. Unlike ``sympy.together``, this also
    goes inside ``Max``/``Min``/``Mod``/``Abs``: ``Max(a/d, b/d) = Max(a, b)/d`` for positive ``d``
    and ``Mod(a/b, c/d) = Mod(a*d, c*b)/(b*d)``.
    """
    if isinstance(e, sympy.Rational):
        return sympy.Integer(e.p), int(e.q)
    if isinstance(e, sympy.Add):
        forms = [common_form(a) for a in e.args]
        if any(f is None for f in forms):
            return None
        lcm = math.lcm(*(d for _, d in forms))
        return sympy.Add(*(n * (lcm // d) for n, d in forms)), lcm
    if isinstance(e, sympy.Mul):
        forms = [common_form(a) for a in e.args]
        if any(f is None for f in forms):
            return None
        return sympy.Mul(*(n for n, _ in forms)), math.prod(d for _, d in forms)
    if isinstance(e, (sympy.Max, sympy.Min)):
        forms = [common_form(a) for a in e.args]
        if any(f is None for f in forms):
            return None
        lcm = math.lcm(*(d for _, d in forms))
        return type(e)(*(sympy.expand(n * (lcm // d)) for n, d in forms)), lcm
    if isinstance(e, sympy.Mod):
        fa, fc = common_form(e.args[0]), common_form(e.args[1])
        if fa is None or fc is None:
            return None
        (an, ad), (cn, cd) = fa, fc
        if ad * cd == 1:
            return e, 1
        return sympy.Mod(sympy.expand(an * cd), sympy.expand(cn * ad)), ad * cd
    if isinstance(e, sympy.Abs):
        f = common_form(e.args[0])
        return None if f is None else (sympy.Abs(f[0]), f[1])
    if e.is_integer:
        return e, 1
    return None


def float_literal(v: float) -> str:
    """A Python float as Triton source; inf and nan have no literal of their own."""
    if math.isinf(v):
        return "float('inf')" if v > 0 else "float('-inf')"
    if math.isnan(v):
        return "float('nan')"
    return repr(v)


def _as_float(out: Printed) -> str:
    """``out`` as a float32 expression; an integer literal becomes ``3.0`` (no ``.to`` on a
    constant), anything else ``(x * 1.0)``, which also works on ``tl.constexpr`` names."""
    if out.kind == "float":
        return out.code
    if out.code.lstrip("-").isdigit():
        return f"{out.code}.0"
    return f"({out.code} * 1.0)"


def _ordered_args(e: sympy.Add) -> list[sympy.Expr]:
    """Terms of a sum with the positive ones first, so ``m - p`` prints as ``m - p``, not ``-p + m``."""
    args = list(e.as_ordered_terms())
    pos = [a for a in args if not a.could_extract_minus_sign()]
    neg = [a for a in args if a.could_extract_minus_sign()]
    return pos + neg if pos else args


# Helpers the printed code may call; emitted once into every generated module that needs them.
HELPERS = '''
@triton.jit
def _floordiv(a, d):
    """floor(a / d) for a positive divisor d, whether // truncates (tensors) or floors (Python
    ints, i.e. constexpr operands): the remainder a - q*d is negative only after truncation."""
    q = a // d
    return tl.where(a - q * d < 0, q - 1, q)


@triton.jit
def _floormod(a, d):
    """a - d * floor(a / d): the non-negative remainder for a positive divisor d."""
    r = a % d
    return tl.where(r < 0, r + d, r)
'''
