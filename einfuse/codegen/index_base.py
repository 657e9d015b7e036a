"""The target-independent half of printing sympy index expressions and score expressions as code.

Mask predicates (``p >= m``, ``Abs(floor(p/96) - floor(m/96)) <= 6``) and index-valued score terms
(ALiBi's ``2**(-8(h+1)/H) * (m - p)``) are sympy in the IR; a kernel needs them as code over its
tile's positions. The *rules* are the same for every back end, so they live here once:

* integer arithmetic stays exact: ``//`` and ``%`` of C and Triton truncate toward zero, so
  ``floor`` and ``Mod`` get explicit floor semantics unless sympy proves the operands non-negative;
  a non-negative numerator over a tile position divides unsigned by a literal (one shift or and);
* sums with fractional coefficients are printed over one common denominator (``p/3 - m/3`` as
  ``(p - m) / 3``), relations have their denominators cleared, and a float division appears only
  where the value really is fractional;
* paired bounds ``lo <= x < lo + w`` become one unsigned compare of ``x - lo``;
* each printed sub-expression carries a kind (``int``, ``float``, ``bool``).

A back end subclasses :class:`BaseIndexPrinter` and overrides the *spellings* only (how a floor,
a select, an unsigned cast or a float literal is written): tinygrad's renderer shape, one plan and
several printers. :func:`print_score` prints the IR score expression (over the Q.K product) with
the same printer's spellings. Triton: :mod:`einfuse.codegen.triton.index_printer`; CUDA C++:
:mod:`einfuse.codegen.cutlass.printer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanFunction, to_nnf

from einfuse.errors import CodegenError
from einfuse.ir.bitwise import TRITON_INFIX as INFIX_BITWISE  # & | ^: the same spelling in Triton and C++
from einfuse.ir.captures import is_read
from einfuse.ir.expr import (
    COMPARE_OPS,
    Access,
    Binary,
    Compare,
    Const,
    Empty,
    Expr,
    IndexValue,
    Select,
    Unary,
    walk,
)

_REL_OPS = {
    sympy.StrictLessThan: "<", sympy.LessThan: "<=", sympy.StrictGreaterThan: ">",
    sympy.GreaterThan: ">=", sympy.Equality: "==", sympy.Unequality: "!=",
}


@dataclass(frozen=True)
class Printed:
    """An expression string in the target language and its value kind (int, float or bool)."""

    code: str
    kind: str


class BaseIndexPrinter:
    """Prints sympy expressions with symbols replaced by the target's names.

    ``names`` maps each sympy symbol to the expression holding it (``p`` -> ``qi``, ``H`` -> ``H``);
    a symbol missing from ``names`` is an error naming the symbol, because silently treating it as 0
    would produce a wrong kernel. ``tensors``: symbols that are always 32-bit integer positions in
    the kernel (a non-negative numerator over them divides and takes remainders unsigned).

    Subclasses set :attr:`target` and override the spelling methods below the recursive printer.
    """

    target = "?"
    UNARY: Mapping[str, str] = {}
    """Score operators: ``{op: format string with one {} for the operand}``."""

    def __init__(self, names: Mapping[sympy.Symbol, str], context: str = "expression",
                 tensors: Iterable[sympy.Symbol] = ()) -> None:
        self.names = dict(names)
        self.context = context
        self.tensors = frozenset(tensors)

    # ---- entry points ----------------------------------------------------------------------------
    def value(self, e: sympy.Basic) -> str:
        """A numeric expression (int or float)."""
        return self._p(sympy.sympify(e)).code

    def float_value(self, e: sympy.Basic) -> str:
        """A numeric expression forced to float32 (for use in score arithmetic)."""
        return self.as_float(self._p(sympy.sympify(e)))

    def predicate(self, e: sympy.Basic) -> str:
        out = self._p(sympy.sympify(e))
        if out.kind != "bool":
            raise CodegenError(f"{self.context}: {e} is not a predicate")
        return out.code

    # ---- recursive printer (target-independent rules) ---------------------------------------------
    def _p(self, e: sympy.Basic) -> Printed:
        if e is sympy.true:
            return Printed(self.TRUE, "bool")
        if e is sympy.false:
            return Printed(self.FALSE, "bool")
        if is_read(e):  # a gather from a captured tensor (einfuse.ir.captures)
            return self.capture_read(e)
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise CodegenError(f"{self.context}: symbol {e} has no value in the kernel "
                                   f"(known: {', '.join(sorted(map(str, self.names)))})")
            return Printed(self.names[e], "int" if e.is_integer is not False else "float")
        if isinstance(e, sympy.Integer):
            return Printed(str(int(e)), "int")
        if e.is_Number or isinstance(e, sympy.NumberSymbol):  # floats, rationals, oo, nan, E, pi
            return Printed(self.flit(float(e)), "float")
        if isinstance(e, (sympy.Add, sympy.Max, sympy.Min)):
            form = common_form(e)
            if form is not None and form[1] != 1:  # p/3 - m/3: one rounding of (p - m) / 3
                return Printed(f"({self._p(form[0]).code} / {self.flit(float(form[1]))})", "float")
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
            return Printed(self.abs_(a), a.kind)
        if isinstance(e, (sympy.Max, sympy.Min)):
            parts = [self._p(a) for a in e.args]
            kind = "int" if all(p.kind == "int" for p in parts) else "float"
            promote = kind == "float" and self.PROMOTE_MINMAX
            codes = [self.as_float(p) if promote else p.code for p in parts]
            code = codes[0]
            for c in codes[1:]:
                code = self.minmax(isinstance(e, sympy.Max), code, c, kind)
            return Printed(code, kind)
        if type(e) in INFIX_BITWISE:  # bitand/bitor/bitxor: integer operands only
            a, c = self._p(e.args[0]), self._p(e.args[1])
            if a.kind != "int" or c.kind != "int":
                raise CodegenError(f"{self.context}: {e} needs integer operands")
            return Printed(f"({a.code} {INFIX_BITWISE[type(e)]} {c.code})", "int")
        if isinstance(e, sympy.exp):
            return Printed(self.fn("exp", self.float_value(e.args[0])), "float")
        if isinstance(e, sympy.log):
            return Printed(self.fn("log", self.float_value(e.args[0])), "float")
        if isinstance(e, Relational):
            lhs_e, rhs_e = _clear_denominators(e)
            lhs, rhs = self._p(lhs_e), self._p(rhs_e)
            return Printed(f"({lhs.code} {_REL_OPS[type(e)]} {rhs.code})", "bool")
        if isinstance(e, sympy.And):
            ranges, rest = _ranges(e.args)
            parts = [self._range_test(x, lo, width) for x, lo, width in ranges]
            parts += [self.predicate(a) for a in rest]
            return Printed(self.and_(parts) if len(parts) > 1 else parts[0], "bool")
        if isinstance(e, sympy.Or):
            return Printed(self.or_([self.predicate(a) for a in e.args]), "bool")
        if isinstance(e, sympy.Not):
            return Printed(self.not_(self.predicate(e.args[0])), "bool")
        if isinstance(e, BooleanFunction):  # Xor, Implies, Equivalent, ITE: rewrite with And/Or/Not
            return self._p(to_nnf(e))
        if isinstance(e, sympy.Piecewise):
            return self._piecewise(e)
        raise CodegenError(f"{self.context}: cannot print {e} ({type(e).__name__}) as {self.target} code")

    def _range_test(self, x: sympy.Expr, lo: sympy.Expr, width: int) -> str:
        """``lo <= x < lo + width`` as one unsigned comparison of ``x - lo`` (negative wraps high)."""
        diff = self._p(sympy.expand(x - lo))
        return self.range_test(diff.code, width)

    def _piecewise(self, e: sympy.Piecewise) -> Printed:
        """Nested selects; integer (or boolean) branches stay integer (boolean), so an index such as
        ``p + 2**25`` picked by a condition is not rounded to float32."""
        vals = [self._p(val) for val, _ in e.args]
        kind = vals[0].kind if all(v.kind == vals[0].kind for v in vals) else "float"
        code = None
        for v, (_, cond) in zip(reversed(vals), reversed(e.args)):
            vc = v.code if kind != "float" else self.as_float(v)
            code = vc if code is None else self.where(self.predicate(cond), vc, code)
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
            return Printed(f"({num} / {self.flit(float(coeff.q))})", "float")
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
            return Printed(f"({self.flit(1.0)} / (" + " * ".join([b] * -int(ex)) + "))", "float")
        if ex == sympy.Rational(1, 2):
            return Printed(self.fn("sqrt", self.float_value(base)), "float")
        if base == 2:
            return Printed(self.fn("exp2", self.float_value(ex)), "float")
        if base.is_number and float(base) > 0:
            return Printed(self.fn("exp2", f"{self.float_value(ex)} * {self.flit(math.log2(float(base)))}"),
                           "float")
        return Printed(self.fn("exp2", f"{self.float_value(ex)} * {self.fn('log2', self.float_value(base))}"),
                       "float")

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
                    return Printed(self.udiv(n.code, d.code), "int")
                if num.is_nonnegative:
                    return Printed(self.div_nonneg(n.code, d.code), "int")
                return Printed(self.floordiv(n.code, d.code), "int")
        a = self._p(arg)
        if a.kind == "int":
            return a
        return Printed(self.floor_to_int(a.code), "int")

    def _unsigned(self, numerator: sympy.Expr) -> bool:
        """Whether to divide unsigned: the numerator is over a tensor position (Triton refuses
        uint32 // int32 tensors, so callers also require a literal divisor)."""
        return bool(numerator.free_symbols & self.tensors)

    def _mod(self, a: sympy.Expr, c: sympy.Expr) -> Printed:
        fa, fc = common_form(a), common_form(c)
        if fa is not None and fc is not None and fa[1] * fc[1] != 1:
            # Mod(a/b, c/d) = Mod(a*d, c*b) / (b*d) for positive b, d: an integer Mod, divided once
            (an, ad), (cn, cd) = fa, fc
            inner = self._mod(sympy.expand(an * cd), sympy.expand(cn * ad))
            return Printed(f"({self.as_float(inner)} / {self.flit(float(ad * cd))})", "float")
        pa, pc = self._p(a), self._p(c)
        if pa.kind != "int" or pc.kind != "int":
            fa, fc = self.float_value(a), self.float_value(c)
            return Printed(f"({fa} - {fc} * {self.fn('floor', f'{fa} / {fc}')})", "float")
        if a.is_nonnegative and c.is_Integer and c.is_positive and self._unsigned(a):
            return Printed(self.umod(pa.code, pc.code), "int")
        if a.is_nonnegative and c.is_positive:
            return Printed(f"({pa.code} % {pc.code})", "int")
        return Printed(self.floormod(pa.code, pc.code), "int")

    def capture_read(self, e: sympy.Basic) -> Printed:
        """A read of a captured tensor; targets that load them override this."""
        raise CodegenError(f"{self.context}: the {self.target} back end does not read captured tensors "
                           f"({e.func.__name__}) yet; use the Triton target")

    def capture_indices(self, e: sympy.Basic) -> tuple[str, list[str]]:
        """The kernel name of a read's tensor and its index codes (integers), for :meth:`capture_read`."""
        base = self.names.get(e.func)
        if base is None:
            raise CodegenError(f"{self.context}: captured tensor {e.func.__name__} is not a parameter of this "
                               "kernel")
        codes = []
        for k, a in enumerate(e.args):
            pa = self._p(a)
            if pa.kind != "int":
                raise CodegenError(f"{self.context}: index {k} of {e.func.__name__} ({a}) is not an integer")
            codes.append(pa.code)
        return base, codes

    # ---- spellings (override per target) -----------------------------------------------------------
    TRUE = "True"
    FALSE = "False"
    PROMOTE_MINMAX = False
    """Whether max/min of an int and a float converts the int first (C++ overloads need one type)."""

    def constexpr(self, e: sympy.Basic, names: Mapping[sympy.Symbol, str]) -> str | None:
        """``e`` over compile-time constant names, folded by the target's compiler (None: not
        supported, print it as an ordinary index value)."""
        return None

    def flit(self, v: float) -> str:
        """A float32 literal (inf and nan included)."""
        raise NotImplementedError

    def as_float(self, out: Printed) -> str:
        """``out`` converted to a float32 expression."""
        raise NotImplementedError

    def fn(self, name: str, arg: str) -> str:
        """A float math function of one argument: exp, log, sqrt, exp2, log2, floor."""
        raise NotImplementedError

    def abs_(self, a: Printed) -> str:
        raise NotImplementedError

    def minmax(self, is_max: bool, a: str, b: str, kind: str) -> str:
        raise NotImplementedError

    def where(self, cond: str, a: str, b: str) -> str:
        raise NotImplementedError

    def and_(self, parts: list[str]) -> str:
        raise NotImplementedError

    def or_(self, parts: list[str]) -> str:
        raise NotImplementedError

    def not_(self, a: str) -> str:
        raise NotImplementedError

    def range_test(self, diff: str, width: int) -> str:
        """``0 <= diff < width`` as one unsigned compare."""
        raise NotImplementedError

    def udiv(self, n: str, d: str) -> str:
        """Unsigned ``n / d`` of a non-negative numerator by a literal, as a signed int."""
        raise NotImplementedError

    def umod(self, n: str, d: str) -> str:
        raise NotImplementedError

    def div_nonneg(self, n: str, d: str) -> str:
        """``n / d`` for a non-negative numerator and positive divisor (truncation is floor)."""
        raise NotImplementedError

    def floordiv(self, n: str, d: str) -> str:
        """``floor(n / d)`` for any sign of ``n`` (a helper with the rounding fix-up)."""
        raise NotImplementedError

    def floormod(self, n: str, d: str) -> str:
        raise NotImplementedError

    def floor_to_int(self, a: str) -> str:
        """``floor`` of a float expression, as an int."""
        raise NotImplementedError


# ---- score expressions ---------------------------------------------------------------------------

def print_score(e: Expr, idx: BaseIndexPrinter, dot: str,
                constexprs: Mapping[sympy.Symbol, str] | None = None) -> str:
    """Code for the score ``e`` (an IR value expression over the Q.K product, the leaf
    :data:`~einfuse.lowering.onepass.DOT`, printed as ``dot``) in ``idx``'s target; index values go
    through ``idx``. One IR node becomes one operation, so the line reads like the Einsum. Index values
    over the symbols of ``constexprs`` only (the head dims of the default scale ``1/sqrt(E)``) are
    printed by ``idx.constexpr`` when the target folds them at compile time."""
    if constexprs and isinstance(e, IndexValue) and e.expr.free_symbols <= set(constexprs):
        code = idx.constexpr(e.expr, constexprs)
        if code is not None:
            return code
    from einfuse.lowering.onepass import DOT

    if isinstance(e, Access):
        if e.tensor != DOT:
            raise CodegenError(f"score reads tensor {e.tensor}; only the Q.K product can be read here")
        return dot
    if isinstance(e, Const):
        return idx.flit(float(e.value))
    if isinstance(e, IndexValue):
        return idx.float_value(e.expr)
    if isinstance(e, Unary):
        if e.op not in idx.UNARY:
            raise CodegenError(f"score operator {e.op} has no {idx.target} form")
        return idx.UNARY[e.op].format(print_score(e.arg, idx, dot, constexprs))
    if isinstance(e, Binary):
        a, b = print_score(e.left, idx, dot, constexprs), print_score(e.right, idx, dot, constexprs)
        if e.op in _INFIX:
            return f"({a} {_INFIX[e.op]} {b})"
        return idx.minmax(e.op == "max", a, b, "float")
    if isinstance(e, Select):
        cond = print_score(e.cond, idx, dot, constexprs) if isinstance(e.cond, Compare) else idx.predicate(e.cond)
        return idx.where(cond, print_score(e.then, idx, dot, constexprs), print_score(e.otherwise, idx, dot, constexprs))
    if isinstance(e, Compare):  # a condition on values (the score), not on indices
        return (f"({print_score(e.left, idx, dot, constexprs)} {COMPARE_OPS[e.op]} "
                f"{print_score(e.right, idx, dot, constexprs)})")
    if isinstance(e, Empty):
        raise CodegenError("an empty value cannot appear inside a score expression")
    raise CodegenError(f"cannot print score node {e!r}")


_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def may_be_minus_inf(e: Expr) -> bool:
    """Whether a score can be -inf (or NaN) on finite inputs, so full tiles need the masked-row guard."""
    for n in walk(e):
        if isinstance(n, Const) and not math.isfinite(n.value):
            return True
        if isinstance(n, Unary) and n.op in ("log", "reciprocal", "sqrt"):
            return True
        if isinstance(n, Binary) and n.op == "div" and not isinstance(n.right, Const):
            return True
        if isinstance(n, Select):
            return True
    return False


# ---- shared sympy helpers ------------------------------------------------------------------------

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


def _ordered_args(e: sympy.Add) -> list[sympy.Expr]:
    """Terms of a sum with the positive ones first, so ``m - p`` prints as ``m - p``, not ``-p + m``."""
    args = list(e.as_ordered_terms())
    pos = [a for a in args if not a.could_extract_minus_sign()]
    neg = [a for a in args if a.could_extract_minus_sign()]
    return pos + neg if pos else args


