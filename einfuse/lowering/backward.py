"""The backward plan of a one-pass softmax (or sigmoid) plan: what the gradient kernels must compute.

Forward (per query ``p``, key ``m``; ``x = Q[p,:].K[m,:]`` is the dot product, ``s = score(x, p, m,
h, b)`` the plan's score expression, ``keep`` its mask)::

    P[m,p] = exp(s - LSE[p])   where keep(p, m), else 0     LSE[p] = log sum_m exp(s)  (saved)
    O[p,f] = sum_m P[m,p] V[m,f]

Backward, FlashAttention-2's schedule with the probabilities recomputed from the saved LSE::

    D[p]     = sum_f dO[p,f] O[p,f]                          (preprocess)
    dV[m,f]  = sum_p P[m,p] dO[p,f]
    dP[m,p]  = sum_f dO[p,f] V[m,f]
    dS[m,p]  = P[m,p] (dP[m,p] - D[p])                        (gradient of the score)
    dX[m,p]  = dS[m,p] * ds/dx (x, p, m, h, b)                (chain rule through the score)
    dQ[p,e]  = sum_m dX[m,p] K[m,e]        dK[m,e] = sum_p dX[m,p] Q[p,e]

``ds/dx`` is derived here from the score expression by the chain rule over the IR tree
(:func:`score_derivative`): ``x * c`` gives ``c``, ALiBi's index-valued bias drops out, soft-cap's
``c * tanh(x / c)`` gives ``1 - tanh(x / c)^2``, and any user ``score_mod`` built from the IR's
operators differentiates the same way. The mask and the block tables are the forward plan's: a
tile pair empty in the forward pass contributes nothing to any gradient, so the dK/dV loop (one key
tile, walking query tiles) reads the tables transposed and the dQ loop (one query tile, walking key
tiles) reads them as the forward pass does. With grouped-query attention the dK/dV of one K/V head
sum over the query heads of its group.

Sigmoid attention (``O = sum_m sigmoid(s) V``, FlashSigmoid) has no normaliser: ``A = sigmoid(s)`` is
recomputed from the score alone and ``dS = dA * A * (1 - A)`` with ``dA = dO V^T``; nothing is saved
and there is no preprocess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.expr import Access, Binary, Const, Empty, Expr, IndexValue, Select, Unary, binary, walk
from einfuse.ir.printer import format_expr
from einfuse.lowering.blocks import BlockTables
from einfuse.lowering.onepass import DOT, OnePassPlan
from einfuse.lowering.plan import KernelPlan

if TYPE_CHECKING:
    from einfuse.lowering.linear_backward import LinearBackwardPlan

STEP = "step"
"""A unary operator of derivatives only (not of the IR's value language): 1 where its argument is
positive, else 0 (the derivative of relu, and the selector of max/min)."""

BACKWARD_FAMILIES = ("softmax", "sigmoid")


@dataclass(frozen=True)
class BackwardPlan:
    """The backward of one one-pass plan: the forward's score, mask and tile classes, the score's
    derivative with respect to the dot product, and the kernels' loops in order."""

    name: str
    family: str
    forward: OnePassPlan
    dscore: Expr
    """``ds/dx`` over ``Access(DOT, (m, p))`` and index values (the forward score's symbols)."""
    steps: tuple[tuple[str, str], ...]
    """(kernel, what it computes) in launch order."""

    @property
    def score(self) -> Expr:
        return self.forward.score

    @property
    def mask(self) -> sympy.Basic | None:
        return self.forward.mask

    @property
    def dscore_constant(self) -> float | None:
        """``c`` when the derivative does not depend on the dot or the positions (a plain scale)."""
        return self.dscore.value if isinstance(self.dscore, Const) else None


def backward_plan(plan: KernelPlan) -> BackwardPlan | LinearBackwardPlan:
    """The backward plan of a one-pass softmax or sigmoid :class:`KernelPlan` (errors name what is missing)."""
    if plan.family == "linear":  # chunked linear attention: the reverse state recurrence
        from einfuse.lowering.linear_backward import linear_backward_plan

        return linear_backward_plan(plan)
    if plan.family not in BACKWARD_FAMILIES or not isinstance(plan.detail, OnePassPlan):
        raise CodegenError(f"{plan.name}: no backward for {plan.family} plans yet (softmax and sigmoid "
                           "one-pass plans, and linear plans, only); call it under torch.no_grad() or detach the inputs")
    fwd: OnePassPlan = plan.detail
    ds = score_derivative(fwd.score)
    if plan.family == "sigmoid":
        return BackwardPlan(plan.name, plan.family, fwd, ds, SIGMOID_STEPS)
    steps = (
        ("forward", "O and LSE[p] = max + log(sum exp(s - max)) saved per query row (+inf for rows "
                    "with no kept key)"),
        ("preprocess", "D[p] = sum_f dO[p,f] * O[p,f], one program per query tile"),
        ("dkdv", "per key tile (and K/V head): walk the query tiles of the transposed block tables "
                 "(and the query heads of the group); recompute P = exp(s - LSE), "
                 "dV += P^T dO, dS = P * (dO V^T - D), dX = dS * ds/dx, dK += dX^T Q"),
        ("dq", "per query tile: walk the key tiles of the forward's block tables; "
               "recompute P and dS as above, dQ += dX K"),
    )
    return BackwardPlan(plan.name, plan.family, fwd, ds, steps)


SIGMOID_STEPS = (
    ("forward", "O = sum_m sigmoid(s) V; nothing saved (no normaliser)"),
    ("dkdv", "per key tile (and K/V head): walk the query tiles of the transposed block tables "
             "(and the query heads of the group); recompute A = sigmoid(s), dV += A^T dO, "
             "dS = (dO V^T) * A * (1 - A), dX = dS * ds/dx, dK += dX^T Q"),
    ("dq", "per query tile: walk the key tiles of the forward's block tables; recompute A and dS as "
           "above, dQ += dX K"),
)
"""Sigmoid attention's backward: no log-sum-exp and no ``D = rowsum(dO * O)`` (the weights are not
normalised, so a row's weights do not depend on each other)."""


def format_backward_plan(bp: BackwardPlan | LinearBackwardPlan, indent: str = "") -> str:
    """The backward plan in readable text, one fact per line (``einfuse passes SPEC --backward``)."""
    if not isinstance(bp, BackwardPlan):  # a linear plan
        from einfuse.lowering.linear_backward import format_linear_backward

        return format_linear_backward(bp, indent)
    def text(e: Expr) -> str:
        return format_expr(e).replace(f"{DOT}[m,p]", "Q.K")

    lines = [f"{indent}backward plan {bp.name}: {bp.family}",
             f"{indent}  score     s = {text(bp.score)}",
             f"{indent}  ds/dx     {text(bp.dscore)}   (x = Q.K)",
             f"{indent}  mask      {bp.mask if bp.mask is not None else 'none (every pair kept)'}",
             f"{indent}  tiles     the forward's block tables: query-major for dQ, transposed "
             "(key-major) for dK/dV; empty tile pairs skipped"]
    for kernel, what in bp.steps:
        lines.append(f"{indent}  {kernel:<9} {what}")
    return "\n".join(lines)


def transpose_tables(tables: BlockTables, n_q_tiles: int) -> BlockTables:
    """The forward's block tables key-major: per (mask head, key tile), the FULL and PARTIAL query
    tiles (the dK/dV loop's lists). Dense tables stay dense (the kernel derives them from ``n_full``)."""
    import torch

    from einfuse.lowering.blocks import FULL, PARTIAL, pack_lists

    if tables.dense:
        return tables
    kinds = torch.zeros((*tables.full_num.shape, tables.n_k_tiles), dtype=torch.int8,
                        device=tables.full_num.device)
    for num, idx, kind in ((tables.full_num, tables.full_idx, FULL), (tables.part_num, tables.part_idx, PARTIAL)):
        ramp = torch.arange(idx.shape[-1], device=idx.device, dtype=torch.int32)
        used = ramp < num[..., None]   # padded entries are distinct unused tiles: scatter nothing there
        sel = torch.zeros_like(kinds, dtype=torch.bool).scatter_(-1, idx.long(), used)
        kinds[sel] = kind
    kinds_t = kinds.transpose(-1, -2)
    full_num, full_idx, full_contig = pack_lists(kinds_t == FULL)
    part_num, part_idx, part_contig = pack_lists(kinds_t == PARTIAL)
    return BlockTables(False, n_q_tiles, 0, full_num, full_idx, part_num, part_idx, full_contig, part_contig,
                       tables.head_dependent, tables.visited_fraction, f"{tables.method}, transposed")


# ---- the chain rule over value expressions -------------------------------------------------------

def score_derivative(score: Expr) -> Expr:
    """``d score / d x`` where ``x`` is the leaf ``Access(DOT, ...)``, as a value expression.

    Index values and constants have derivative 0; the operators of the IR's value language follow
    their textbook rules; ``where(cond, a, b)`` (an index predicate or a comparison of values) is
    ``where(cond, a', b')``, the derivative almost everywhere; ``max``/``min`` pass the derivative of the larger/smaller operand on
    (subgradient at ties); ``relu`` and ``abs`` use :data:`STEP`.
    """
    for n in walk(score):
        if isinstance(n, Access) and n.tensor != DOT:
            raise CodegenError(f"score reads tensor {n.tensor}; only the Q.K product can be differentiated")
        if isinstance(n, Empty):
            raise CodegenError("an empty value cannot appear inside a score expression")
    return _d(score)


def _zero(e: Expr) -> bool:
    return isinstance(e, Const) and e.value == 0.0


def _one(e: Expr) -> bool:
    return isinstance(e, Const) and e.value == 1.0


def _add(a: Expr, b: Expr) -> Expr:
    if _zero(a):
        return b
    if _zero(b):
        return a
    return binary("add", a, b)


def _sub(a: Expr, b: Expr) -> Expr:
    if _zero(b):
        return a
    if _zero(a):
        return _neg(b)
    return binary("sub", a, b)


def _mul(a: Expr, b: Expr) -> Expr:
    """``a * b`` with constant factors gathered into one (``20 * (t * 0.05)`` -> ``t``)."""
    ca, ra = _split_const(a)
    cb, rb = _split_const(b)
    c = ca * cb
    if c == 0.0:
        return Const(0.0)
    rest = ra if rb is None else rb if ra is None else binary("mul", ra, rb)
    if rest is None:
        return Const(c)
    return rest if c == 1.0 else binary("mul", Const(c), rest)


def _split_const(e: Expr) -> tuple[float, Expr | None]:
    """(constant factor, the rest or None) of a product."""
    if isinstance(e, Const):
        return e.value, None
    if isinstance(e, Binary) and e.op == "mul":
        cl, rl = _split_const(e.left)
        cr, rr = _split_const(e.right)
        rest = rl if rr is None else rr if rl is None else binary("mul", rl, rr)
        return cl * cr, rest
    return 1.0, e


def _div(a: Expr, b: Expr) -> Expr:
    if _zero(a):
        return Const(0.0)
    if _one(b):
        return a
    return binary("div", a, b)


def _neg(a: Expr) -> Expr:
    from einfuse.ir.expr import unary

    return unary("neg", a)


def _u(op: str, a: Expr) -> Expr:
    from einfuse.ir.expr import unary

    return Unary(STEP, a) if op == STEP else unary(op, a)


def _d(e: Expr) -> Expr:
    if isinstance(e, Access):
        return Const(1.0)
    if isinstance(e, (Const, IndexValue)):
        return Const(0.0)
    if isinstance(e, Select):
        then, other = _d(e.then), _d(e.otherwise)
        if then == other:
            return then
        return Select(e.cond, then, other)
    if isinstance(e, Unary):
        du = _d(e.arg)
        if _zero(du):
            return Const(0.0)
        u = e.arg
        return _mul(_unary_derivative(e.op, u, e), du)
    if isinstance(e, Binary):
        a, b = e.left, e.right
        da, db = _d(a), _d(b)
        if e.op == "add":
            return _add(da, db)
        if e.op == "sub":
            return _sub(da, db)
        if e.op == "mul":
            return _add(_mul(da, b), _mul(a, db))
        if e.op == "div":
            if _zero(db):
                return _div(da, b)
            return _div(_sub(_mul(da, b), _mul(a, db)), _mul(b, b))
        if e.op in ("max", "min"):
            if da == db:
                return da
            # max: a's derivative where a > b, else b's; min: the other way round
            gt = _u(STEP, _sub(a, b) if e.op == "max" else _sub(b, a))
            return _add(_mul(gt, da), _mul(_sub(Const(1.0), gt), db))
    raise CodegenError(f"cannot differentiate score node {e!r}")


def _unary_derivative(op: str, u: Expr, f: Expr) -> Expr:
    """``f'(u)`` for ``f = op(u)``, reusing ``f`` itself where the rule allows."""
    one = Const(1.0)
    if op == "exp":
        return f
    if op == "log":
        return _div(one, u)
    if op == "neg":
        return Const(-1.0)
    if op == "sigmoid":
        return _mul(f, _sub(one, f))
    if op == "tanh":
        return _sub(one, _u("square", f))
    if op == "relu":
        return _u(STEP, u)
    if op == "reciprocal":
        return _neg(_u("square", f))
    if op == "sqrt":
        return _div(Const(0.5), f)
    if op == "abs":
        return _sub(_mul(Const(2.0), _u(STEP, u)), one)
    if op == "elu1":  # x + 1 for x > 0, exp(x) otherwise: derivative 1, resp. exp(x) = elu1 - relu
        return _sub(f, _u("relu", u))
    if op == "square":
        return _mul(Const(2.0), u)
    if op == "sin":
        return _u("cos", u)
    if op == "cos":
        return _neg(_u("sin", u))
    if op == "tan":
        return _add(one, _u("square", f))
    raise CodegenError(f"score operator {op} has no derivative rule")


__all__ = ["STEP", "BackwardPlan", "backward_plan", "format_backward_plan", "score_derivative",
           "transpose_tables"]
