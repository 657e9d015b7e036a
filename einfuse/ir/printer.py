"""Text form of cascades, close to the FuseMax paper's notation.

One declaration or Einsum a line::

    cascade softmax_causal
    ranks E, F, M, P
    input Q[P,E]
    input K[M,E]
    input V[M,F]
    output AV[P,F]
    tensor QK[M,P]
    QK[m,p] = Q[p,e] * K[m,e] : m <= p
    GM[p] = max(m) QK[m,p]

A rank missing from the left-hand side is summed unless a ``max(m)``/``min(m)`` prefix says otherwise;
constraints follow ``:``; index-valued terms print as ``idx(...)``. :mod:`einfuse.ir.parser` reads
exactly this form back (print -> parse -> print is a fixed point).
"""

from __future__ import annotations

import json
import math

import sympy

from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import (
    COMPARE_OPS,
    INFIX,
    PRECEDENCE,
    Access,
    Binary,
    Compare,
    Const,
    Empty,
    Expr,
    IndexValue,
    Select,
    Unary,
)


def format_index(i: sympy.Expr) -> str:
    return str(i).replace(" ", "")


def format_const(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return "nan"
    return repr(float(v))


def _prec(e: Expr) -> int:
    if isinstance(e, Binary) and e.op in PRECEDENCE:
        return PRECEDENCE[e.op]
    if isinstance(e, Const) and e.value < 0:
        return 2.5  # a leading minus: parenthesise where a unary minus would rebind
    return 3


def format_expr(e: Expr) -> str:
    """Print a value expression with the fewest parentheses that still parse back identically."""
    if isinstance(e, Access):
        return f"{e.tensor}[{','.join(format_index(i) for i in e.indices)}]"
    if isinstance(e, Const):
        return format_const(e.value)
    if isinstance(e, Empty):
        return "empty"
    if isinstance(e, IndexValue):
        return f"idx({e.expr})"
    if isinstance(e, Unary):
        if e.op == "neg":
            inner = format_expr(e.arg)
            return f"-{inner}" if _prec(e.arg) >= 3 else f"-({inner})"
        return f"{e.op}({format_expr(e.arg)})"
    if isinstance(e, Select):
        return f"where({format_expr(e.cond) if isinstance(e.cond, Compare) else e.cond}, " \
               f"{format_expr(e.then)}, {format_expr(e.otherwise)})"
    if isinstance(e, Compare):
        return f"{format_expr(e.left)} {COMPARE_OPS[e.op]} {format_expr(e.right)}"
    if isinstance(e, Binary):
        if e.op not in INFIX:
            return f"{e.op}({format_expr(e.left)}, {format_expr(e.right)})"
        p = PRECEDENCE[e.op]
        left = format_expr(e.left)
        right = format_expr(e.right)
        if _prec(e.left) < p:
            left = f"({left})"
        if _prec(e.right) <= p:
            right = f"({right})"
        return f"{left} {INFIX[e.op]} {right}"
    raise TypeError(f"cannot print {e!r}")


def format_einsum(c: Cascade, e: Einsum) -> str:
    rhs = format_expr(e.expr)
    reduced = c.reduced_vars(e)
    if reduced and e.reduce != "sum":
        if rhs.startswith("-"):
            rhs = f"({rhs})"
        rhs = f"{e.reduce}({','.join(map(str, reduced))}) {rhs}"
    line = f"{format_expr(e.output)} = {rhs}"
    if e.where is not None:
        line += f" : {e.where}"
    if e.comment:
        line += f"  # {e.comment}"
    return line


def format_tensor_decl(c: Cascade, name: str) -> str:
    t = c.tensors[name]
    kind = "input" if name in c.inputs else "output" if name in c.outputs else "tensor"
    ranks = ",".join(f"{r}+1" if r in t.iterative else r for r in t.ranks)
    dtype = "" if t.dtype == "f32" else f" {t.dtype}"
    return f"{kind} {name}[{ranks}]{dtype}"


def format_cascade(c: Cascade) -> str:
    lines = [f"cascade {c.name}"]
    ranks = [r.name if r.is_default_extent else f"{r.name} = {r.extent}" for r in c.ranks.values()]
    lines.append("ranks " + ", ".join(ranks))
    if c.params:
        lines.append("params " + ", ".join(f"{k} = {_fmt_param(v)}" for k, v in c.params.items()))
    for p in c.partitions:
        lines.append(f"partition {p.parent} -> {p.outer}, {p.inner}")
    for k, v in c.attrs.items():
        lines.append(f"attr {k} = {json.dumps(v)}")
    lines.extend(cap.declaration() for cap in c.captures.values())
    order = list(c.inputs) + list(c.outputs) + [t for t in c.tensors if t not in c.inputs + c.outputs]
    lines.extend(format_tensor_decl(c, t) for t in order)
    lines.extend(format_einsum(c, e) for e in c.einsums)
    return "\n".join(lines) + "\n"


def _fmt_param(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def to_dot(c: Cascade) -> str:
    """Graphviz source of the tensor dataflow graph (inputs as boxes, Einsums labelled)."""
    out = [f'digraph "{c.name}" {{', "  rankdir=TB;"]
    for t in c.tensors:
        shape = "box" if t in c.inputs else "doublecircle" if t in c.outputs else "ellipse"
        out.append(f'  "{t}" [shape={shape}];')
    for e in c.einsums:
        for t in e.operand_tensors():
            out.append(f'  "{t}" -> "{e.output.tensor}";')
    out.append("}")
    return "\n".join(out) + "\n"
