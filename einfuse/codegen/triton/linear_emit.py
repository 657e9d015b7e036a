"""Print IR pieces as Triton source: sympy index expressions, value expressions, kernel modules.

Shared by the linear-attention and decode generators (they own this module). The generated kernels
evaluate whatever the cascade says, one node at a time, so the variant-specific parts of a kernel
(decay, feature map, score_mod, mask) come from the IR and not from a hand-written formula.

Index arithmetic keeps integers integral (``floor(p/49)`` becomes an exact floor division, not a
float product) and switches to float32 only where a rational coefficient or a transcendental
function needs it. Names of index symbols and size symbols are chosen by the caller through
``names``: a kernel decides which Triton variable holds ``p``, ``h`` or ``H``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sympy
from sympy.core.relational import Relational

from einfuse.errors import CodegenError
from einfuse.ir.expr import Access, Binary, Const, Empty, Expr, IndexValue, Select, Unary

_REL_OPS = {
    sympy.StrictLessThan: "<", sympy.LessThan: "<=", sympy.StrictGreaterThan: ">",
    sympy.GreaterThan: ">=", sympy.Equality: "==", sympy.Unequality: "!=",
}


@dataclass(frozen=True)
class Code:
    """A Triton expression and its kind: ``int``, ``float`` or ``bool``."""

    text: str
    kind: str

    def as_float(self) -> str:
        if self.kind == "float":
            return self.text
        if self.text.lstrip("-").isdigit():
            return f"{self.text}.0"
        return f"({self.text} * 1.0)"


def _flt(v: float) -> str:
    if math.isinf(v):
        return "float('inf')" if v > 0 else "float('-inf')"
    if math.isnan(v):
        return "float('nan')"
    return repr(float(v))


class IndexPrinter:
    """sympy index expression or predicate -> Triton expression text.

    ``names`` maps every free symbol (index symbols such as ``p``, ``h``, and size symbols such as
    ``H`` or ``W``) to the name of the Triton variable that holds it (an int32 tensor or scalar).
    """

    def __init__(self, names: Mapping[sympy.Symbol, str]) -> None:
        self.names = dict(names)

    def __call__(self, e: sympy.Basic) -> Code:
        e = sympy.sympify(e)
        if isinstance(e, sympy.logic.boolalg.Boolean) and not isinstance(e, Relational):
            e = sympy.logic.boolalg.to_nnf(e)
        return self._p(e)

    # -- helpers ---------------------------------------------------------------------------------
    def _p(self, e: sympy.Basic) -> Code:
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise CodegenError(f"index expression uses {e}, which this kernel does not provide")
            return Code(self.names[e], "int")
        if e is sympy.true:
            return Code("True", "bool")
        if e is sympy.false:
            return Code("False", "bool")
        if isinstance(e, sympy.Integer):
            return Code(str(int(e)), "int")
        if e.is_Number:
            if e == sympy.oo or e == -sympy.oo:
                return Code(_flt(float("inf") if e == sympy.oo else float("-inf")), "float")
            return Code(_flt(float(e)), "float")
        if e in (sympy.E,):
            return Code(_flt(math.e), "float")
        if isinstance(e, sympy.Add):
            args = sorted(e.args, key=lambda a: a.could_extract_minus_sign())  # positive terms first
            parts = [self._p(a) for a in args]
            joined = self._join(parts, " + ")
            return Code(joined.text.replace(" + -", " - "), joined.kind)
        if isinstance(e, sympy.Mul):
            return self._mul(e)
        if isinstance(e, sympy.Pow):
            return self._pow(e)
        if isinstance(e, (sympy.floor, sympy.ceiling)):
            return self._floor(e)
        if isinstance(e, sympy.Mod):
            a, b = e.args
            fd = self._floor(sympy.floor(a / b))
            ca, cb = self._p(a), self._p(b)
            if fd.kind == "int" and ca.kind == "int" and cb.kind == "int":
                return Code(f"({ca.text} - ({cb.text}) * {fd.text})", "int")
            return Code(f"({ca.as_float()} - ({cb.as_float()}) * {fd.as_float()})", "float")
        if isinstance(e, sympy.Abs):
            a = self._p(e.args[0])
            return Code(f"tl.abs({a.text})", a.kind)
        if isinstance(e, (sympy.Max, sympy.Min)):
            fn = "tl.maximum" if isinstance(e, sympy.Max) else "tl.minimum"
            parts = [self._p(a) for a in e.args]
            kind = "int" if all(p.kind == "int" for p in parts) else "float"
            text = parts[0].text if kind == "int" else parts[0].as_float()
            for p in parts[1:]:
                text = f"{fn}({text}, {p.text if kind == 'int' else p.as_float()})"
            return Code(text, kind)
        if isinstance(e, sympy.exp):
            return Code(f"tl.exp({self._p(e.args[0]).as_float()})", "float")
        if isinstance(e, sympy.log):
            return Code(f"tl.log({self._p(e.args[0]).as_float()})", "float")
        if isinstance(e, Relational):
            a, b = self._p(e.lhs), self._p(e.rhs)
            if a.kind == "int" and b.kind == "int":
                return Code(f"({a.text} {_REL_OPS[type(e)]} {b.text})", "bool")
            return Code(f"({a.as_float()} {_REL_OPS[type(e)]} {b.as_float()})", "bool")
        if isinstance(e, sympy.And):
            return Code("(" + " & ".join(self._p(a).text for a in e.args) + ")", "bool")
        if isinstance(e, sympy.Or):
            return Code("(" + " | ".join(self._p(a).text for a in e.args) + ")", "bool")
        if isinstance(e, sympy.Not):
            return Code(f"({self._p(e.args[0]).text} == 0)", "bool")
        if isinstance(e, sympy.Piecewise):
            out: Code | None = None
            for val, cond in reversed(e.args):
                v = self._p(val)
                if out is None:
                    out = v
                else:
                    kind = "int" if v.kind == out.kind == "int" else "float"
                    vt, ot = (v.text, out.text) if kind == "int" else (v.as_float(), out.as_float())
                    out = Code(f"tl.where({self._p(cond).text}, {vt}, {ot})", kind)
            assert out is not None
            return out
        raise CodegenError(f"cannot emit index expression {e} ({type(e).__name__}) as Triton code")

    def _join(self, parts: list[Code], sep: str) -> Code:
        if len(parts) == 1:
            return parts[0]
        if all(p.kind == "int" for p in parts):
            return Code("(" + sep.join(p.text for p in parts) + ")", "int")
        return Code("(" + sep.join(p.as_float() for p in parts) + ")", "float")

    def _mul(self, e: sympy.Mul) -> Code:
        """Products print as ``-(a * b) / (c * d)``: sign first, integer-exponent denominators
        and rational coefficients divided last (as symeval does, so ``(2*p)/2`` stays exact)."""
        coeff, rest = e.as_coeff_Mul()
        sign = "-" if coeff < 0 else ""
        coeff = -coeff if coeff < 0 else coeff
        numer: list[sympy.Expr] = []
        denom: list[sympy.Expr] = []
        for f in sympy.Mul.make_args(rest):
            if isinstance(f, sympy.Pow) and f.exp.is_Integer and f.exp < 0:
                denom.append(f.base ** -f.exp)
            else:
                numer.append(f)
        if isinstance(coeff, sympy.Rational):
            if coeff.p != 1:
                numer.insert(0, sympy.Integer(coeff.p))
            if coeff.q != 1:
                denom.insert(0, sympy.Integer(coeff.q))
        elif coeff != 1:
            numer.insert(0, coeff)
        num = self._join([self._p(x) for x in numer], " * ") if numer else Code("1", "int")
        if not denom:
            return Code(f"{sign}{num.text}", num.kind)
        den = self._join([self._p(x) for x in denom], " * ")
        return Code(f"{sign}({num.as_float()} / {den.as_float()})", "float")

    def _pow(self, e: sympy.Pow) -> Code:
        base, ex = e.args
        if isinstance(ex, sympy.Integer) and 0 < int(ex) <= 4:
            b = self._p(base)
            return Code("(" + " * ".join([b.text] * int(ex)) + ")", b.kind)
        if isinstance(ex, sympy.Integer) and -4 <= int(ex) < 0:
            b = self._p(base)
            return Code("(1.0 / (" + " * ".join([b.as_float()] * -int(ex)) + "))", "float")
        x = self._p(ex).as_float()
        if base == 2:
            return Code(f"tl.exp2({x})", "float")
        if base.is_number:
            return Code(f"tl.exp({x} * {_flt(math.log(float(base)))})", "float")
        return Code(f"tl.exp({x} * tl.log({self._p(base).as_float()}))", "float")

    def _floor(self, e: sympy.Basic) -> Code:
        """floor/ceiling: an exact integer division when the argument is a rational combination
        of integers (the common ``floor(p/K)``), else a float floor."""
        arg = e.args[0]
        den = 1
        for term in sympy.Add.make_args(sympy.expand(arg)):
            coeff, _ = term.as_coeff_Mul()
            if isinstance(coeff, sympy.Rational):
                den = int(sympy.ilcm(den, coeff.q))
        num = sympy.expand(arg * den)
        numc = self._p(num) if num.free_symbols or num.is_Integer else None
        if numc is not None and numc.kind == "int":
            fn = "_ef_floordiv" if isinstance(e, sympy.floor) else "_ef_ceildiv"
            return Code(f"{fn}({numc.text}, {int(den)})", "int")
        fn = "tl.floor" if isinstance(e, sympy.floor) else "tl.ceil"
        return Code(f"{fn}({self._p(arg).as_float()})", "float")


# Helper jit functions every generated module carries (exact integer floor/ceil division, tanh).
HELPERS = '''
@triton.jit
def _ef_floordiv(a, d):
    # floor division that is exact whether // truncates (hardware) or floors (interpreter)
    q = a // d
    return tl.where(a - q * d < 0, q - 1, q)


@triton.jit
def _ef_ceildiv(a, d):
    return -_ef_floordiv(-a, d)


@triton.jit
def _ef_tanh(x):
    # tanh through sigmoid: saturates cleanly to +-1 for large |x|
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _ef_elu1(x):
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
'''

_UNARY_FMT: dict[str, str] = {
    "exp": "tl.exp({})", "log": "tl.log({})", "neg": "(-{})", "sigmoid": "tl.sigmoid({})",
    "relu": "tl.maximum({}, 0.0)", "reciprocal": "(1.0 / {})", "tanh": "_ef_tanh({})",
    "sqrt": "tl.sqrt({})", "abs": "tl.abs({})", "elu1": "_ef_elu1({})", "square": "({0} * {0})",
}
_BINARY_FMT: dict[str, str] = {
    "add": "({} + {})", "sub": "({} - {})", "mul": "({} * {})", "div": "({} / {})",
    "max": "tl.maximum({}, {})", "min": "tl.minimum({}, {})",
}


def emit_value(e: Expr, leaf: Callable[[Access], str], index: IndexPrinter) -> str:
    """A value expression as Triton text; ``leaf`` names the variable holding each access."""
    if isinstance(e, Access):
        return leaf(e)
    if isinstance(e, Const):
        return _flt(e.value)
    if isinstance(e, IndexValue):
        return index(e.expr).as_float()
    if isinstance(e, Unary):
        return _UNARY_FMT[e.op].format(emit_value(e.arg, leaf, index))
    if isinstance(e, Binary):
        return _BINARY_FMT[e.op].format(emit_value(e.left, leaf, index), emit_value(e.right, leaf, index))
    if isinstance(e, Select):
        cond = index(e.cond).text
        return f"tl.where({cond}, {emit_value(e.then, leaf, index)}, {emit_value(e.otherwise, leaf, index)})"
    if isinstance(e, Empty):
        raise CodegenError("an `empty` value cannot appear inside a generated score expression")
    raise CodegenError(f"cannot emit expression node {e!r} as Triton code")


# ---- loading generated source: one loader and cache for every generator -------------------------
from einfuse.codegen.triton.loader import load_module  # noqa: E402,F401  (re-exported for the generators)


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in text.splitlines())
