"""Parser for the text form printed by :mod:`einfuse.ir.printer`.

Index expressions and constraints are handed to sympy with every name bound to einfuse's own
symbols (lower case: rank indices, upper case: sizes), so the parsed cascade is structurally equal to
the printed one. Value expressions are parsed by a small recursive-descent parser that builds nodes
through the folding constructors of :mod:`einfuse.ir.expr`.
"""

from __future__ import annotations

import json
import re

import sympy
from sympy.parsing.sympy_parser import parse_expr

from einfuse.errors import ParseError
from einfuse.ir import captures
from einfuse.ir.bitwise import BITWISE
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import (
    COMPARE_OPS,
    UNARY_OPS,
    Access,
    Compare,
    Const,
    Empty,
    Expr,
    as_expr,
    binary,
    compare,
    select,
    unary,
)
from einfuse.ir.ranks import Partition, Rank, check_expression_text, index_symbol, size_symbol
from einfuse.ir.tensor import Tensor
from einfuse.ir.validate import validate

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_NUMBER = re.compile(r"(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)")
_SYMPY_FUNCS = {
    "Abs": sympy.Abs, "Mod": sympy.Mod, "floor": sympy.floor, "ceiling": sympy.ceiling,
    "Max": sympy.Max, "Min": sympy.Min, "And": sympy.And, "Or": sympy.Or, "Not": sympy.Not,
    "Eq": sympy.Eq, "Ne": sympy.Ne, "exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt,
    "Piecewise": sympy.Piecewise, "true": sympy.true, "false": sympy.false, "oo": sympy.oo,
    "Rational": sympy.Rational, "Integer": sympy.Integer, "Float": sympy.Float, **BITWISE,
}
_COMPARE_BY_TEXT = {text: op for op, text in COMPARE_OPS.items()}


def parse_index_expr(text: str, line: str = "") -> sympy.Basic:
    """Parse an index expression or predicate with einfuse's symbol conventions."""
    try:
        check_expression_text(text)
    except ValueError as exc:
        raise ParseError(f"cannot parse index expression {text[:200]!r}{_at(line)}: {exc}") from None
    local: dict[str, object] = dict(_SYMPY_FUNCS)
    local.update({name: cap.fn for name, cap in captures.current().items()})  # reads of captured tensors
    for call in _CALL.findall(text):
        if call not in local:  # NAME(...) of an undeclared name: a captured tensor missing its declaration
            raise ParseError(f"{call}(...) in {text!r}{_at(line)} reads a captured tensor that is not declared; "
                             f"add 'capture {call}[_] float' (one _ per dimension; float or int)")
    for name in _NAME.findall(text):
        if name in local:
            continue
        local[name] = size_symbol(name) if name[0].isupper() else index_symbol(name)
    try:
        if "**" in text:  # sympy would compute 9**9**9 exactly, for minutes: look at the powers first
            check_powers(parse_expr(text, local_dict=local, evaluate=False), text, line)
        return sympy.sympify(parse_expr(text, local_dict=local, evaluate=True))
    except ParseError:
        raise
    except Exception as exc:  # sympy raises many kinds; report them uniformly
        raise ParseError(f"cannot parse index expression {text!r}{_at(line)}: {exc}") from None


MAX_POWER_DIGITS = 1000


def check_powers(e: sympy.Basic, text: str, line: str = "") -> float:
    """log10 of the magnitude of a numeric (sub)expression (0 for symbolic ones); raises ParseError
    when a power of numbers would have more than MAX_POWER_DIGITS digits."""
    import math

    if isinstance(e, sympy.Rational):  # integers too: digits from the bit lengths, never a float overflow
        return max(abs(e.p).bit_length(), e.q.bit_length()) * math.log10(2)
    if isinstance(e, sympy.Float):
        return math.log10(abs(float(e))) if e and math.isfinite(float(e)) else 0.0
    logs = [check_powers(a, text, line) for a in e.args]
    if not isinstance(e, sympy.Pow) or not e.args[1].is_number:
        return max(logs, default=0.0) if e.is_number else 0.0
    base_log, exp_log = logs
    if exp_log > 6:  # an exponent above a million
        raise ParseError(f"index expression {text!r}{_at(line)}: the power {e} is too large to evaluate")
    exponent = float(e.args[1]) if exp_log < 6 else math.inf
    if e.args[0].is_number and abs(exponent) * base_log > MAX_POWER_DIGITS:
        raise ParseError(f"index expression {text!r}{_at(line)}: the power {e} is too large to evaluate")
    return abs(exponent) * base_log if e.args[0].is_number else 0.0


def _at(line: str) -> str:
    return f" in line {line!r}" if line else ""


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside (), [] — index expressions may contain commas (Max(a, b))."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


class _ExprParser:
    """Recursive descent over one value expression (character level, skipping spaces)."""

    def __init__(self, text: str, line: str) -> None:
        self.s, self.i, self.line = text, 0, line

    def error(self, msg: str) -> ParseError:
        return ParseError(f"{msg} at column {self.i + 1} of {self.s!r}{_at(self.line)}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.i += 1

    def balanced(self, close: str) -> str:
        """Raw text up to the matching close bracket (which is consumed)."""
        depth, start = 0, self.i
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                if depth == 0:
                    if ch != close:
                        raise self.error(f"unbalanced {ch!r}")
                    text = self.s[start:self.i]
                    self.i += 1
                    return text
                depth -= 1
            self.i += 1
        raise self.error(f"missing {close!r}")

    def parse(self) -> Expr:
        e = self.expr()
        if self.peek():
            raise self.error(f"unexpected {self.peek()!r}")
        return e

    def expr(self) -> Expr:
        e = self.term()
        while self.peek() in ("+", "-"):
            op = "add" if self.s[self.i] == "+" else "sub"
            self.i += 1
            e = binary(op, e, self.term())
        return e

    def term(self) -> Expr:
        e = self.unary()
        while self.peek() in ("*", "/"):
            op = "mul" if self.s[self.i] == "*" else "div"
            self.i += 1
            e = binary(op, e, self.unary())
        return e

    def unary(self) -> Expr:
        if self.peek() == "-":
            self.i += 1
            return unary("neg", self.unary())
        return self.atom()

    def atom(self) -> Expr:
        ch = self.peek()
        if not ch:
            raise self.error("expression ends early")
        if ch == "(":
            self.i += 1
            e = self.expr()
            self.expect(")")
            return e
        m = _NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            return Const(float(m.group(0)))
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self.error(f"unexpected {ch!r}")
        name = m.group(0)
        self.i = m.end()
        nxt = self.peek()
        if nxt == "[":
            self.i += 1
            idx = [parse_index_expr(t, self.line) for t in split_top(self.balanced("]"))]
            return Access(name, tuple(idx))
        if nxt == "(":
            self.i += 1
            return self.call(name)
        if name in ("inf", "nan"):
            return Const(float(name))
        if name == "empty":
            return Empty()
        return as_expr(parse_index_expr(name, self.line))

    def value_condition(self, text: str) -> Compare | None:
        """``S[m,p] > 0.0``: a comparison of values (one comparison operator outside brackets, and a
        side that is not an index value); None for an index predicate, which sympy parses."""
        depth, found = 0, []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch in "<>=!":
                op = text[i:i + 2] if text[i:i + 2] in _COMPARE_BY_TEXT else ch
                if op in _COMPARE_BY_TEXT:
                    found.append((i, op))
                i += len(op)
                continue
            i += 1
        if len(found) != 1:
            return None
        at, op = found[0]
        try:
            left = _ExprParser(text[:at], self.line).parse()
            right = _ExprParser(text[at + len(op):], self.line).parse()
        except ParseError:
            return None
        cond = compare(_COMPARE_BY_TEXT[op], left, right)
        return cond if isinstance(cond, Compare) else None

    def call(self, name: str) -> Expr:
        if name == "idx":
            return as_expr(parse_index_expr(self.balanced(")"), self.line))
        if name == "where":
            parts = split_top(self.balanced(")"))
            if len(parts) != 3:
                raise self.error("where(cond, a, b) takes 3 arguments")
            cond = self.value_condition(parts[0])
            return select(parse_index_expr(parts[0], self.line) if cond is None else cond, _ExprParser(parts[1], self.line).parse(),
                          _ExprParser(parts[2], self.line).parse())
        args = [_ExprParser(p, self.line).parse() for p in split_top(self.balanced(")"))]
        if name in ("max", "min"):
            if len(args) != 2:
                raise self.error(f"{name}(a, b) takes 2 arguments (a reduction is written {name}(m) X)")
            return binary(name, args[0], args[1])
        if name in UNARY_OPS:
            if len(args) != 1:
                raise self.error(f"{name} takes 1 argument, got {len(args)}")
            return unary(name, args[0])
        raise self.error(f"unknown function {name!r}")


def parse_expr_text(text: str, line: str = "") -> Expr:
    return _ExprParser(text, line).parse()


_REDUCE_PREFIX = re.compile(r"^\s*(sum|max|min)\(\s*([a-z][a-z0-9]*(?:\s*,\s*[a-z][a-z0-9]*)*)\s*\)\s*")
_DECL = re.compile(r"^(input|output|tensor)\s+([A-Za-z_][A-Za-z0-9_]*)\[([^\]]*)\]\s*(\w+)?\s*$")


def _split_einsum_line(line: str) -> tuple[str, str, str | None, str]:
    body, _, comment = line.partition("#")
    parts = split_top(body, "=")
    if len(parts) < 2:
        raise ParseError(f"expected 'OUT[...] = ...'{_at(line)}")
    lhs, rhs = parts[0], body[body.index("=", len(parts[0])) + 1:]
    # the constraint follows the first top-level ':'
    pieces = split_top(rhs, ":")
    constraint = ":".join(pieces[1:]).strip() if len(pieces) > 1 else None
    return lhs.strip(), pieces[0].strip(), constraint, comment.strip()


def parse_einsum(text: str, c: Cascade) -> Einsum:
    """Parse one Einsum line in the context of a cascade's declarations."""
    lhs_text, rhs, constraint, comment = _split_einsum_line(text)
    lhs = parse_expr_text(lhs_text, text)
    if not isinstance(lhs, Access):
        raise ParseError(f"left-hand side must be a tensor access{_at(text)}")
    reduce_op, explicit = None, None
    m = _REDUCE_PREFIX.match(rhs)
    if m and m.end() < len(rhs) and rhs[m.end()] not in "*/+-)":
        reduce_op = m.group(1)
        explicit = [index_symbol(v.strip()) for v in m.group(2).split(",")]
        rhs = rhs[m.end():]
    expr = parse_expr_text(rhs, text)
    where = parse_index_expr(constraint, text) if constraint else None
    e = Einsum(lhs, expr, reduce=reduce_op or "sum", where=where, comment=comment)
    reduced = c.reduced_vars(e)
    if explicit is not None:
        unknown = [v for v in explicit if c.rank_of_index(v) is None]
        if unknown:
            raise ParseError(f"Einsum {lhs.tensor}: reduction over rank {unknown[0]} that does not exist")
        if set(explicit) != set(reduced):
            raise ParseError(
                f"Einsum {lhs.tensor}: {reduce_op}({','.join(map(str, explicit))}) but the ranks missing "
                f"from the output are ({','.join(map(str, reduced))})")
    if not reduced:
        e = Einsum(lhs, expr, reduce=None, where=where, comment=comment)
    return e


def parse_cascade(text: str) -> Cascade:
    """Parse a whole cascade; the result is validated."""
    if not isinstance(text, str):
        hint = " (decode it first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise ParseError(f"parse_cascade takes the text form as a str, got {type(text).__name__}{hint}")
    name = "cascade"
    ranks: dict[str, Rank] = {}
    tensors: dict[str, Tensor] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    partitions: list[Partition] = []
    params: dict[str, float] = {}
    attrs: dict[str, object] = {}
    einsum_lines: list[str] = []
    caps: dict[str, captures.Capture] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split()[0]
        rest = line[len(word):].strip()
        if word == "cascade":
            name = rest or name
        elif word == "ranks":
            for item in split_top(rest):
                rname, _, ext = item.partition("=")
                try:
                    r = Rank.of(rname.strip(), ext.strip() or None)
                except ValueError as exc:
                    raise ParseError(f"{exc}{_at(line)}") from None
                if r.name in ranks:
                    raise ParseError(f"rank {r.name} is declared twice{_at(line)}")
                ranks[r.name] = r
        elif word == "params":
            for item in split_top(rest):
                k, _, v = item.partition("=")
                if k.strip() in params:
                    raise ParseError(f"param {k.strip()} is declared twice{_at(line)}")
                try:
                    params[k.strip()] = float(v)
                except ValueError:
                    raise ParseError(f"param {k.strip()} needs a number{_at(line)}") from None
        elif word == "partition":
            m = re.match(r"^([A-Z][A-Z0-9]*)\s*->\s*([A-Z][A-Z0-9]*)\s*,\s*([A-Z][A-Z0-9]*)$", rest)
            if not m:
                raise ParseError(f"expected 'partition M -> M1, M0'{_at(line)}")
            partitions.append(Partition(*m.groups()))
        elif word == "attr":
            k, _, v = rest.partition("=")
            if k.strip() in attrs:
                raise ParseError(f"attr {k.strip()} is set twice{_at(line)}")
            try:
                attrs[k.strip()] = json.loads(v)
            except json.JSONDecodeError:
                raise ParseError(f"attr {k.strip()} value is not JSON{_at(line)}") from None
        elif word == "capture":
            try:
                cap = captures.parse_declaration(line)
            except ValueError as exc:
                raise ParseError(f"{exc}{_at(line)}") from None
            if cap.name in caps:
                raise ParseError(f"captured tensor {cap.name} is declared twice{_at(line)}")
            caps[cap.name] = cap
        elif word in ("input", "output", "tensor"):
            m = _DECL.match(line)
            if not m:
                raise ParseError(f"expected '{word} NAME[R1,R2] [dtype]'{_at(line)}")
            kind, tname, rtext, dtype = m.groups()
            if tname in tensors:
                raise ParseError(f"tensor {tname} is declared twice{_at(line)}")
            rlist, iterative = [], set()
            for r in split_top(rtext):
                if r.endswith("+1"):
                    r = r[:-2].strip()
                    iterative.add(r)
                rlist.append(r)
            try:
                tensors[tname] = Tensor(tname, tuple(rlist), dtype or "f32", frozenset(iterative))
            except ValueError as exc:
                raise ParseError(f"{exc}{_at(line)}") from None
            (inputs if kind == "input" else outputs if kind == "output" else []).append(tname)
        else:
            einsum_lines.append(line)
    c = Cascade(name, ranks, tensors, (), tuple(inputs), tuple(outputs), tuple(partitions), params, attrs, caps)
    with captures.declared(caps):
        einsums = tuple(parse_einsum(line, c) for line in einsum_lines)
    return validate(c.with_einsums(einsums))
