"""Read a softmax cascade into what the split-KV decode kernel needs: the logit and the mask.

The cascade is the naive softmax the DSL writes: ``QK[m,p] = Q[p,e] * K[m,e] * scale : mask``, an
optional ``S[m,p] = score_mod(QK, p, m, h, ...)``, then ``GM[p] = max_m S``, ``exp(S - GM)``, its sum,
the division and ``O[p,f] = A[m,p] * V[m,f]``. The *logit* is the argument of the max-reduction,
inlined back to the score Einsum (whose value the kernel computes as one ``tl.dot`` times the
scale); the *mask* is the score Einsum's constraint. Both are expressions of the cascade, printed
into the kernel as they stand, so ALiBi, soft-capping or a bottom-right causal decode mask need no
code of their own here.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import (
    Access,
    Const,
    Expr,
    IndexValue,  # noqa: F401
    Unary,
    accesses,
    index_symbols,
    walk,
)
from einfuse.ir.printer import format_einsum
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX
from einfuse.lowering.linear import (
    M_IDX,
    P_IDX,
    _find_score,
    inline_elementwise,
    product_factors,
)


@dataclass(frozen=True)
class DecodePlan:
    """``logit`` is an expression whose one tensor leaf is ``Access(score, (m, p))`` (the scaled
    dot product); ``sizes`` are the size symbols that the logit or mask mention, bound at run time."""

    name: str
    q: str
    k: str
    v: str
    score: str
    scale: float | sympy.Expr
    logit: Expr
    mask: sympy.Basic | None
    sizes: tuple[str, ...]
    params: dict[str, float]
    einsums: tuple[str, ...]


def analyse_decode(c: Cascade) -> DecodePlan:
    """The :class:`DecodePlan` of a softmax cascade, or a CodegenError naming what does not fit."""
    if c.attrs.get("family") != "softmax":
        raise CodegenError(f"{c.name}: build_decode needs a softmax cascade (attrs family = softmax), "
                           f"got family {c.attrs.get('family')!r}")
    if c.partitions:
        raise CodegenError(f"{c.name}: build_decode takes the unlowered cascade (it splits the keys itself)")
    if len(c.outputs) != 1:
        raise CodegenError(f"{c.name}: expected one output, got {len(c.outputs)}")
    score = _find_score(c)
    (ev,) = c.reduced_vars(score)
    facs = product_factors(score.expr)
    qa = [f for f in facs if isinstance(f, Access) and f.tensor in c.inputs and f.indices == (P_IDX, ev)]
    ka = [f for f in facs if isinstance(f, Access) and f.tensor in c.inputs and f.indices == (M_IDX, ev)]
    positions = set(c.index_vars()) | {BATCH_INDEX, HEAD_INDEX}
    consts = [f for f in facs if isinstance(f, Const)
              or (isinstance(f, IndexValue) and not f.expr.free_symbols & positions)]
    if len(qa) != 1 or len(ka) != 1 or 2 + len(consts) != len(facs):
        raise CodegenError(f"{c.name}: score Einsum {score.name} must be Q[p,e] * K[m,e] (times a constant)")
    # a constant, or a function of sizes bound at launch (the default scale 1/sqrt(E))
    scale_expr = sympy.Mul(*[sympy.Float(f.value) if isinstance(f, Const) else f.expr for f in consts])
    scale = float(scale_expr) if scale_expr.is_number else scale_expr

    maxes = [e for e in c.einsums if e.reduce == "max" and c.reduced_vars(e) == [M_IDX]
             and e.output.indices == (P_IDX,)]
    if len(maxes) != 1:
        raise CodegenError(f"{c.name}: expected one max over keys (GM[p] = max(m) S[m,p]), found {len(maxes)}")
    if maxes[0].where is not None:
        raise CodegenError(f"{c.name}: the max Einsum {maxes[0].name} must not carry its own constraint")
    wheres: list[sympy.Basic] = [score.where] if score.where is not None else []
    logit = inline_elementwise(c, maxes[0].expr, {score.name}, wheres)
    mask = sympy.And(*dict.fromkeys(wheres)) if wheres else None
    leaves = accesses(logit)
    if not leaves or any(a.tensor != score.name or a.indices != (M_IDX, P_IDX) for a in leaves):
        raise CodegenError(f"{c.name}: the logit {maxes[0].expr} must be a function of {score.name}[m,p] "
                           "and indices only")
    if not any(isinstance(n, Unary) and n.op == "exp" and _reads(n.arg, maxes[0].name)
               for e in c.einsums for n in walk(e.expr)):
        raise CodegenError(f"{c.name}: no exp(S - {maxes[0].name}) numerator: not a softmax cascade")

    out = c.einsums[c.producers(c.outputs[0])[0]]
    vals = [f for f in product_factors(out.expr)
            if isinstance(f, Access) and f.tensor in c.inputs and f.indices and f.indices[0] == M_IDX]
    if out.reduce != "sum" or c.reduced_vars(out) != [M_IDX] or len(vals) != 1:
        raise CodegenError(f"{c.name}: output {out.name} must be sum_m A[m,p] * V[m,f]")

    kernel_syms = {P_IDX, M_IDX, HEAD_INDEX, BATCH_INDEX}
    syms = index_symbols(logit) | (mask.free_symbols if mask is not None else set())
    ivars = set(c.index_vars())
    bad = [s for s in syms if s in ivars and s not in kernel_syms]
    if bad:
        raise CodegenError(f"{c.name}: logit or mask uses rank indices {bad}; only p, m, h, b are known")
    sizes = tuple(sorted(str(s) for s in syms - kernel_syms - ivars))
    return DecodePlan(c.name, qa[0].tensor, ka[0].tensor, vals[0].tensor, score.name, scale, logit,
                      mask, sizes, dict(c.params), tuple(format_einsum(c, e) for e in c.einsums))


def _reads(e: Expr, tensor: str) -> bool:
    return any(a.tensor == tensor for a in accesses(e))
